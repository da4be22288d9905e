"""A worker: a huey consumer that takes one job at a time from the queue."""

from __future__ import annotations

import logging

from jobs.queue import get_queue, requeue_waiting
from storage.settings import Settings
from storage.store import Store


def run_worker(settings: Settings) -> None:
    """Blocks until SIGINT/SIGTERM. Each job runs in its own child process (jobs.runner)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s worker %(levelname)s %(message)s")
    store = Store(settings.data_dir)
    store.init()
    stale = store.interrupt_stale_jobs(settings.heartbeat_timeout_s)
    if stale:
        logging.info("marked interrupted (stale heartbeat): %s", ", ".join(stale))
    requeue_waiting(settings)
    consumer = get_queue(settings).huey.create_consumer(
        workers=1,
        worker_type="thread",
        periodic=False,
        initial_delay=0.2,
        max_delay=1.0,
    )
    consumer.run()
