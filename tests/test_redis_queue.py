"""The shared queue: huey on a real redis-server (`make test` installs it), a real worker."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import redis

import service
from config import Settings
from jobs.queue import make_huey
from jobs.runner import stop
from storage.store import JobState, Store
from tests.conftest import PROJECT_ROOT
from tests.test_jobs import new_settings, wait_finished, wait_until
from tests.test_queue import quick

REDIS_SERVER = Path("/usr/bin/redis-server")
QUEUE_KEY = "huey.redis.adapterlab"  # huey's list of waiting tasks for a RedisHuey "adapterlab"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def redis_port(tmp_path):
    """A redis-server of the test's own, on loopback, keeping nothing on disk."""
    if not os.access(REDIS_SERVER, os.X_OK):
        # A fail, not a skip: a skipped test would let the shared queue go untested unnoticed.
        pytest.fail(f"{REDIS_SERVER} is missing: run `make test`, which installs redis-server")
    port = free_port()
    folder = tmp_path / "redis"
    folder.mkdir()
    log_path = folder / "redis.log"
    with open(log_path, "wb") as log:
        server = subprocess.Popen(
            [
                *(str(REDIS_SERVER), "--port", str(port), "--bind", "127.0.0.1"),
                *("--dir", str(folder), "--save", "", "--appendonly", "no", "--daemonize", "no"),
            ],
            cwd=folder,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        client = redis.Redis(host="127.0.0.1", port=port)

        def answers() -> bool:
            assert server.poll() is None, f"redis-server exited:\n{log_path.read_text()}"
            try:
                return client.ping()
            except redis.ConnectionError:
                return False

        wait_until(answers, "redis-server to answer PING", timeout=60)
        yield port
    finally:
        stop(server, 30)


def start_redis_worker(settings: Settings, log_path: Path) -> subprocess.Popen:
    """A worker told of the queue by the environment only, as on another machine."""
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            [
                *(sys.executable, "app.py", "worker"),
                *("--data-dir", str(settings.data_dir), "--models-dir", str(settings.models_dir)),
            ],
            cwd=PROJECT_ROOT,
            env={**os.environ, "OMP_NUM_THREADS": "1", "ADAPTERLAB_QUEUE_URL": settings.queue_url},
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def calls(client: redis.Redis, command: str) -> int:
    return client.info("commandstats").get(f"cmdstat_{command}", {}).get("calls", 0)


def test_jobs_wake_a_worker_through_redis(redis_port, tiny_model, tmp_path):
    settings = replace(new_settings(tmp_path), queue_url=f"redis://127.0.0.1:{redis_port}/0")
    client = redis.Redis(host="127.0.0.1", port=redis_port)
    dataset_id = service.add_sample(settings, "arithmetic")["id"]

    # Queued before any worker runs: the wake-up waits in Redis, under the app's own key.
    first = service.start_job(settings, quick(tiny_model, dataset_id))["job_id"]
    assert client.llen(QUEUE_KEY) == 1

    worker = start_redis_worker(settings, tmp_path / "worker.log")
    try:
        # The worker's blocking pop is on the server before the next two are queued: they reach
        # it through Redis alone (it would not hear of them otherwise, and they would time out).
        wait_until(lambda: calls(client, "brpop") > 0, "the worker to wait on Redis")
        ids = [first] + [
            service.start_job(settings, quick(tiny_model, dataset_id))["job_id"] for _ in range(2)
        ]
        jobs = [wait_finished(settings, job_id) for job_id in ids]
        assert [job.state for job in jobs] == [JobState.SUCCEEDED] * 3, [
            job.error_detail for job in jobs
        ]
        # Extra wake-ups (the worker's own at start) are taken too, and find nothing to do.
        wait_until(lambda: client.llen(QUEUE_KEY) == 0, "the Redis queue to drain")
    finally:
        worker.terminate()
        worker.wait(timeout=60)
    assert Store(settings.data_dir).queue_order() == []
    assert not settings.queue_path.exists(), "neither the app nor the worker used SQLite"


@pytest.mark.parametrize("url", ["http://x", "localhost:6379", "redis:/127.0.0.1/0"])
def test_a_queue_url_that_is_not_redis_is_refused(tmp_path, url):
    settings = Settings(data_dir=tmp_path / "data", queue_url=url)
    with pytest.raises(ValueError, match=r"QUEUE_URL .*give redis://host:port/db"):
        make_huey(settings)
    assert not settings.queue_path.exists()
