"""Ctrl-C on `python app.py` while a job trains, then a restart: nothing stored changes."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time

import pytest

from storage.store import JobState, Store
from tests.e2e.conftest import api_client, launch_app

pytestmark = pytest.mark.e2e


def test_ctrl_c_then_a_restart_keeps_jobs_curves_and_queue(tmp_path, tiny_model, monkeypatch):
    monkeypatch.setenv("PYTHONFAULTHANDLER", "1")  # a hung exit shows where (SIGABRT below)
    data_dir, log = tmp_path / "data", tmp_path / "app.log"
    # In a session of its own, as in a terminal: SIGINT to the group is Ctrl-C. A terminal's
    # app does not ignore SIGINT; one started from this process would if something earlier in
    # the suite left SIGINT ignored here (an ignored signal stays ignored across exec).
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        app, url = launch_app(data_dir, tmp_path / "models", log, new_session=True)
    finally:
        signal.signal(signal.SIGINT, signal.SIG_DFL if previous is None else previous)
    try:
        client = api_client(url)
        dataset = client.predict("arithmetic", api_name="/add_sample")
        spec = {
            "base_model": str(tiny_model),
            "dataset_id": dataset["id"],
            "training": {"max_steps": 100000, "batch_size": 4, "max_length": 96},
        }
        job_id = client.predict(spec, api_name="/start_job")["job_id"]
        deadline = time.monotonic() + 300  # a hang guard: on a busy machine loading is slow
        while client.predict(job_id, api_name="/job_status")["status"] == "queued":
            assert time.monotonic() < deadline, "the worker did not take the job"
            time.sleep(0.5)
        # Queued behind it once it runs (else the reordered one could be taken first).
        waiting = [client.predict(spec, api_name="/start_job")["job_id"] for _ in range(2)]
        client.predict(waiting[1], 3, api_name="/set_priority")  # the later one runs first
        while client.predict(job_id, api_name="/job_status")["step"] < 2:
            assert time.monotonic() < deadline, "the job did not reach step 2"
            time.sleep(0.5)
        os.killpg(app.pid, signal.SIGINT)  # what Ctrl-C in the terminal sends
        try:
            # A hang guard, not a timing: late in the whole suite this has taken over 60 s.
            app.wait(timeout=180)
        except subprocess.TimeoutExpired:
            os.kill(app.pid, signal.SIGABRT)  # faulthandler writes every thread's stack to the log
            with contextlib.suppress(subprocess.TimeoutExpired):
                app.wait(timeout=10)
            raise AssertionError(
                "the app did not exit within 180 s of Ctrl-C; its log ends:\n"
                + log.read_text(errors="replace")[-3000:]
            ) from None
    finally:
        if app.poll() is None:
            os.killpg(app.pid, signal.SIGKILL)
    store = Store(data_dir)
    deadline = time.monotonic() + 60  # the child settles the job after its current step
    while (job := store.get_job(job_id)).state == JobState.RUNNING:
        assert time.monotonic() < deadline, "the job was left running"
        time.sleep(0.5)
    assert job.state == JobState.INTERRUPTED, job.error
    assert job.checkpoint and job.checkpoint in job.error
    assert (store.job_dir(job_id) / job.checkpoint / "adapter_model.safetensors").is_file()
    assert store.queue_order() == [waiting[1], waiting[0]]
    jobs_before = store.list_jobs()
    curve_before = store.list_metrics(job_id)

    # Restarted (the UI alone, so no worker moves the queue while we look): the same truth.
    app, url = launch_app(data_dir, tmp_path / "models", log, extra_args=("--no-worker",))
    try:
        client = api_client(url)
        listed = {j["job_id"]: j for j in client.predict(api_name="/list_jobs")}
        assert set(listed) == {job_id, *waiting}
        assert (listed[waiting[1]]["position"], listed[waiting[0]]["position"]) == (1, 2)
        assert listed[job_id]["status"] == "interrupted" and listed[job_id]["resumable"]
        assert listed[job_id]["step"] == job.step and listed[job_id]["checkpoint"] == job.checkpoint
        assert store.list_jobs() == jobs_before and store.list_metrics(job_id) == curve_before
        resumed = client.predict(job_id, api_name="/resume_job")
        assert resumed["status"] == "queued" and resumed["checkpoint"] == job.checkpoint
    finally:
        app.terminate()
        app.wait(timeout=60)


def test_the_embedded_worker_ends_with_an_app_killed_outright(tmp_path):
    """kill -9 of `python app.py` gives it no chance to stop its worker: the kernel does, or a
    restarted app would run a second worker beside the orphan."""
    import psutil

    app, _ = launch_app(tmp_path / "data", tmp_path / "models", tmp_path / "app.log")
    workers = []
    try:
        deadline = time.monotonic() + 60
        while not workers:
            assert time.monotonic() < deadline, "no embedded worker started"
            time.sleep(0.5)
            workers = [c for c in psutil.Process(app.pid).children() if "worker" in c.cmdline()]
        os.kill(app.pid, signal.SIGKILL)
        app.wait(timeout=30)
        workers[0].wait(timeout=30)  # psutil.TimeoutExpired if it outlives the app
    finally:
        if app.poll() is None:
            app.kill()
        for worker in workers:
            if worker.is_running():
                worker.kill()
