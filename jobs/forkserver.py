"""A fork server: one process with the heavy imports done, from which each job's process forks.

Importing torch, transformers, TRL and PEFT takes a fresh child about 6 s on a 2-core CPU, which
a short job (an auto-settings trial) would spend again and again. A worker keeps one server
process (`python -m jobs.child --fork-server`) that imports everything once and never touches
CUDA; for each job it forks a process that runs only that job, in the state the imports left.
So every job still has a process of its own whose memory (GPU memory too) goes back when it
exits, CUDA is first initialized in the job's own process with the job's devices (what fork
needs to be safe), and a job starts in a few milliseconds instead of seconds. Linux only (fork
after imports is not safe on macOS); elsewhere, or with ADAPTERLAB_FORK_SERVER=false, jobs start
as fresh processes.

The protocol on the server's pipes, one line each: the worker writes `run JOB_ID`; the server
answers `pid JOB_ID PID` once the job's process exists, and `exit PID CODE` when it ends (CODE is
negative for a signal, as Popen's returncode).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT_S = 180.0  # the first job may wait for the server's imports
AVAILABLE = sys.platform.startswith("linux")


class ForkedChild:
    """A job's process forked by the server, with the parts of Popen the runner uses."""

    def __init__(self, pid: int):
        self.pid = pid
        self.returncode: int | None = None
        self._ended = threading.Event()
        self.orphaned = False  # the server died: ask the kernel whether the process lives

    def _end(self, code: int) -> None:
        self.returncode = code
        self._ended.set()

    def poll(self) -> int | None:
        if self.returncode is None and self.orphaned:
            try:
                os.kill(self.pid, 0)
            except ProcessLookupError:  # gone, and nobody heard how: treat it as killed
                self._end(-signal.SIGKILL)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise subprocess.TimeoutExpired(f"job process {self.pid}", timeout)
            self._ended.wait(0.5 if left is None else min(left, 0.5))
        return self.returncode

    def send_signal(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


class ForkServer:
    """The worker's side: start the server, ask it for a job's process, hear how each ended."""

    def __init__(self, env: dict[str, str]):
        self.env = env
        self._server: subprocess.Popen | None = None
        self._children: dict[int, ForkedChild] = {}
        self._waiting: dict[str, tuple[threading.Event, list]] = {}
        self._lock = threading.Lock()

    def start(self) -> None:
        """Start the server unless it runs (it imports while the worker waits for a job)."""
        with self._lock:
            if self._server is not None and self._server.poll() is None:
                return
            self._server = subprocess.Popen(
                [sys.executable, "-m", "jobs.child", "--fork-server"],
                cwd=PROJECT_ROOT,
                env=self.env,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
            )
            threading.Thread(target=self._read, args=(self._server,), daemon=True).start()

    def run(self, job_id: str) -> ForkedChild | None:
        """The job's process, forked; None when the server cannot give one (the caller then
        starts a fresh process)."""
        self.start()
        event, answer = threading.Event(), []
        with self._lock:
            server = self._server
            self._waiting[job_id] = (event, answer)
            try:
                server.stdin.write(f"run {job_id}\n".encode())
                server.stdin.flush()
            except OSError:
                self._waiting.pop(job_id, None)
                return None
        if not event.wait(START_TIMEOUT_S) or not answer:
            with self._lock:
                self._waiting.pop(job_id, None)
            self.stop()  # stuck or refusing: the next job gets a new server
            return None
        return answer[0]

    def _read(self, server: subprocess.Popen) -> None:
        for raw in server.stdout:
            parts = raw.decode(errors="replace").split()
            with self._lock:
                if parts[:1] == ["pid"] and len(parts) == 3:
                    child = self._children[int(parts[2])] = ForkedChild(int(parts[2]))
                    event, answer = self._waiting.pop(parts[1], (None, None))
                    if event is not None:
                        answer.append(child)
                        event.set()
                elif parts[:1] == ["exit"] and len(parts) == 3:
                    child = self._children.pop(int(parts[1]), None)
                    if child is not None:
                        child._end(int(parts[2]))
                elif parts[:1] == ["refuse"]:  # it cannot fork safely: none waits for it
                    for event, _ in self._waiting.values():
                        event.set()
                    self._waiting.clear()
        with self._lock:  # the server is gone: its children die with it (PDEATHSIG)
            for child in self._children.values():
                child.orphaned = True
            self._children.clear()
            for event, _ in self._waiting.values():
                event.set()
            self._waiting.clear()

    def stop(self) -> None:
        with self._lock:
            server, self._server = self._server, None
        if server is not None and server.poll() is None:
            with contextlib.suppress(OSError):
                server.stdin.close()  # it exits on end of input
            try:
                server.wait(timeout=10)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()


def serve(preload, run_job) -> None:
    """The server's loop (in `python -m jobs.child --fork-server`): import, then fork one
    process per `run JOB_ID` line, and report each one's pid and exit. `run_job(job_id)` runs in
    the forked process and returns its exit code."""
    import select

    import torch

    preload()
    out = sys.stdout.fileno()
    if torch.cuda.is_initialized():  # forking now would break CUDA in the job's process
        os.write(out, b"refuse\n")
        return
    stdin = sys.stdin.buffer
    # A job's process ending (SIGCHLD) wakes the loop at once, through this pipe.
    woken, wake = os.pipe()
    os.set_blocking(woken, False)
    os.set_blocking(wake, False)
    signal.set_wakeup_fd(wake)
    signal.signal(signal.SIGCHLD, lambda signum, frame: None)
    while True:
        ready, _, _ = select.select([stdin, woken], [], [], 5.0)
        with contextlib.suppress(BlockingIOError):
            os.read(woken, 512)
        _reap(out)
        if stdin not in ready:
            continue
        line = stdin.readline()
        if not line:  # the worker is gone or stopping
            return
        parts = line.decode(errors="replace").split()
        if parts[:1] != ["run"] or len(parts) != 2:
            continue
        pid = os.fork()
        if pid == 0:
            _in_job_process(parts[1], run_job)
        os.write(out, f"pid {parts[1]} {pid}\n".encode())


def _reap(out: int) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        code = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
        os.write(out, f"exit {pid} {code}\n".encode())


def _in_job_process(job_id: str, run_job) -> None:
    """The forked process: the server's pipes and signal set-up undone, then the job; it never
    returns."""
    code = 1
    try:
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        devnull = os.open(os.devnull, os.O_RDWR)
        os.dup2(devnull, 0)
        os.dup2(devnull, 1)  # until the job's log is opened
        os.close(devnull)
        code = run_job(job_id)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)
