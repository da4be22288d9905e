"""What can be done with jobs: list, status, view, reorder, cancel, resume, retry, clone, delete,
log. A user's mistake raises a UserError with the message to show.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from config import Settings
from errors import UserError
from jobs.queue import submit_job, wake
from jobs.runner import LOG_NAME
from jobs.sweep import advance, cancel_sweep, trial_rows
from storage.store import Job, JobKind, JobState, Metric, Sample, Store

MAX_LOG_LINES = 2000
LOG_TAIL_BYTES = 1 << 20


def settled_store(settings: Settings) -> Store:
    """The store, after marking jobs whose process died (stale heartbeat) as interrupted."""
    store = Store(settings.data_dir)
    store.interrupt_stale_jobs(settings.heartbeat_timeout_s)
    return store


@dataclass(frozen=True)
class JobView:
    """What the Jobs tab shows of one job: its record and curves; for a search, its trials'."""

    job: Job
    metrics: list[Metric]
    samples: list[Sample] = field(default_factory=list)
    children: list[Job] = field(default_factory=list)
    child_metrics: dict[str, list[Metric]] = field(default_factory=dict)
    trials: list[dict[str, Any]] = field(default_factory=list)


def job_view(settings: Settings, job_id: str) -> JobView:
    store = Store(settings.data_dir)
    job = store.get_job(job_id)
    metrics = store.list_metrics(job.id)
    if job.kind != JobKind.SWEEP:
        return JobView(job, metrics, samples=store.list_samples(job.id))
    children = store.children(job.id)
    return JobView(
        job,
        metrics,
        children=children,
        child_metrics={c.id: store.list_metrics(c.id) for c in children},
        trials=trial_rows(store, job, children),
    )


def job_info(
    store: Store,
    job: Job,
    losses: tuple[float | None, ...],
    position: int | None = None,
    dataset_name: str | None = None,
) -> dict[str, Any]:
    loss, eval_loss = losses
    end = job.finished_at
    return {
        "job_id": job.id,
        "name": job.name,
        "status": job.state.value,
        "position": position,  # 1 = the next to run; None unless queued
        "priority": job.priority,
        "base_model": job.spec.get("base_model"),
        "kind": job.kind,
        # an evaluate or merge job's findings (an evaluation's examples: /evaluation_results)
        "result": {k: v for k, v in (job.result or {}).items() if k != "examples"} or None,
        "method": job.spec.get("method") or job.kind,
        "dataset_id": job.dataset_id,
        "dataset": dataset_name,
        "from_adapter": job.spec.get("from_adapter"),
        "parent_id": job.parent_id,  # the search job this one is a trial (or final run) of
        "role": job.role,
        "gpus": job.gpus,
        "step": job.step,
        "total_steps": job.total_steps,
        "loss": loss,
        "eval_loss": eval_loss,
        "error": job.error,
        "adapter_id": job.adapter_id,
        "checkpoint": job.checkpoint,
        "resumable": resumable(store, job),
        "runs": job.runs,
        "worker": job.worker,
        "heartbeat_at": job.heartbeat_at,
        "created_at": job.created_at,
        "started_at": job.started_at,
        "finished_at": end,
        "seconds": round(end - job.started_at, 1) if end and job.started_at else None,
    }


def resumable(store: Store, job: Job) -> bool:
    """Stopped, with a complete checkpoint (weights, optimizer, scheduler, RNG) on disk."""
    if job.state not in RESUMABLE or not job.checkpoint:
        return False
    return (store.job_dir(job.id) / job.checkpoint / "trainer_state.json").is_file()


RESUMABLE = (JobState.INTERRUPTED, JobState.CANCELLED, JobState.FAILED)


def list_jobs(settings: Settings, state: str | None = None) -> list[dict[str, Any]]:
    """Every job, newest first; `state` keeps one state only."""
    if state:
        JobState(_state(state))
    store = settled_store(settings)
    losses = store.last_losses()
    order = {job_id: i + 1 for i, job_id in enumerate(store.queue_order())}
    names = {d.id: d.name for d in store.list_datasets(include_deleted=True)}
    return [
        job_info(store, j, losses.get(j.id, (None, None)), order.get(j.id), names.get(j.dataset_id))
        for j in store.list_jobs()
        if not state or j.state == state
    ]


def _state(value: str) -> str:
    known = [s.value for s in JobState]
    if value not in known:
        raise UserError(f"state: must be one of {', '.join(known)}; got {value!r}")
    return value


def job_status(settings: Settings, job_id: str) -> dict[str, Any]:
    store = settled_store(settings)
    job = store.get_job(job_id)
    order = store.queue_order()
    position = order.index(job.id) + 1 if job.id in order else None
    dataset = store.find_dataset(job.dataset_id) if job.dataset_id else None
    name = dataset.name if dataset else None
    return job_info(store, job, store.last_losses(job.id)[job.id], position, name)


def cancel_job(settings: Settings, job_id: str) -> dict[str, Any]:
    """A queued job is cancelled at once; a running one stops after its step, checkpointed."""
    store = Store(settings.data_dir)
    job = store.get_job(job_id)
    if job.state.finished:
        raise UserError(f"Job {job_id} has already ended ({job.state.value}).")
    if job.kind == JobKind.SWEEP:
        return {"job_id": job_id, "status": cancel_sweep(settings, job).value}
    state = store.cancel_job(job_id)
    if job.parent_id and state.finished:  # a queued trial: its search may be done now
        advance(settings, job.parent_id)
    return {"job_id": job_id, "status": state.value}


def set_priority(settings: Settings, job_id: str, priority: int) -> dict[str, Any]:
    """Higher runs first; equal priorities run oldest first."""
    if (
        isinstance(priority, bool)
        or not isinstance(priority, int | float)
        or priority != int(priority)
    ):
        raise UserError(f"priority: must be a whole number, got {priority!r}")
    store = Store(settings.data_dir)
    store.set_priority(job_id, int(priority))
    return job_status(settings, job_id)


def move_job(settings: Settings, job_id: str, where: str) -> dict[str, Any]:
    """One place up or down in the queue, or to its top ('up', 'down', 'top')."""
    store = Store(settings.data_dir)
    order = store.queue_order()
    if job_id not in order:
        state = store.get_job(job_id).state.value
        raise UserError(f"Job {job_id} is {state}; only a queued job can be moved.")
    i = order.index(job_id)
    j = {"up": i - 1, "down": i + 1, "top": 0}.get(where)
    if j is None:
        raise UserError(f"where: must be up, down or top; got {where!r}")
    order.insert(max(0, min(j, len(order) - 1)), order.pop(i))
    store.reorder(order)
    return job_status(settings, job_id)


def resume_job(settings: Settings, job_id: str) -> dict[str, Any]:
    """Queue a stopped job again from its last checkpoint; it ends at the same final step."""
    store = Store(settings.data_dir)
    job = store.get_job(job_id)
    if job.state not in RESUMABLE:
        raise UserError(f"Job {job_id} is {job.state.value}; only a stopped job can be resumed.")
    if not resumable(store, job):
        raise UserError(f"Job {job_id} has no checkpoint to resume from; retry it instead.")
    store.requeue_job(job.id, resume_from=job.checkpoint)
    wake(settings)
    return job_status(settings, job_id)


def retry_job(settings: Settings, job_id: str) -> dict[str, Any]:
    """A failed, cancelled or interrupted job again from the start, as a new job."""
    from service.training import start_job

    job = Store(settings.data_dir).get_job(job_id)
    if job.state not in RESUMABLE:
        raise UserError(f"Job {job_id} is {job.state.value}; only a stopped job can be retried.")
    name = f"{job.name} (retry)"[:200]
    if job.kind == JobKind.SWEEP:  # the whole search again, with new trials
        return start_job(settings, {**search_spec(job), "name": name})
    if job.kind != JobKind.TRAIN:  # evaluate and merge jobs are queued again as they were
        retried = submit_job(settings, name, job.spec, job.dataset_id, kind=job.kind)
        return {"job_id": retried.id, "status": retried.state.value}
    return start_job(settings, {**job.spec, "name": name})


def clone_job(settings: Settings, job_id: str) -> dict[str, Any]:
    """The job's spec, to edit and start as a new job (the Train form fills in with it)."""
    job = Store(settings.data_dir).get_job(job_id)
    if job.kind not in (JobKind.TRAIN, JobKind.SWEEP):
        raise UserError(f"Job {job_id} is a {job.kind} job: only a training job has a form.")
    spec = search_spec(job) if job.kind == JobKind.SWEEP else job.spec
    return {"job_id": job.id, "spec": {**spec, "name": f"{job.name} (copy)"[:200]}}


def search_spec(job: Job) -> dict[str, Any]:
    """A search job's spec as it was started (without the trials it chose)."""
    return {k: v for k, v in job.spec.items() if k != "trials"}


def delete_job(settings: Settings, job_id: str) -> dict[str, Any]:
    """A job that is not running, with its log, checkpoints and curves; its adapter stays. A
    search goes with its trials."""
    store = Store(settings.data_dir)
    children = store.children(store.get_job(job_id).id)
    running = [c.id for c in children if not c.state.finished]
    if running:
        raise UserError(f"Job {job_id} has trials still queued or running: cancel it first.")
    for child in children:
        store.delete_job(child.id)
    store.delete_job(job_id)
    return {"job_id": job_id, "deleted": True}


def job_log(settings: Settings, job_id: str, lines: int = 100) -> dict[str, Any]:
    """The last `lines` lines of the job's log (its child process's output)."""
    if isinstance(lines, bool) or not isinstance(lines, int) or not 1 <= lines <= MAX_LOG_LINES:
        raise UserError(f"lines: must be a whole number from 1 to {MAX_LOG_LINES}")
    store = Store(settings.data_dir)
    job = store.get_job(job_id)
    path = store.job_dir(job.id) / LOG_NAME
    return {"job_id": job.id, "lines": terminal_lines(_tail(path))[-lines:]}


def _tail(path: Path, limit: int = LOG_TAIL_BYTES) -> str:
    """The end of a log, read as bytes: carriage returns stay (text mode would make them
    newlines), and a long log is not read whole."""
    if not path.exists():
        return ""
    with path.open("rb") as f:
        size = f.seek(0, os.SEEK_END)
        f.seek(max(0, size - limit))
        data = f.read()
    text = data.decode("utf-8", errors="replace")
    return text.split("\n", 1)[-1] if size > limit else text  # from a whole line


def terminal_lines(text: str) -> list[str]:
    """The lines as a terminal leaves them: a progress bar redrawn with carriage returns shows
    its last state only, not one line per redraw."""
    shown = []
    for line in text.split("\n"):
        parts = [p for p in line.split("\r") if p.strip()]
        shown.append(parts[-1] if parts else line.strip("\r"))
    if shown and shown[-1] == "":
        shown.pop()
    return shown


def job_samples(settings: Settings, job_id: str) -> list[dict[str, Any]]:
    """The sample answers so far: step 0 is the base model's."""
    return [
        {"step": s.step, "prompt": s.prompt, "text": s.text}
        for s in Store(settings.data_dir).list_samples(job_id)
    ]
