"""The child process of one training job: `python -m jobs.child JOB_ID` (started by the runner)."""

from __future__ import annotations

import os
import shutil
import sys
import traceback
from pathlib import Path

from finetune.data import DataError, read_rows
from finetune.fields import SpecError
from finetune.models import ModelError, resolve_model
from finetune.spec import JobSpec, parse_spec
from finetune.train import TrainResult, final_metrics, train, write_model_card
from storage.settings import Settings, from_env
from storage.store import JobState, Store


class StoreReporter:
    """The training run's voice: metrics rows, progress, and the cancel / orphan check."""

    def __init__(self, store: Store, job_id: str):
        self.store, self.job_id = store, job_id
        self.parent = os.getppid()
        self.history: list[dict] = []
        self.orphaned = False

    def started(self, total_steps: int, trainable_params: int, total_params: int) -> None:
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
        if os.getppid() != self.parent:  # the worker died: stop, and leave the job to go stale
            self.orphaned = True
            return True
        return self.store.heartbeat(self.job_id)


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


def run(settings: Settings, job_id: str) -> JobState:
    import torch

    torch.set_num_threads(settings.train_threads)
    store = Store(settings.data_dir)
    job = store.get_job(job_id)
    spec: JobSpec = parse_spec(job.spec)
    job_dir = store.job_dir(job_id)
    reporter = StoreReporter(store, job_id)
    scratch = None
    try:
        dataset = store.get_dataset(spec.dataset_id)
        rows = read_rows(store.dataset_dir(dataset.id) / "rows.jsonl")
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
        )
        if reporter.orphaned:
            checkpoint = job_dir / f"checkpoint-{result.step}"
            staged.rename(checkpoint)
            store.update_job(job_id, checkpoint=checkpoint.name)
            return JobState.INTERRUPTED  # the app marks it once the heartbeat is stale
        if result.stopped:
            checkpoint = job_dir / f"checkpoint-{result.step}"
            staged.rename(checkpoint)
            store.update_job(job_id, checkpoint=checkpoint.name)
            store.finish_job(job_id, JobState.CANCELLED, "Cancelled; the last weights were kept.")
            return JobState.CANCELLED
        write_model_card(
            staged,
            spec,
            result,
            spec.base_model,
            dataset.name,
            final_metrics(reporter.history),
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


def _size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def main() -> None:
    state = run(from_env(), sys.argv[1])
    sys.exit(0 if state in (JobState.SUCCEEDED, JobState.CANCELLED) else 1)


if __name__ == "__main__":
    main()
