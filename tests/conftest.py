"""Fixtures: each test its own data dir and database; one tiny model per session."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch

from config import Settings
from storage.store import Store
from tests.tiny import build_tiny_bert, build_tiny_model, build_tiny_t5

torch.set_num_threads(1)

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def bundled_models_dir() -> Path:
    """Where `make test` prepared the bundled model (ADAPTERLAB_MODELS_DIR, default ./models)."""
    return Path(os.environ.get("ADAPTERLAB_MODELS_DIR", PROJECT_ROOT / "models")).resolve()


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny-llama")


@pytest.fixture(scope="session")
def tiny_t5(tmp_path_factory) -> Path:
    return build_tiny_t5(tmp_path_factory.mktemp("tiny") / "tiny-t5")


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    return build_tiny_bert(tmp_path_factory.mktemp("tiny") / "tiny-bert")


@pytest.fixture
def settings(tmp_path) -> Settings:
    s = Settings(data_dir=tmp_path / "data", models_dir=tmp_path / "models")
    Store(s.data_dir).init()
    return s


@pytest.fixture
def store(settings) -> Store:
    return Store(settings.data_dir)


@pytest.fixture
def run_queued():
    """Run every queued job of a data dir in a real child process, as a worker would, now (in
    the test's process, no huey); the fork server it started is stopped after the test."""
    from jobs import runner

    def run(settings: Settings) -> int:
        ran = 0
        while runner.run_next(settings, devices=[]) == "ran":
            ran += 1
        return ran

    yield run
    for server in runner._servers.values():
        server.stop()
    runner._servers.clear()


@pytest.fixture(scope="module")
def worker_settings(tmp_path_factory, tiny_model) -> Settings:
    """A data dir with a real worker process (app.py worker) taking its jobs, per module."""
    from tests.test_jobs import new_settings, start_worker

    root = tmp_path_factory.mktemp("jobs")
    settings = new_settings(root)
    worker = start_worker(settings, root / "worker.log")
    yield settings
    worker.terminate()
    worker.wait(timeout=30)


@pytest.fixture(scope="module")
def dataset_id(worker_settings) -> str:
    """The arithmetic sample, stored in worker_settings' data dir."""
    import service

    return service.add_sample(worker_settings, "arithmetic")["id"]


@pytest.fixture
def offline_hub(monkeypatch):
    """Point the Hub at a closed local port: the real reachability probe fails at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)  # so the probe itself is what fails
