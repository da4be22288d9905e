"""The job queue's overhead: N tiny jobs through the real queue vs the same trainings in-process.

    python bench/job_queue.py                       (20 jobs, 3 latency runs: ~5 min on 2 cores)
    python bench/job_queue.py --jobs 3 --latency-runs 1 --json queue.json

Every training is the same: LoRA r=4 on a tiny Llama built from a config (tests/tiny.py), on the
arithmetic sample, 2 steps of 4 rows, max length 96, one torch thread. Two measurements:
  1. Throughput. N jobs queued at once with start_job -> huey -> a warm worker process -> one
     child process each, from the first Start to the last job finished; against N calls of
     finetune.train.train back to back in this process, reading the rows as the child does.
     Both sides get one untimed warm-up run first (imports, page cache).
  2. Latency. Start (the start_job call) -> the job's first logged step, with the worker idle
     long enough for huey's polling to back off fully; median of K, split into Start -> queued
     (start_job's validation and counts), queued -> claimed (the worker's poll) and claimed ->
     first step (the child: process start, imports, model and data load).
The file is not called queue.py: in bench/ that name would shadow the standard library's `queue`
for every `python bench/X.py` (torch imports it), breaking the other benchmarks.
Prints ratios; not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from itertools import pairwise
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
# One thread, local files only: set before anything imports torch, and inherited by the worker.
os.environ["OMP_NUM_THREADS"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import service  # noqa: E402
from bench.methods import device  # noqa: E402
from config import Settings  # noqa: E402
from finetune.data import read_rows  # noqa: E402
from finetune.models import resolve_model  # noqa: E402
from finetune.quiet import quiet_library_logs  # noqa: E402
from finetune.spec import parse_spec  # noqa: E402
from finetune.train import Reporter, train  # noqa: E402
from jobs.runner import stop  # noqa: E402
from storage.store import EVAL_FILE, ROWS_FILE, Job, JobState, Store  # noqa: E402
from tests.tiny import build_tiny_model  # noqa: E402

TRAINING = {
    "max_steps": 2,
    "batch_size": 4,
    "max_length": 96,
    "eval_fraction": 0.0,
    "sample_prompts": 0,
}
# huey's consumer polls an empty queue at 0.1 s, backing off by 1.15x up to 0.25 s (jobs/worker.py):
# a worker that has waited this long is what a user's Start usually meets.
IDLE_S = 8.0
POLL_S = 0.1
TIMEOUT_S = 600.0


class _FirstStep(Reporter):
    """Keeps the wall-clock time of the first logged training step."""

    def __init__(self) -> None:
        self.first: float | None = None

    def logged(self, step: int, values: dict[str, float]) -> None:
        if self.first is None and "loss" in values:
            self.first = time.time()


@contextmanager
def output_to(path: Path) -> Iterator[None]:
    """stdout and stderr into a file, at the descriptors: the tokenizers trainer writes to fd 1
    itself, past sys.stdout."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with path.open("ab") as f:
        os.dup2(f.fileno(), 1)
        os.dup2(f.fileno(), 2)
    try:
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        for fd, copy in zip((1, 2), saved, strict=True):
            os.dup2(copy, fd)
            os.close(copy)


def job_spec(model: Path, dataset_id: str) -> dict:
    return {
        "base_model": str(model),
        "dataset_id": dataset_id,
        "method": "lora",
        "method_params": {"r": 4},
        "training": dict(TRAINING),
    }


def train_direct(settings: Settings, spec: dict, work: Path) -> dict:
    """One training as jobs.child runs it, minus the process: parse, read rows, train. Its output
    goes to a log file, as the child's does."""
    work.mkdir(parents=True)
    with output_to(work / "train.log"):
        return _train_direct(settings, spec, work)


def _train_direct(settings: Settings, spec: dict, work: Path) -> dict:
    start = time.time()
    parsed = parse_spec(spec)
    store = Store(settings.data_dir)
    folder = store.dataset_dir(store.get_dataset(parsed.dataset_id).id)
    rows, eval_rows = read_rows(folder / ROWS_FILE), read_rows(folder / EVAL_FILE)
    reporter = _FirstStep()
    train(
        parsed,
        rows,
        resolve_model(parsed.base_model, settings.models_dir),
        work / "trainer",
        work / "adapter",
        reporter,
        settings.allow_remote_code,
        eval_rows=eval_rows,
        report_to=settings.loggers(),
        log_dir=work / "tensorboard",
    )
    end = time.time()
    return {"wall_s": end - start, "first_step_s": (reporter.first or end) - start}


def start_worker(settings: Settings, log_path: Path) -> subprocess.Popen:
    with log_path.open("ab") as log:
        return subprocess.Popen(
            [
                sys.executable,
                str(ROOT / "app.py"),
                "worker",
                "--data-dir",
                str(settings.data_dir),
                "--models-dir",
                str(settings.models_dir),
            ],
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def _tail(path: Path, lines: int = 30) -> str:
    text = path.read_text(encoding="utf-8", errors="replace") if path.exists() else ""
    return "\n".join(text.splitlines()[-lines:])


def wait_finished(
    store: Store, job_ids: list[str], worker: subprocess.Popen, log: Path
) -> list[Job]:
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        if worker.poll() is not None:
            raise RuntimeError(f"the worker exited with {worker.returncode}:\n{_tail(log)}")
        jobs = [store.get_job(j) for j in job_ids]
        if all(job.state.finished for job in jobs):
            for job in jobs:
                if job.state != JobState.SUCCEEDED:
                    train_log = _tail(store.job_dir(job.id) / "train.log")
                    raise RuntimeError(f"job {job.id} {job.state.value}: {job.error}\n{train_log}")
            return jobs
        time.sleep(POLL_S)
    raise RuntimeError(f"jobs not finished after {TIMEOUT_S:.0f} s:\n{_tail(log)}")


def run_queued(settings: Settings, spec: dict, n: int, worker, log: Path) -> dict:
    """N jobs queued at once; wall time from the first Start to the last job's end."""
    store = Store(settings.data_dir)
    start = time.time()
    job_ids = [service.start_job(settings, spec)["job_id"] for _ in range(n)]
    jobs = sorted(wait_finished(store, job_ids, worker, log), key=lambda j: j.started_at)
    firsts = [_first_step(store, job.id) for job in jobs]
    return {
        "wall_s": max(job.finished_at for job in jobs) - start,
        "child_s": [job.finished_at - job.started_at for job in jobs],
        "claimed_to_first_step_s": [
            f - job.started_at for f, job in zip(firsts, jobs, strict=True)
        ],
        # the worker's hand-off: one job settled -> the next one claimed
        "handoff_s": [b.started_at - a.finished_at for a, b in pairwise(jobs)],
    }


def _first_step(store: Store, job_id: str) -> float:
    return min(m.created_at for m in store.list_metrics(job_id) if m.loss is not None)


def measure_latency(settings: Settings, spec: dict, worker, log: Path) -> dict:
    """Start -> first logged step, with the worker idle; the job then runs to its end."""
    store = Store(settings.data_dir)
    time.sleep(IDLE_S)
    clicked = time.time()
    job_id = service.start_job(settings, spec)["job_id"]
    returned = time.time()
    job = wait_finished(store, [job_id], worker, log)[0]
    first = _first_step(store, job_id)
    return {
        "start_job_s": returned - clicked,
        "start_to_queued_s": job.created_at - clicked,
        "queued_to_claimed_s": job.started_at - job.created_at,
        "claimed_to_first_step_s": first - job.started_at,
        "start_to_first_step_s": first - clicked,
    }


def report(direct: list[dict], queued: dict, latency: list[dict], n: int) -> dict:
    direct_total = sum(r["wall_s"] for r in direct)
    mean = statistics.mean
    summary = {
        "direct_total_s": direct_total,
        "queue_total_s": queued["wall_s"],
        "ratio": queued["wall_s"] / direct_total,
        "overhead_per_job_s": (queued["wall_s"] - direct_total) / n,
    }
    print(f"\n{n} jobs, back to back           total s   per job s")
    print(f"direct train() in one process {direct_total:9.1f} {direct_total / n:11.2f}")
    print(f"queue (worker + child each)   {queued['wall_s']:9.1f} {queued['wall_s'] / n:11.2f}")
    print(
        f"ratio queue/direct: {summary['ratio']:.2f}; "
        f"overhead per job: {summary['overhead_per_job_s']:.2f} s"
    )
    handoff = f"{mean(queued['handoff_s']):.2f} s" if queued["handoff_s"] else "-"
    print(
        f"  where it goes, per job: claimed -> settled {mean(queued['child_s']):.2f} s "
        f"(claimed -> first step {mean(queued['claimed_to_first_step_s']):.2f} s, vs "
        f"{mean(r['first_step_s'] for r in direct):.2f} s from a train() call); "
        f"worker hand-off (settled -> next claimed) {handoff}"
    )
    if latency:
        med = {k: statistics.median(r[k] for r in latency) for k in latency[0]}
        summary["latency_median"] = med
        print(
            f"\nStart -> first step, warm idle worker (median of {len(latency)}): "
            f"{med['start_to_first_step_s']:.2f} s"
        )
        print(f"  Start -> queued (start_job: validate, count)  {med['start_to_queued_s']:6.2f} s")
        print(
            f"  queued -> claimed (worker poll)               {med['queued_to_claimed_s']:6.2f} s"
        )
        print(
            f"  claimed -> first step (child: start, load)    "
            f"{med['claimed_to_first_step_s']:6.2f} s"
        )
        print(f"  (start_job returned after {med['start_job_s']:.2f} s)")
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=20, help="jobs on each side")
    parser.add_argument("--latency-runs", type=int, default=3, help="Start -> first step runs")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    if args.jobs < 1 or args.latency_runs < 0:
        raise SystemExit("--jobs must be >= 1 and --latency-runs >= 0")
    import torch

    torch.set_num_threads(1)
    quiet_library_logs()
    command = shlex.join(["python", "bench/job_queue.py", *sys.argv[1:]])
    print(f"command: {command}\ndevice: {device()}", flush=True)

    with tempfile.TemporaryDirectory(prefix="adapterlab-queue-bench-") as tmp:
        work = Path(tmp)
        settings = Settings(data_dir=work / "data", models_dir=work / "models")
        Store(settings.data_dir).init()
        with output_to(work / "setup.log"):
            model = build_tiny_model(settings.models_dir / "tiny-llama")
            dataset_id = service.add_sample(settings, "arithmetic")["id"]
        spec = job_spec(model, dataset_id)
        log = work / "worker.log"
        worker = start_worker(settings, log)
        try:
            warm_direct = train_direct(settings, spec, work / "direct-warm")["wall_s"]
            warm_queued = run_queued(settings, spec, 1, worker, log)["wall_s"]
            print(
                f"warm-up, not counted: first in-process train() {warm_direct:.1f} s, "
                f"first queued job {warm_queued:.1f} s",
                flush=True,
            )
            direct = [train_direct(settings, spec, work / f"direct-{i}") for i in range(args.jobs)]
            print(f"direct: {args.jobs} runs done", flush=True)
            queued = run_queued(settings, spec, args.jobs, worker, log)
            print(f"queue: {args.jobs} jobs done", flush=True)
            latency = []
            for i in range(args.latency_runs):
                latency.append(measure_latency(settings, spec, worker, log))
                print(
                    f"latency run {i + 1}: {latency[-1]['start_to_first_step_s']:.2f} s",
                    flush=True,
                )
        finally:
            stop(worker, 30)

    summary = report(direct, queued, latency, args.jobs)
    if args.json:
        payload = {"command": command, "device": device(), "jobs": args.jobs, "spec": TRAINING}
        payload |= {"summary": summary, "direct": direct, "queued": queued, "latency": latency}
        args.json.write_text(json.dumps(payload, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
