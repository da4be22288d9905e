"""Runs one job in the worker: claim it, start its child process, heartbeat, settle its end."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from storage.settings import Settings
from storage.store import JobState, Store

PROJECT_ROOT = Path(__file__).resolve().parent.parent
HEARTBEAT_EVERY_S = 2.0
LOG_NAME = "train.log"


def run_job(settings: Settings, job_id: str) -> None:
    store = Store(settings.data_dir)
    if not store.claim_job(job_id):
        logging.info("job %s is no longer queued; skipped", job_id)
        return
    log_path = store.job_dir(job_id) / LOG_NAME
    env = {**os.environ, **settings.to_env(), "PYTHONUNBUFFERED": "1"}
    with log_path.open("ab") as log:
        try:
            child = subprocess.Popen(
                [sys.executable, "-m", "jobs.child", job_id],
                cwd=PROJECT_ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        except OSError as exc:
            store.finish_job(
                job_id, JobState.FAILED, f"The training process could not start: {exc}"
            )
            return
        logging.info("job %s started in process %d", job_id, child.pid)
        cancel_seen = None
        while child.poll() is None:
            if store.heartbeat(job_id) and cancel_seen is None:
                cancel_seen = time.monotonic()
            if cancel_seen is not None and time.monotonic() - cancel_seen > settings.cancel_grace_s:
                # The child stops by itself between steps; one that does not (still loading, or
                # stuck) is told to, then made to.
                stop(child, settings.cancel_grace_s)
                break
            time.sleep(HEARTBEAT_EVERY_S)
    code = child.wait()
    # The child settles its own state; if it died before it could, say why here.
    if cancel_seen is not None:
        settled = store.finish_job(job_id, JobState.CANCELLED, "Cancelled; the run was stopped.")
    else:
        settled = store.finish_job(job_id, JobState.FAILED, explain_exit(code), log_tail(log_path))
    if settled:
        logging.info("job %s: child exited with %s before finishing", job_id, code)


def stop(child: subprocess.Popen, grace_s: float) -> None:
    child.terminate()
    try:
        child.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        child.kill()


def explain_exit(code: int) -> str:
    if code < 0:
        name = signal.Signals(-code).name
        if -code == signal.SIGKILL:
            return (
                f"The training process was killed ({name}), most often because the machine ran "
                "out of memory. Try a smaller batch size or max length."
            )
        return f"The training process was stopped by signal {name}."
    return f"The training process exited with status {code} before reporting a result."


def log_tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])
