"""Settings: one frozen dataclass read from the command line and the environment."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, replace
from pathlib import Path

ENV_PREFIX = "ADAPTERLAB_"
LOGGERS = ("tensorboard", "wandb", "mlflow")


@dataclass(frozen=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 7860
    data_dir: Path = Path("data")
    models_dir: Path = Path("models")
    train_threads: int = 1  # torch threads in a CPU training job
    playground_threads: int = 1  # torch threads for generation in the web process
    playground_memory_mb: int = 0  # models the playground keeps loaded; 0: half the machine's
    heartbeat_timeout_s: float = 60.0  # a running job silent this long is interrupted
    cancel_grace_s: float = 60.0  # a cancelled job not stopped by then is terminated
    max_upload_mb: int = 200  # one uploaded file, or an archive's unpacked contents
    max_rows: int = 1_000_000  # rows in one dataset
    max_row_kb: int = 1024  # one line / row / text document
    allow_remote_code: bool = False
    gpus: str = ""  # a worker's GPU ids, "0" or "0,1"; empty: every GPU it can see
    queue_url: str = ""  # empty: SQLite in the data dir; redis://host:port/db: a shared queue
    report_to: str = "tensorboard"  # training loggers: tensorboard, wandb, mlflow (comma list)
    # app.db's journal: wal (one machine) or delete (a data dir on a network filesystem shared
    # by several machines: SQLite's WAL needs every process on the same host)
    db_journal: str = "wal"
    # a worker forks each job's process from one that has the imports done (jobs.forkserver)
    fork_server: bool = True

    @property
    def queue_path(self) -> Path:
        return self.data_dir / "queue.db"

    def loggers(self) -> tuple[str, ...]:
        """The training loggers asked for; wandb and mlflow log only where installed."""
        import importlib.util

        names = tuple(n.strip().lower() for n in self.report_to.split(",") if n.strip())
        unknown = [n for n in names if n not in LOGGERS]
        if unknown:
            raise ValueError(
                f"{ENV_PREFIX}REPORT_TO: unknown logger {unknown[0]!r} "
                f"(known: {', '.join(LOGGERS)})"
            )
        return tuple(n for n in names if n == "tensorboard" or importlib.util.find_spec(n))

    def to_env(self) -> dict[str, str]:
        """The environment that gives a child process these same settings."""
        return {
            ENV_PREFIX + name.upper(): str(getattr(self, name))
            for name in self.__dataclass_fields__
        }


_BOOL_TRUE = {"1", "true", "yes", "on"}


def _coerce(name: str, raw: str):
    kind = type(getattr(Settings, name))
    if kind is bool:
        return raw.strip().lower() in _BOOL_TRUE
    if kind is int:
        return int(raw)
    if kind is float:
        return float(raw)
    if name.endswith("_dir"):
        return Path(raw)
    return raw


def from_env(environ: dict[str, str] | None = None) -> Settings:
    environ = os.environ if environ is None else environ
    values = {}
    for name in Settings.__dataclass_fields__:
        raw = environ.get(ENV_PREFIX + name.upper())
        if raw is not None and raw != "":
            try:
                values[name] = _coerce(name, raw)
            except ValueError:
                raise SystemExit(
                    f"{ENV_PREFIX}{name.upper()}={raw!r} is not a valid value"
                ) from None
    return Settings(**values)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", help="address to bind (env ADAPTERLAB_HOST, default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port (env ADAPTERLAB_PORT, default 7860)")
    parser.add_argument(
        "--data-dir",
        type=Path,
        help="jobs, datasets, adapters (env ADAPTERLAB_DATA_DIR, default ./data)",
    )
    parser.add_argument(
        "--models-dir",
        type=Path,
        help="base models, shared by data dirs (env ADAPTERLAB_MODELS_DIR, default models)",
    )
    parser.add_argument(
        "--train-threads",
        type=int,
        help="torch threads for CPU training jobs (env ADAPTERLAB_TRAIN_THREADS, default 1)",
    )
    parser.add_argument(
        "--gpu",
        dest="gpus",
        help="GPU ids this worker uses, e.g. 0 or 0,1 (env ADAPTERLAB_GPUS; default: all)",
    )
    parser.add_argument(
        "--queue-url",
        help="redis://host:port/db to share one queue between machines (env "
        "ADAPTERLAB_QUEUE_URL; default: SQLite in the data dir)",
    )
    parser.add_argument(
        "--playground-threads",
        type=int,
        help="torch threads for the playground (env ADAPTERLAB_PLAYGROUND_THREADS, default 1)",
    )


def from_args(args: argparse.Namespace, environ: dict[str, str] | None = None) -> Settings:
    """Environment first, then any command-line option that was given."""
    settings = from_env(environ)
    given = {
        name: getattr(args, name)
        for name in Settings.__dataclass_fields__
        if getattr(args, name, None) is not None
    }
    settings = replace(settings, **given)
    return replace(
        settings,
        data_dir=settings.data_dir.resolve(),
        models_dir=settings.models_dir.resolve(),
    )
