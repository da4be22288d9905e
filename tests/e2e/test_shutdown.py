"""Ctrl-C on `python app.py` while a job trains: everything stops, the job keeps its weights."""

from __future__ import annotations

import os
import signal
import time

import pytest
from gradio_client import Client

from storage.store import JobState, Store
from tests.e2e.conftest import launch_app

pytestmark = pytest.mark.e2e


def test_ctrl_c_interrupts_the_job_and_keeps_a_checkpoint(tmp_path, tiny_model):
    data_dir, log = tmp_path / "data", tmp_path / "app.log"
    # In a session of its own, as in a terminal: SIGINT to the group is Ctrl-C.
    app, url = launch_app(data_dir, tmp_path / "models", log, new_session=True)
    try:
        client = Client(url, verbose=False)
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
