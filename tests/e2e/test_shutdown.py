"""Ctrl-C on `python app.py` while a job trains: everything stops, the job keeps its weights."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from gradio_client import Client

from storage.store import JobState, Store
from tests.conftest import PROJECT_ROOT
from tests.e2e.conftest import free_port, wait_for

pytestmark = pytest.mark.e2e


def test_ctrl_c_interrupts_the_job_and_keeps_a_checkpoint(tmp_path, tiny_model):
    data_dir, port, log = tmp_path / "data", free_port(), tmp_path / "app.log"
    with log.open("wb") as out:
        app = subprocess.Popen(
            [
                sys.executable,
                "app.py",
                "--port",
                str(port),
                "--data-dir",
                str(data_dir),
                "--models-dir",
                str(tmp_path / "models"),
            ],
            cwd=PROJECT_ROOT,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a terminal's process group
        )
    try:
        wait_for(f"http://127.0.0.1:{port}/", app, log)
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        dataset = client.predict("arithmetic", api_name="/add_sample")
        spec = {
            "base_model": str(tiny_model),
            "dataset_id": dataset["id"],
            "training": {"max_steps": 100000, "batch_size": 4, "max_length": 96},
        }
        job_id = client.predict(spec, api_name="/start_job")["job_id"]
        deadline = time.monotonic() + 120
        while client.predict(job_id, api_name="/job_status")["step"] < 2:
            assert time.monotonic() < deadline, "the job did not reach step 2"
            time.sleep(0.5)
        os.killpg(app.pid, signal.SIGINT)  # what Ctrl-C in the terminal sends
        app.wait(timeout=60)
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
