"""Jobs through the real path: queue (huey on SQLite) -> worker process -> one child per job."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

import service
from config import Settings
from finetune.samples import ARITHMETIC_SYSTEM
from storage.store import JobState, Store
from tests.conftest import PROJECT_ROOT

TIMEOUT_S = 180


CANCEL_GRACE_S = 3


def start_worker(settings: Settings, log_path) -> subprocess.Popen:
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            [
                sys.executable,
                "app.py",
                "worker",
                "--data-dir",
                str(settings.data_dir),
                "--models-dir",
                str(settings.models_dir),
            ],
            cwd=PROJECT_ROOT,
            env={
                **os.environ,
                "OMP_NUM_THREADS": "1",
                "ADAPTERLAB_CANCEL_GRACE_S": str(CANCEL_GRACE_S),
            },
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def new_settings(root) -> Settings:
    settings = Settings(data_dir=root / "data", models_dir=root / "models")
    Store(settings.data_dir).init()
    return settings


def spec(tiny_model, dataset_id, **training):
    return {
        "base_model": str(tiny_model),
        "dataset_id": dataset_id,
        "method": "lora",
        "method_params": {"r": 4},
        "training": {"max_steps": 3, "batch_size": 4, "max_length": 96, **training},
    }


def wait_until(predicate, what: str, timeout: float = TIMEOUT_S):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def wait_finished(settings, job_id):
    store = Store(settings.data_dir)
    return wait_until(
        lambda: (job := store.get_job(job_id)).state.finished and job, f"{job_id} to finish"
    )


def child_of(settings: Settings, job_id: str) -> psutil.Process | None:
    """The live process running the job (a spare child's command line names no job: the job
    record has its pid)."""
    pid = Store(settings.data_dir).get_job(job_id).pid
    try:
        process = psutil.Process(pid) if pid else None
        return process if process and process.status() != psutil.STATUS_ZOMBIE else None
    except psutil.NoSuchProcess:
        return None


def test_job_trains_in_a_child_and_writes_the_adapter(worker_settings, dataset_id, tiny_model):
    started = service.start_job(worker_settings, spec(tiny_model, dataset_id, logging_steps=1))
    assert started["status"] == "queued" and started["trainable_params"] > 0
    job = wait_finished(worker_settings, started["job_id"])
    assert job.state == JobState.SUCCEEDED, job.error_detail
    store = Store(worker_settings.data_dir)
    metrics = store.list_metrics(job.id)
    assert [m.step for m in metrics if m.loss is not None] == [1, 2, 3]
    assert all(m.tokens_per_s and m.memory_mb for m in metrics if m.loss is not None)
    assert any(m.eval_loss is not None for m in metrics)
    assert (job.step, job.total_steps) == (3, 3)
    folder = store.adapter_dir(job.adapter_id)
    names = {p.name for p in folder.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "README.md", "recipe.json"} <= names
    recipe = json.loads((folder / "recipe.json").read_text())
    assert recipe == job.spec and recipe["training"]["max_steps"] == 3
    card = (folder / "README.md").read_text()
    assert "Trainable parameters" in card
    assert f'from_pretrained("{tiny_model}", dtype=torch.float32)' in card
    assert f'"content": "{ARITHMETIC_SYSTEM}"' in card, "the snippet prompts as training did"
    assert service.training_system_prompt(worker_settings, job.adapter_id) == ARITHMETIC_SYSTEM
    adapter = store.get_adapter(job.adapter_id)
    assert adapter.trainable_params == started["trainable_params"] and adapter.size_bytes > 0
    assert (store.job_dir(job.id) / "train.log").stat().st_size > 0
    assert_adapter_trained_and_reloads(tiny_model, folder)
    status = service.job_status(worker_settings, job.id)
    assert status["status"] == "succeeded"
    assert status["loss"] == [m.loss for m in metrics if m.loss is not None][-1]
    assert status["adapter_id"] == job.adapter_id and status["eval_loss"] is not None


def assert_adapter_trained_and_reloads(base_path, folder):
    """LoRA B starts at zero, so non-zero B means training moved it; the base stays untouched."""
    import torch
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    saved = load_file(folder / "adapter_model.safetensors")
    assert saved and all("lora_" in name for name in saved), "only adapter weights are saved"
    assert all(t.abs().sum() > 0 for name, t in saved.items() if "lora_B" in name)
    reference = AutoModelForCausalLM.from_pretrained(base_path).state_dict()
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_path), folder)
    for name, param in model.base_model.model.named_parameters():
        if "lora_" not in name:
            assert torch.equal(param, reference[name.replace(".base_layer", "")]), name
    again = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_path), folder)
    ids = torch.tensor([[3, 4, 5, 6]])
    with torch.no_grad():
        assert torch.equal(model(ids).logits, again(ids).logits)


def test_cancel_queued_and_running_jobs(worker_settings, dataset_id, tiny_model):
    store = Store(worker_settings.data_dir)
    long_job = service.start_job(worker_settings, spec(tiny_model, dataset_id, max_steps=100000))
    behind = service.start_job(worker_settings, spec(tiny_model, dataset_id))
    assert service.cancel_job(worker_settings, behind["job_id"])["status"] == "cancelled"

    wait_until(lambda: store.get_job(long_job["job_id"]).step >= 1, "the long job's first step")
    assert service.cancel_job(worker_settings, long_job["job_id"])["status"] == "running"
    job = wait_finished(worker_settings, long_job["job_id"])
    assert job.state == JobState.CANCELLED and job.step < 100000
    checkpoint = store.job_dir(job.id) / job.checkpoint
    assert (checkpoint / "adapter_model.safetensors").is_file(), "what it learned is kept"
    wait_until(lambda: child_of(worker_settings, job.id) is None, "the child to exit")

    after = service.start_job(worker_settings, spec(tiny_model, dataset_id))
    assert wait_finished(worker_settings, after["job_id"]).state == JobState.SUCCEEDED
    never = store.get_job(behind["job_id"])
    assert never.state == JobState.CANCELLED and never.started_at is None
    with pytest.raises(ValueError, match="already ended"):
        service.cancel_job(worker_settings, behind["job_id"])


def test_a_failing_job_is_explained_and_the_queue_goes_on(worker_settings, dataset_id, tiny_model):
    from jobs.queue import submit_job

    bad = submit_job(worker_settings, "bad", spec(tiny_model, "ds-0123456789ab"), None)
    job = wait_finished(worker_settings, bad.id)
    assert job.state == JobState.FAILED
    assert "dataset ds-0123456789ab does not exist" in job.error
    assert "Traceback" in job.error_detail
    good = service.start_job(worker_settings, spec(tiny_model, dataset_id))
    assert wait_finished(worker_settings, good["job_id"]).state == JobState.SUCCEEDED


def test_a_killed_child_is_interrupted_and_resumes_to_the_same_step(
    worker_settings, dataset_id, tiny_model
):
    """kill -9 of the training process (what the OOM killer does): the job is interrupted, says
    why in plain words, and resumes from its last checkpoint to the planned final step."""
    store = Store(worker_settings.data_dir)
    started = service.start_job(
        worker_settings, spec(tiny_model, dataset_id, max_steps=40, save_steps=2)
    )
    job_id = started["job_id"]
    wait_until(lambda: store.get_job(job_id).checkpoint, "the first checkpoint")
    os.kill(child_of(worker_settings, job_id).pid, signal.SIGKILL)
    job = wait_finished(worker_settings, job_id)
    assert job.state == JobState.INTERRUPTED
    assert "killed (SIGKILL)" in job.error and "out of memory" in job.error
    assert job.checkpoint in job.error and "Resume it" in job.error
    status = service.job_status(worker_settings, job_id)
    assert status["resumable"] and status["checkpoint"] == job.checkpoint
    kept_step = int(job.checkpoint.rsplit("-", 1)[1])
    assert kept_step >= 2 and kept_step % 2 == 0

    resumed = service.resume_job(worker_settings, job_id)
    assert resumed["status"] == "queued" and resumed["position"] == 1
    job = wait_finished(worker_settings, job_id)
    assert job.state == JobState.SUCCEEDED, job.error_detail
    assert (job.step, job.total_steps, job.runs) == (40, 40, 2)
    steps = [m.step for m in store.list_metrics(job_id) if m.loss is not None]
    assert steps == list(range(1, 41)), "one point per step: the curve goes on from the checkpoint"
    assert not (store.job_dir(job_id) / "trainer").exists(), "checkpoints go once it succeeded"
    assert_adapter_trained_and_reloads(tiny_model, store.adapter_dir(job.adapter_id))
    log = service.job_log(worker_settings, job_id, lines=2000)["lines"]
    assert sum("==== run" in line for line in log) == 2
    with pytest.raises(ValueError, match="only a stopped job can be resumed"):
        service.resume_job(worker_settings, job_id)


def test_cancel_while_the_child_is_still_loading(worker_settings, dataset_id, tiny_model):
    store = Store(worker_settings.data_dir)
    started = service.start_job(worker_settings, spec(tiny_model, dataset_id, max_steps=100000))
    wait_until(lambda: store.get_job(started["job_id"]).state == JobState.RUNNING, "the start")
    service.cancel_job(worker_settings, started["job_id"])  # long before the first step ends
    job = wait_finished(worker_settings, started["job_id"])
    assert job.state == JobState.CANCELLED and job.error.startswith("Cancelled")
    wait_until(lambda: child_of(worker_settings, job.id) is None, "the child to exit")
    good = service.start_job(worker_settings, spec(tiny_model, dataset_id))
    assert wait_finished(worker_settings, good["job_id"]).state == JobState.SUCCEEDED


def test_a_dead_worker_loses_no_work(tmp_path, tiny_model):
    """A queued job with no task behind it runs when a worker starts; a worker killed mid-run
    leaves its job interrupted, with the weights of its last step kept."""
    settings = new_settings(tmp_path)
    dataset_id = service.add_sample(settings, "arithmetic")["id"]
    store = Store(settings.data_dir)
    orphan = store.add_job("no task", spec(tiny_model, dataset_id), dataset_id)  # never enqueued
    worker = start_worker(settings, tmp_path / "worker.log")
    try:
        assert wait_finished(settings, orphan.id).state == JobState.SUCCEEDED
        long_job = service.start_job(settings, spec(tiny_model, dataset_id, max_steps=100000))
        wait_until(lambda: store.get_job(long_job["job_id"]).step >= 1, "the first step")
        child = child_of(settings, long_job["job_id"])
        worker.kill()
        worker.wait(timeout=30)
        job = wait_finished(settings, long_job["job_id"])
        assert job.state == JobState.INTERRUPTED, job.error
        assert "worker or the app stopped" in job.error and job.checkpoint in job.error
        assert (store.job_dir(job.id) / job.checkpoint / "adapter_model.safetensors").is_file()
        wait_until(
            lambda: not child.is_running() or child.status() == psutil.STATUS_ZOMBIE,
            "the orphaned child to exit",
        )
        # A new worker takes the next queued job; the interrupted one waits to be resumed.
        after = service.start_job(settings, spec(tiny_model, dataset_id))
        worker = start_worker(settings, tmp_path / "worker-2.log")
        assert wait_finished(settings, after["job_id"]).state == JobState.SUCCEEDED
        assert store.get_job(job.id).state == JobState.INTERRUPTED
        assert service.job_status(settings, job.id)["resumable"]
    finally:
        if worker.poll() is None:
            worker.kill()


def fork_server_of(settings: Settings) -> psutil.Process | None:
    """The worker's fork server (python -m jobs.child --fork-server) for this data dir."""
    for proc in psutil.process_iter(["cmdline", "ppid"]):
        if (proc.info["cmdline"] or [])[-2:] != ["jobs.child", "--fork-server"]:
            continue
        try:
            if str(settings.data_dir) in psutil.Process(proc.info["ppid"]).cmdline():
                return proc
        except psutil.NoSuchProcess:
            continue
    return None


def test_jobs_run_in_processes_forked_from_the_fork_server(worker_settings, dataset_id, tiny_model):
    """The worker imports once, in its fork server; each job runs in a process of its own forked
    from it, that writes to the job's log and exits with the job."""
    server = wait_until(lambda: fork_server_of(worker_settings), "the fork server")
    pids = []
    store = Store(worker_settings.data_dir)
    for _ in range(2):
        job_id = service.start_job(worker_settings, spec(tiny_model, dataset_id))["job_id"]
        wait_until(lambda j=job_id: store.get_job(j).pid, "the job's process")
        try:
            parent = psutil.Process(store.get_job(job_id).pid).ppid()
        except psutil.NoSuchProcess:
            parent = None  # it ended already; its log still tells
        job = wait_finished(worker_settings, job_id)
        assert job.state == JobState.SUCCEEDED, job.error_detail
        assert parent in (server.pid, None)
        pids.append(job.pid)
        log = service.job_log(worker_settings, job.id, lines=2000)["lines"]
        assert any("==== run 1" in line for line in log), "the runner's header"
        assert any("train_runtime" in line for line in log), "the job's own output, in its log"
    assert pids[0] != pids[1], "a process of its own for each job"
    assert fork_server_of(worker_settings).pid == server.pid, "one server for them all"
    assert child_of(worker_settings, job_id) is None, "the job's process has exited"
