"""A worker: a huey consumer that runs one job at a time, on its GPUs (--gpu) or the CPU."""

from __future__ import annotations

import logging

from jobs.queue import get_queue, requeue_waiting
from jobs.runner import worker_devices
from storage.settings import Settings
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
    queue = get_queue(settings)
    try:
        requeue_waiting(settings)
    except Exception as exc:  # an unreachable Redis: huey's consumer retries it by itself
        logging.warning("could not wake the queued jobs (%s); the queue will retry", exc)
    consumer = queue.huey.create_consumer(
        workers=1,
        worker_type="thread",
        periodic=False,
        initial_delay=0.2,
        max_delay=1.0,
    )
    consumer.run()
