"""Runs jobs in the worker: claim the next one, start its child process, heartbeat, settle."""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from config import Settings
from jobs import forkserver
from jobs.failures import explain_exit
from jobs.forkserver import ForkServer
from jobs.sweep import advance
from storage.store import JobState, Store

PROJECT_ROOT = Path(__file__).resolve().parent.parent
HEARTBEAT_EVERY_S = 2.0
_PR_SET_PDEATHSIG = 1
LOG_NAME = "train.log"


def stop_with_parent() -> None:
    """Ask the kernel for SIGTERM when this process's parent dies, even by SIGKILL (Linux; else
    a no-op). Call it first thing, then check that the parent is still there (getppid)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


def worker_devices(settings: Settings) -> list[str]:
    """The GPU ids this worker may use: --gpu, else every GPU it can see (none on a CPU box)."""
    if settings.gpus.strip():
        return [g.strip() for g in settings.gpus.split(",") if g.strip()]
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [g.strip() for g in visible.split(",") if g.strip() and g.strip() != "-1"]
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in out.stdout.splitlines() if line.strip()]


def worker_name(devices: list[str]) -> str:
    return f"{socket.gethostname()}:{os.getpid()}" + (
        f" gpu {','.join(devices)}" if devices else ""
    )


def run_next(settings: Settings, devices: list[str] | None = None) -> str:
    """Claim and run the first queued job this worker can run: 'ran', 'idle' (none queued),
    or 'waiting' (queued jobs need more GPUs than this worker has)."""
    devices = worker_devices(settings) if devices is None else devices
    store = Store(settings.data_dir)
    job_id = store.claim_next(len(devices), worker_name(devices))
    if job_id is None:
        return "waiting" if store.queue_order() else "idle"
    run_job(settings, job_id, devices)
    return "ran"


def child_command(job_id: str, gpus: int) -> list[str]:
    """One process, or one per GPU under accelerate launch (data parallel)."""
    if gpus <= 1:
        return [sys.executable, "-m", "jobs.child", job_id]
    with socket.socket() as s:  # each multi-GPU job its own rendezvous port
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        f"--num_processes={gpus}",
        "--num_machines=1",
        "--mixed_precision=no",  # the child picks bf16 itself where the GPU has it
        "--dynamo_backend=no",
        f"--main_process_port={port}",
        "-m",
        "jobs.child",
        job_id,
    ]


def child_env(settings: Settings, devices: list[str], gpus: int = 1) -> dict[str, str]:
    env = {**os.environ, **settings.to_env(), "PYTHONUNBUFFERED": "1"}
    if devices:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(devices[: max(gpus, 1)])
    return env


_servers: dict[tuple, ForkServer] = {}  # one per worker environment (jobs.forkserver)


def fork_server(settings: Settings, devices: list[str]) -> ForkServer | None:
    """The worker's fork server for one-process jobs on these devices, if it is to have one."""
    if not (settings.fork_server and forkserver.AVAILABLE):
        return None
    env = child_env(settings, devices)
    key = tuple(sorted(env.items()))
    if key not in _servers:
        _servers[key] = ForkServer(env)
    return _servers[key]


def start_child(settings: Settings, job, devices: list[str], log):
    """The job's process: forked from the fork server for a one-process job, else a fresh one
    (a Popen, or a ForkedChild with the same poll / wait / terminate / kill)."""
    server = fork_server(settings, devices) if job.gpus <= 1 else None
    child = server.run(job.id) if server is not None else None
    if child is not None:
        return child
    return subprocess.Popen(
        child_command(job.id, job.gpus),
        cwd=PROJECT_ROOT,
        env=child_env(settings, devices, job.gpus),
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )


def run_job(settings: Settings, job_id: str, devices: list[str]) -> None:
    """Run a job this worker has claimed (it is `running`) until its child process ends."""
    store = Store(settings.data_dir)
    job = store.get_job(job_id)
    log_path = store.job_dir(job_id) / LOG_NAME
    with log_path.open("ab") as log:
        log.write(f"\n==== run {job.runs} on {job.worker} ====\n".encode())
        log.flush()
        try:
            child = start_child(settings, job, devices, log)
        except OSError as exc:
            store.finish_job(
                job_id, JobState.FAILED, f"The training process could not start: {exc}"
            )
            return
        store.update_job(job_id, pid=child.pid)
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
            with contextlib.suppress(subprocess.TimeoutExpired):  # back at once when it ends
                child.wait(timeout=HEARTBEAT_EVERY_S)
    code = child.wait()
    # The child settles its own state; if it died before it could, say why here.
    if cancel_seen is not None:
        settled = store.finish_job(job_id, JobState.CANCELLED, "Cancelled; the run was stopped.")
    elif code < 0:  # killed from outside (the OOM killer, most often): resumable, not failed
        reason = explain_exit(code, store.get_job(job_id).checkpoint, job.kind)
        settled = store.finish_job(job_id, JobState.INTERRUPTED, reason, log_tail(log_path))
    else:
        reason = explain_exit(code, kind=job.kind)
        settled = store.finish_job(job_id, JobState.FAILED, reason, log_tail(log_path))
    if settled:
        logging.info("job %s: child exited with %s before finishing", job_id, code)
    if job.parent_id:  # a trial (or the final run) of a settings search
        advance(settings, job.parent_id)


def stop(child, grace_s: float) -> None:
    """SIGTERM, then SIGKILL if it has not exited within grace_s; returns once it is gone."""
    child.terminate()
    try:
        child.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()


def log_tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])
