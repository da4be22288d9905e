"""The huey instance (SQLite in the data dir, or Redis) and its one task: run the next job.

The order of the queue lives in app.db (priority, then age), so a waiting job can be moved or
cancelled at any time: a huey task carries no job id, only "a job is waiting", and the worker
that takes it claims the first job in that order that it has the devices for.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from huey import Huey, RedisHuey, SqliteHuey
from huey.api import TaskWrapper

from config import Settings
from storage.store import Job, JobKind, JobState, Store


@dataclass(frozen=True)
class Queue:
    huey: Huey
    next_job: TaskWrapper  # calling it enqueues; the worker runs jobs.runner.run_next


_queues: dict[tuple, Queue] = {}
Runner = Callable[[Settings], str]  # run the next job: "ran", "idle" or "waiting"


def make_huey(settings: Settings) -> Huey:
    """A Redis queue is shared by every worker that names it: one Redis db per deployment (one
    data dir), or a worker of another deployment takes wake-ups meant for this one."""
    if settings.queue_url:
        if not settings.queue_url.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(
                f"ADAPTERLAB_QUEUE_URL / --queue-url {settings.queue_url!r}: give "
                "redis://host:port/db (or leave it empty for the SQLite queue in the data dir)"
            )
        return RedisHuey(name="adapterlab", url=settings.queue_url, results=False)
    settings.queue_path.parent.mkdir(parents=True, exist_ok=True)
    return SqliteHuey(name="adapterlab", filename=str(settings.queue_path), results=False)


def get_queue(settings: Settings, run: Runner | None = None) -> Queue:
    """One huey per queue, with the task registered; the same in the app and the worker. The
    worker gives `run` (jobs.runner.run_next), which the task calls; the app only enqueues."""
    key = (settings.queue_url, settings.queue_path, settings.gpus)
    if key not in _queues:
        huey = make_huey(settings)

        @huey.task(name="next_job")
        def next_job() -> None:
            if run is None:
                raise RuntimeError("this process enqueues jobs; a worker runs them")
            if run(settings) == "waiting":  # for a worker with more GPUs than this one
                next_job.schedule(delay=WAITING_RETRY_S)

        _queues[key] = Queue(huey=huey, next_job=next_job)
    return _queues[key]


WAITING_RETRY_S = 10.0


def submit_job(
    settings: Settings,
    name: str,
    spec: dict,
    dataset_id: str | None,
    gpus: int = 1,
    priority: int = 0,
    kind: JobKind = JobKind.TRAIN,
    parent_id: str | None = None,
    role: str | None = None,
) -> Job:
    """Record the job as queued, then wake a worker."""
    store = Store(settings.data_dir)
    job = store.add_job(
        name,
        spec,
        dataset_id,
        gpus=gpus,
        priority=priority,
        kind=kind,
        parent_id=parent_id,
        role=role,
    )
    try:
        wake(settings)
    except Exception as exc:  # a queued row no worker hears of would wait until one starts
        store.claim_job(job.id)
        store.finish_job(job.id, JobState.FAILED, f"The job could not be queued: {exc}")
        raise
    return job


def wake(settings: Settings) -> None:
    """Tell a worker one more job waits (a job queued again by resume or retry, too)."""
    get_queue(settings).next_job()


def requeue_waiting(settings: Settings) -> int:
    """One wake-up per queued job: covers tasks lost with a deleted queue file, or taken by a
    worker that died before it claimed a job. Extra ones find nothing to do and end."""
    waiting = len(Store(settings.data_dir).queue_order())
    for _ in range(waiting):
        wake(settings)
    return waiting
