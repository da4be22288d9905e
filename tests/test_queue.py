"""The queue's order and its actions: priority then age, reorder, retry, clone, delete, log."""

from __future__ import annotations

import json

import pytest

import service
from finetune.spec import parse_spec
from storage.store import InUse, JobState, Store
from tests.test_jobs import spec, start_worker, wait_finished, wait_until


def quick(tiny_model, dataset_id, **training):
    """A one-step job: what the queue does is under test, not training."""
    return spec(
        tiny_model, dataset_id, max_steps=1, eval_fraction=0.0, sample_prompts=0, **training
    )


def test_twenty_jobs_run_in_priority_then_fifo_order(settings, tiny_model, tmp_path):
    """Queued before any worker runs: workers then take them by priority, then age; a queued
    job cancelled never runs, a running one cancelled ends cancelled, and the queue goes on."""
    dataset_id = service.add_sample(settings, "arithmetic")["id"]
    ids = [service.start_job(settings, quick(tiny_model, dataset_id))["job_id"] for _ in range(20)]
    service.set_priority(settings, ids[15], 5)
    service.set_priority(settings, ids[7], 5)
    service.move_job(settings, ids[19], "top")  # above the two at 5
    service.cancel_job(settings, ids[3])
    store = Store(settings.data_dir)
    expected = [ids[19], ids[7], ids[15]] + [
        i for i in ids if i not in (ids[19], ids[7], ids[15], ids[3])
    ]
    assert store.queue_order() == expected
    assert service.job_status(settings, ids[19])["position"] == 1

    long_job = service.start_job(settings, spec(tiny_model, dataset_id, max_steps=100000))
    service.set_priority(settings, long_job["job_id"], -1)  # last
    # Two workers on one queue (as one per GPU would be): each claim still takes the head.
    workers = [start_worker(settings, tmp_path / f"worker-{n}.log") for n in range(2)]
    try:
        wait_until(
            lambda: store.get_job(long_job["job_id"]).step >= 1, "the last job's first step", 600
        )
        service.cancel_job(settings, long_job["job_id"])
        assert wait_finished(settings, long_job["job_id"]).state == JobState.CANCELLED
        jobs = {j.id: j for j in store.list_jobs()}
        ran = sorted((i for i in ids if i != ids[3]), key=lambda i: jobs[i].started_at)
        assert ran == expected, "priority first, then the order they were queued in"
        assert all(jobs[i].state == JobState.SUCCEEDED for i in expected)
        assert jobs[ids[3]].state == JobState.CANCELLED and jobs[ids[3]].started_at is None
        after = service.start_job(settings, quick(tiny_model, dataset_id))
        assert wait_finished(settings, after["job_id"]).state == JobState.SUCCEEDED
    finally:
        for worker in workers:
            worker.terminate()
        for worker in workers:
            worker.wait(timeout=60)


def test_reorder_retry_clone_delete_and_log(settings, tiny_model, store):
    """No worker: the actions on queued and ended jobs, and what they refuse."""
    dataset_id = service.add_sample(settings, "arithmetic")["id"]
    a, b, c = (service.start_job(settings, quick(tiny_model, dataset_id))["job_id"] for _ in "abc")
    assert service.move_job(settings, c, "up")["position"] == 2
    assert store.queue_order() == [a, c, b]
    assert service.move_job(settings, a, "down")["position"] == 2
    assert service.move_job(settings, b, "top")["position"] == 1
    assert store.queue_order() == [b, c, a]
    assert [j["position"] for j in service.list_jobs(settings, "queued")] == [2, 1, 3]
    with pytest.raises(ValueError, match="up, down or top"):
        service.move_job(settings, a, "sideways")
    with pytest.raises(ValueError, match="whole number"):
        service.set_priority(settings, a, "high")
    with pytest.raises(ValueError, match="one of queued"):
        service.list_jobs(settings, "done")

    # a running job: no reorder, no delete, no retry
    store.claim_job(b)
    with pytest.raises(ValueError, match="only a queued job"):
        service.set_priority(settings, b, 3)
    with pytest.raises(InUse, match="cancel it first"):
        service.delete_job(settings, b)
    with pytest.raises(ValueError, match="only a stopped job can be retried"):
        service.retry_job(settings, b)
    store.finish_job(b, JobState.FAILED, "It broke.")
    with pytest.raises(ValueError, match="no checkpoint to resume from; retry it"):
        service.resume_job(settings, b)

    retried = service.retry_job(settings, b)
    again = store.get_job(retried["job_id"])
    assert again.state == JobState.QUEUED and again.name.endswith("(retry)")
    assert {k: v for k, v in again.spec.items() if k != "name"} == {
        k: v for k, v in store.get_job(b).spec.items() if k != "name"
    }
    clone = service.clone_job(settings, b)
    assert clone["spec"]["training"] == store.get_job(b).spec["training"]
    assert clone["spec"]["name"].endswith("(copy)")
    started = service.start_job(settings, clone["spec"])
    assert store.get_job(started["job_id"]).name.endswith("(copy)")

    (store.job_dir(b) / "train.log").write_text("one\ntwo\nthree\n")
    assert service.job_log(settings, b, 2)["lines"] == ["two", "three"]
    (store.job_dir(b) / "train.log").write_text("start\nbar  10%\rbar  50%\rbar 100%\r\n\nend\n")
    assert service.job_log(settings, b, 10)["lines"] == ["start", "bar 100%", "", "end"]
    with pytest.raises(ValueError, match="lines: must be"):
        service.job_log(settings, b, 0)
    store.add_metric(b, step=1, loss=1.0)
    store.add_samples(b, 0, ["p"], ["t"])
    assert service.delete_job(settings, b) == {"job_id": b, "deleted": True}
    assert not store.job_dir(b).exists() and b not in [j.id for j in store.list_jobs()]
    with pytest.raises(LookupError):
        service.job_status(settings, b)
    with pytest.raises(LookupError):
        service.delete_job(settings, "job-000000000000")
    with pytest.raises(LookupError, match="not a job id"):
        service.delete_job(settings, "../etc")


def test_a_deleted_job_leaves_its_adapter(settings, store, tmp_path):
    job = store.add_job("made one", {"method": "lora"}, None)
    store.claim_job(job.id)
    staged = store.tmp_dir()
    (staged / "adapter_config.json").write_text("{}")
    adapter = store.add_adapter(staged, job_id=job.id, name="a", base_model="m", method="lora")
    store.finish_job(job.id, JobState.SUCCEEDED, adapter_id=adapter.id)
    service.delete_job(settings, job.id)
    kept = store.get_adapter(adapter.id)
    assert kept.job_id is None and store.adapter_dir(adapter.id).is_dir()


def test_training_an_adapter_further_keeps_its_method(settings, store, tiny_model):
    """from_adapter: the adapter's base, method and settings; the new data and training."""
    dataset_id = service.add_sample(settings, "arithmetic")["id"]
    job = store.add_job("made one", {"method": "lora"}, None)
    staged = store.tmp_dir()
    recipe = parse_spec({"base_model": str(tiny_model), "dataset_id": dataset_id, "method": "ia3"})
    (staged / "recipe.json").write_text(recipe.to_json())
    adapter = store.add_adapter(
        staged, job_id=job.id, name="a", base_model=str(tiny_model), method="ia3"
    )
    further = {
        **quick(tiny_model, dataset_id),
        "method": "lora",
        "from_adapter": adapter.id,
    }
    started = service.start_job(settings, further)
    queued = store.get_job(started["job_id"])
    assert queued.spec["method"] == "ia3" and queued.spec["from_adapter"] == adapter.id
    assert queued.spec["method_params"] == recipe.method_params
    assert queued.spec["training"]["max_steps"] == 1
    with pytest.raises(ValueError, match="from_adapter: no adapter"):
        service.start_job(settings, {**further, "from_adapter": "ad-000000000000"})
    with pytest.raises(ValueError, match="from_adapter: must be an adapter id"):
        service.start_job(settings, {**further, "from_adapter": "../x"})


def small_dataset(settings, tmp_path, rows: int = 16) -> str:
    path = tmp_path / "sums.jsonl"
    path.write_text(
        "".join(
            json.dumps({"prompt": f"What is {a} + 11?", "completion": str(a + 11)}) + "\n"
            for a in range(10, 10 + rows)
        )
    )
    return service.upload_dataset(settings, [str(path)], "sums")["id"]


def test_a_two_gpu_job_trains_data_parallel(settings, tiny_model, tmp_path):
    """A job asking for two devices waits for a worker that has them, which runs it under
    accelerate launch, one process per device (on this CPU machine they talk over gloo): 16
    rows in batches of 4 per process take 2 steps, not 4."""
    from jobs.runner import run_next

    store = Store(settings.data_dir)
    dataset_id = small_dataset(settings, tmp_path)
    two = spec(tiny_model, dataset_id, max_steps=None, epochs=1, eval_fraction=0.0, gpus=2)
    job_id = service.start_job(settings, two)["job_id"]
    assert run_next(settings, devices=[]) == "waiting", "a one-device worker leaves it queued"
    assert store.get_job(job_id).state == JobState.QUEUED
    assert run_next(settings, devices=["0", "1"]) == "ran"
    job = store.get_job(job_id)
    assert job.state == JobState.SUCCEEDED, job.error_detail
    assert (job.step, job.total_steps) == (2, 2), "two processes share each epoch"
    assert job.worker.endswith("gpu 0,1")
    steps = [m.step for m in store.list_metrics(job_id) if m.loss is not None]
    assert steps == [1, 2], "only the first process reports"
    assert store.adapter_dir(job.adapter_id).joinpath("adapter_model.safetensors").is_file()
