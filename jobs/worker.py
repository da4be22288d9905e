"""A worker: a huey consumer that runs one job at a time, on its GPUs (--gpu) or the CPU."""

from __future__ import annotations

import logging

from config import Settings
from jobs.queue import get_queue, requeue_waiting
from jobs.runner import fork_server, run_next, worker_devices
from jobs.sweep import advance_all
from storage.store import Store


def run_worker(settings: Settings) -> None:
    """Blocks until SIGINT/SIGTERM. Each job runs in its own child process (jobs.runner)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s worker %(levelname)s %(message)s")
    store = Store(settings.data_dir)
    store.init(settings.db_journal)
    stale = store.interrupt_stale_jobs(settings.heartbeat_timeout_s)
    if stale:
        logging.info("marked interrupted (stale heartbeat): %s", ", ".join(stale))
    devices = worker_devices(settings)
    logging.info("devices: %s", ", ".join(f"gpu {d}" for d in devices) or "the CPU")
    server = fork_server(settings, devices)
    if server is not None:
        server.start()  # it imports while the worker waits for its first job
    queue = get_queue(settings, run=run_next)
    advance_all(settings)  # searches whose last trial settled while no worker ran
    try:
        requeue_waiting(settings)
    except Exception as exc:  # an unreachable Redis: huey's consumer retries it by itself
        logging.warning("could not wake the queued jobs (%s); the queue will retry", exc)
    consumer = queue.huey.create_consumer(
        workers=1,
        worker_type="thread",
        periodic=False,
        # An idle worker looks for a wake-up 4 times a second: a Start waits at most 0.25 s
        # for it (a cheap query on SQLite or Redis).
        initial_delay=0.1,
        max_delay=0.25,
    )
    consumer.run()
