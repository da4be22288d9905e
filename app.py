"""AdapterLab: `python app.py` serves the UI + one worker; `python app.py worker`, a worker.

python app.py --help
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

from config import Settings, add_arguments, from_args
from finetune.quiet import quiet_library_logs
from storage.store import Store

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
RESTART_CHECK_S = 5.0


def parse_args(argv: list[str] | None = None) -> tuple[str, Settings]:
    parser = argparse.ArgumentParser(prog="app.py", description=__doc__.splitlines()[0])
    parser.add_argument(
        "command",
        nargs="?",
        default="serve",
        choices=["serve", "worker"],
        help="serve: UI + one embedded worker (default); worker: a worker only",
    )
    parser.add_argument(
        "--no-worker",
        action="store_true",
        help="serve the UI without starting an embedded worker",
    )
    # The app's own worker: it ends with the app, even one killed with SIGKILL.
    parser.add_argument("--embedded", action="store_true", help=argparse.SUPPRESS)
    add_arguments(parser)
    args = parser.parse_args(argv)
    command = "serve-only" if args.command == "serve" and args.no_worker else args.command
    if command == "worker" and args.embedded:
        command = "embedded-worker"
    return command, from_args(args)


class EmbeddedWorker:
    """The worker as a separate process, restarted if it dies: training never takes the UI down."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.stopping = threading.Event()
        self.process = self._start()
        threading.Thread(target=self._watch, daemon=True).start()

    def _start(self) -> subprocess.Popen:
        # Its own session: Ctrl-C reaches the app only, which then stops the worker with SIGTERM
        # (huey takes SIGINT as "finish the running job first", which can take hours).
        return subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "worker", "--embedded"],
            env={**os.environ, **self.settings.to_env()},
            start_new_session=True,
        )

    def _watch(self) -> None:
        while not self.stopping.wait(RESTART_CHECK_S):
            code = self.process.poll()
            if code is not None and not self.stopping.is_set():
                print(f"the worker exited ({code}); starting a new one", flush=True)
                self.process = self._start()

    def stop(self) -> None:
        from jobs.runner import stop

        self.stopping.set()
        stop(self.process, grace_s=20)


def serve(settings: Settings, with_worker: bool) -> None:
    Store(settings.data_dir).init(settings.db_journal)
    worker = EmbeddedWorker(settings) if with_worker else None

    def stop(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    try:
        import torch

        torch.set_num_threads(settings.playground_threads)
        from webui.blocks import THEME, build_app
        from webui.data_tab import CSS

        # Before serving, not in a thread beside it: two threads importing transformers' lazy
        # modules at once can see them half-initialised ("cannot import name ...").
        _warm_imports()
        app = build_app(settings)
        app.queue(default_concurrency_limit=4)
        print(
            f"AdapterLab on http://{settings.host}:{settings.port} (data: {settings.data_dir})",
            flush=True,
        )
        app.launch(
            server_name=settings.host,
            server_port=settings.port,
            theme=THEME,
            css=CSS,
            show_error=True,
            quiet=True,  # our own line above says where it is; Gradio's adds share=True advice
            allowed_paths=[str(Store(settings.data_dir).downloads_dir)],
            max_file_size=f"{settings.max_upload_mb}mb",  # refused before it is stored
        )
    except KeyboardInterrupt:
        pass
    finally:
        if worker is not None:
            worker.stop()


def _warm_imports() -> None:
    """What the first preview / count / generation would otherwise wait for (transformers loads
    its submodules lazily, on first use of a name)."""
    import peft  # noqa: F401
    from transformers import AutoConfig, AutoTokenizer, PreTrainedTokenizerFast  # noqa: F401


def main(argv: list[str] | None = None) -> None:
    quiet_library_logs()
    command, settings = parse_args(argv)
    if command in ("worker", "embedded-worker"):
        from jobs.worker import run_worker

        if command == "embedded-worker":
            # An app killed with SIGKILL cannot stop its worker; the kernel then does (SIGTERM),
            # or a restarted app would start a second worker beside the orphan.
            from jobs.runner import stop_with_parent

            stop_with_parent()
            if os.getppid() == 1:  # the app died before the line above took effect
                return
        run_worker(settings)
    else:
        serve(settings, with_worker=command == "serve")


if __name__ == "__main__":
    main()
