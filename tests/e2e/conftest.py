"""The launched app: `python app.py` on a free port with a temp data dir and the bundled model."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
from gradio_client import Client

from jobs.runner import stop
from tests.conftest import PROJECT_ROOT, bundled_models_dir

ARTIFACTS = PROJECT_ROOT / "tests" / "artifacts"


@dataclass(frozen=True)
class LaunchedApp:
    url: str
    data_dir: Path
    models_dir: Path
    log: Path
    pid: int


# Seconds an API call may go without a byte from the server (Gradio's event stream sends a
# heartbeat every few seconds while a call runs): a wedged server fails the test, not CI.
API_READ_TIMEOUT_S = 120


def api_client(url: str) -> Client:
    """A gradio_client Client whose calls end with an error when the server stops answering."""
    return Client(url, verbose=False, httpx_kwargs={"timeout": API_READ_TIMEOUT_S})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(url: str, process: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the app exited early:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"the app did not answer at {url}:\n{log.read_text()[-3000:]}")


def launch_app(
    data_dir: Path,
    models_dir: Path,
    log: Path,
    new_session: bool = False,
    extra_args: tuple[str, ...] = (),
) -> tuple[subprocess.Popen, str]:
    """`python app.py` on a free port, one torch thread; returns the process once it answers."""
    port = free_port()
    env = {
        **os.environ,
        "ADAPTERLAB_TRAIN_THREADS": "1",
        "ADAPTERLAB_PLAYGROUND_THREADS": "1",
        "OMP_NUM_THREADS": "1",
    }
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                sys.executable,
                "app.py",
                "--port",
                str(port),
                "--data-dir",
                str(data_dir),
                "--models-dir",
                str(models_dir),
                *extra_args,
            ],
            cwd=PROJECT_ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=new_session,
        )
    url = f"http://127.0.0.1:{port}/"
    try:
        wait_for(url, process, log)
    except BaseException:
        process.kill()
        raise
    return process, url


@pytest.fixture(scope="session")
def launched_app(tmp_path_factory) -> LaunchedApp:
    models_dir = bundled_models_dir()
    if not (models_dir / "SmolLM2-135M-Instruct" / "config.json").is_file():
        pytest.fail(f"the bundled model is not prepared in {models_dir}: run `make test`")
    data_dir = tmp_path_factory.mktemp("e2e") / "data"
    log = tmp_path_factory.mktemp("logs") / "app.log"
    process, url = launch_app(data_dir, models_dir, log)
    try:
        yield LaunchedApp(
            url=url, data_dir=data_dir, models_dir=models_dir, log=log, pid=process.pid
        )
    finally:
        stop(process, 30)
