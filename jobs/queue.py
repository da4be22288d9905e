"""The huey instance (SQLite, in the data dir) and the one task it carries: run a job by id."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from huey import SqliteHuey
from huey.api import TaskWrapper

from storage.settings import Settings
from storage.store import Job, JobState, Store


@dataclass(frozen=True)
class Queue:
    huey: SqliteHuey
    run_job: TaskWrapper  # calling it enqueues; the worker runs jobs.runner.run_job


_queues: dict[Path, Queue] = {}


def get_queue(settings: Settings) -> Queue:
    """One huey per queue file, with the task registered; the same in the app and the worker."""
    path = settings.queue_path
    if path not in _queues:
        path.parent.mkdir(parents=True, exist_ok=True)
        huey = SqliteHuey(name="adapterlab", filename=str(path), results=False)

        @huey.task(name="run_job")
        def run_job(job_id: str) -> None:
            from jobs.runner import run_job

            run_job(settings, job_id)

        _queues[path] = Queue(huey=huey, run_job=run_job)
    return _queues[path]


def submit_job(settings: Settings, name: str, spec: dict, dataset_id: str | None) -> Job:
    """Record the job as queued, then enqueue its id (the task opens the database itself)."""
    store = Store(settings.data_dir)
    job = store.add_job(name=name, spec=spec, dataset_id=dataset_id)
    try:
        get_queue(settings).run_job(job.id)
    except Exception as exc:  # a queued row with no task behind it would wait forever
        store.claim_job(job.id)
        store.finish_job(job.id, JobState.FAILED, f"The job could not be queued: {exc}")
        raise
    return job


def requeue_waiting(settings: Settings) -> int:
    """Enqueue every queued job again (a worker skips any it cannot claim, so twice is harmless).

    Covers a job whose task was lost: enqueued in a queue file since deleted, or taken by a
    worker that died before it could claim it.
    """
    store = Store(settings.data_dir)
    waiting = [j for j in reversed(store.list_jobs()) if j.state == JobState.QUEUED]
    for job in waiting:
        get_queue(settings).run_job(job.id)
    return len(waiting)
