"""The child process of one training job: `python -m jobs.child JOB_ID` (started by the runner)."""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import sys
import traceback
from pathlib import Path

from finetune.data import DataError, common_system_prompt, read_rows
from finetune.fields import SpecError
from finetune.models import ModelError, resolve_model
from finetune.quiet import quiet_library_logs
from finetune.spec import JobSpec, parse_spec
from finetune.train import TrainResult, final_metrics, train, write_model_card
from storage.settings import Settings, from_env
from storage.store import JobState, Store

_PR_SET_PDEATHSIG = 1


class StoreReporter:
    """The training run's voice: metrics rows, progress, and the stop checks between steps."""

    def __init__(self, store: Store, job_id: str):
        self.store, self.job_id = store, job_id
        self.history: list[dict] = []
        self.training = False  # set once the first step is about to run
        self.shutdown = False  # SIGTERM: the worker or the app is stopping

    def started(self, total_steps: int, trainable_params: int, total_params: int) -> None:
        self.training = True
        self.store.update_job(
            self.job_id,
            total_steps=total_steps,
            trainable_params=trainable_params,
            total_params=total_params,
        )

    def logged(self, step: int, values: dict[str, float]) -> None:
        self.history.append(values)
        self.store.add_metric(self.job_id, step=step, **values)
        self.store.update_job(self.job_id, step=step)

    def should_stop(self) -> bool:
        cancelled = self.store.heartbeat(self.job_id)
        return cancelled or self.shutdown


def stop_with_parent() -> None:
    """Ask the kernel for SIGTERM when the worker dies, even by SIGKILL (Linux; else a no-op)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


def handle_sigterm(store: Store, job_id: str, reporter: StoreReporter) -> None:
    """While training, stop after the step and keep the weights; before it, settle and exit now."""

    def on_sigterm(signum, frame):
        reporter.shutdown = True
        if reporter.training:
            return
        if stopped_state(store, job_id) == JobState.CANCELLED:
            store.finish_job(job_id, JobState.CANCELLED, "Cancelled before training began.")
        else:
            store.finish_job(job_id, JobState.INTERRUPTED, _SHUTDOWN_BEFORE)
        os._exit(1)

    signal.signal(signal.SIGTERM, on_sigterm)


_SHUTDOWN_BEFORE = "The worker or the app stopped before training began; nothing was lost."


def stopped_state(store: Store, job_id: str) -> JobState:
    """A run stopped from outside was cancelled if a user asked, else interrupted by a shutdown."""
    return JobState.CANCELLED if store.get_job(job_id).cancel_requested else JobState.INTERRUPTED


def plain_reason(exc: BaseException) -> str:
    """One sentence a user can act on, for the failures we know."""
    text = str(exc)
    if isinstance(exc, ModelError | SpecError | DataError):
        return text
    if "out of memory" in text.lower() or isinstance(exc, MemoryError):
        return (
            "The run ran out of memory. Try a smaller batch size or max length "
            "(or QLoRA / gradient checkpointing on a GPU)."
        )
    if isinstance(exc, FileNotFoundError):
        return f"A file the job needs is missing: {exc.filename or text}."
    if isinstance(exc, OSError) and exc.errno == 28:
        return "The disk is full: free some space in the data dir and retry."
    return f"Training failed: {type(exc).__name__}: {text}"


def run(settings: Settings, job_id: str, reporter: StoreReporter) -> JobState:
    import torch

    torch.set_num_threads(settings.train_threads)
    store = reporter.store
    job = store.get_job(job_id)
    spec: JobSpec = parse_spec(job.spec)
    job_dir = store.job_dir(job_id)
    scratch = None
    try:
        dataset = store.get_dataset(spec.dataset_id)
        rows = read_rows(store.dataset_dir(dataset.id) / "rows.jsonl")
        eval_rows = read_rows(store.dataset_dir(dataset.id) / "eval.jsonl")
        model = resolve_model(spec.base_model, settings.models_dir)
        scratch = store.tmp_dir()
        staged = scratch / "adapter"
        result: TrainResult = train(
            spec,
            rows,
            model,
            job_dir / "trainer",
            staged,
            reporter,
            settings.allow_remote_code,
            eval_rows=eval_rows,
        )
        if result.stopped:
            return _keep_checkpoint(store, job_id, staged, result, reporter.shutdown)
        write_model_card(
            staged,
            spec,
            result,
            model,
            dataset.name,
            final_metrics(reporter.history),
            common_system_prompt(rows),
        )
        adapter = store.add_adapter(
            staged,
            job_id=job_id,
            name=spec.name or job.name,
            base_model=spec.base_model,
            method=spec.method,
            trainable_params=result.trainable_params,
            total_params=result.total_params,
            size_bytes=_size(staged),
        )
        store.finish_job(job_id, JobState.SUCCEEDED, adapter_id=adapter.id)
        return JobState.SUCCEEDED
    except Exception as exc:
        traceback.print_exc()
        store.finish_job(job_id, JobState.FAILED, plain_reason(exc), traceback.format_exc()[-4000:])
        return JobState.FAILED
    finally:
        shutil.rmtree(job_dir / "trainer", ignore_errors=True)
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)


def _keep_checkpoint(
    store: Store, job_id: str, staged: Path, result: TrainResult, shutdown: bool
) -> JobState:
    """A run stopped early keeps what it learned in the job folder."""
    checkpoint = store.job_dir(job_id) / f"checkpoint-{result.step}"
    staged.rename(checkpoint)
    store.update_job(job_id, checkpoint=checkpoint.name)
    kept = f"the weights after step {result.step} are kept in {checkpoint.name}."
    if shutdown and stopped_state(store, job_id) == JobState.INTERRUPTED:
        store.finish_job(job_id, JobState.INTERRUPTED, f"The worker or the app stopped; {kept}")
        return JobState.INTERRUPTED
    store.finish_job(job_id, JobState.CANCELLED, f"Cancelled; {kept}")
    return JobState.CANCELLED


def _size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def main() -> None:
    quiet_library_logs()
    job_id = sys.argv[1]
    settings = from_env()
    store = Store(settings.data_dir)
    reporter = StoreReporter(store, job_id)
    handle_sigterm(store, job_id, reporter)  # before the slow imports in run()
    # Ctrl-C in a terminal running the worker reaches this process too; the orderly way out is
    # the worker stopping, which brings SIGTERM (below): stop after the step, keep the weights.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    stop_with_parent()
    if os.getppid() == 1:  # the worker died before the line above took effect
        os.kill(os.getpid(), signal.SIGTERM)
    state = run(settings, job_id, reporter)
    sys.exit(0 if state in (JobState.SUCCEEDED, JobState.CANCELLED) else 1)


if __name__ == "__main__":
    main()
