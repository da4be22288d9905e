"""The child process of one training job: `python -m jobs.child JOB_ID` (started by the runner)."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import sys
import traceback
from pathlib import Path

from config import Settings, from_env
from finetune.data import common_system_prompt, read_rows
from finetune.model_card import final_metrics, write_model_card
from finetune.models import resolve_model
from finetune.quiet import quiet_library_logs
from finetune.spec import JobSpec, parse_spec
from finetune.train import Reporter, TrainResult, train
from jobs.failures import plain_reason
from jobs.runner import LOG_NAME, stop_with_parent
from jobs.sweep import PROBE
from storage.store import JobKind, JobState, Store, folder_bytes


class StoreReporter(Reporter):
    """The training run's voice: metrics rows, progress, checkpoints, sample answers, and the
    stop checks between steps."""

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

    def planned(self, total_steps: int) -> None:
        self.store.update_job(self.job_id, total_steps=total_steps)

    def logged(self, step: int, values: dict[str, float]) -> None:
        self.history.append(values)
        self.store.add_metric(self.job_id, step=step, **values)
        self.store.update_job(self.job_id, step=step)

    def saved(self, step: int, checkpoint: Path) -> None:
        relative = checkpoint.resolve().relative_to(self.store.job_dir(self.job_id).resolve())
        self.store.update_job(self.job_id, checkpoint=str(relative))

    def sampled(self, step: int, prompts: list[str], texts: list[str]) -> None:
        self.store.add_samples(self.job_id, step, prompts, texts)

    def should_stop(self) -> bool:
        cancelled = self.store.heartbeat(self.job_id)
        return cancelled or self.shutdown


class PeerReporter(StoreReporter):
    """Another process of a data-parallel run: it stops with the others and reports nothing
    (the first process speaks for the run)."""

    def started(self, total_steps: int, trainable_params: int, total_params: int) -> None:
        self.training = True

    def planned(self, total_steps: int) -> None:
        pass

    def logged(self, step: int, values: dict[str, float]) -> None:
        pass

    def saved(self, step: int, checkpoint: Path) -> None:
        pass

    def sampled(self, step: int, prompts: list[str], texts: list[str]) -> None:
        pass

    def should_stop(self) -> bool:
        return self.store.get_job(self.job_id).cancel_requested or self.shutdown


def handle_sigterm(store: Store, job_id: str, reporter: StoreReporter) -> None:
    """While training, stop after the step and keep the weights; before it, settle and exit now."""

    def on_sigterm(signum, frame):
        reporter.shutdown = True
        if reporter.training:
            return
        if isinstance(reporter, PeerReporter):  # the first process settles the job
            os._exit(1)
        kind = store.get_job(job_id).kind
        if stopped_state(store, job_id) == JobState.CANCELLED:
            store.finish_job(job_id, JobState.CANCELLED, _CANCELLED_BEFORE[kind == JobKind.TRAIN])
        else:
            store.finish_job(job_id, JobState.INTERRUPTED, _SHUTDOWN_BEFORE[kind == JobKind.TRAIN])
        os._exit(1)

    signal.signal(signal.SIGTERM, on_sigterm)


# [a job that does not train, a training job]
_SHUTDOWN_BEFORE = (
    "The worker or the app stopped while the job ran; retry it.",
    "The worker or the app stopped before training began; nothing was lost.",
)
_CANCELLED_BEFORE = (
    "Cancelled while it ran; retry it to start again.",
    "Cancelled before training began, while the model or the data was still loading "
    "(a download in progress stops with it); retry it to start again.",
)


def stopped_state(store: Store, job_id: str) -> JobState:
    """A run stopped from outside was cancelled if a user asked, else interrupted by a shutdown."""
    return JobState.CANCELLED if store.get_job(job_id).cancel_requested else JobState.INTERRUPTED


def run(settings: Settings, job_id: str, reporter: StoreReporter) -> JobState:
    import torch

    torch.set_num_threads(settings.train_threads)
    store = reporter.store
    job = store.get_job(job_id)
    spec: JobSpec = parse_spec(job.spec)
    job_dir = store.job_dir(job_id)
    first = not isinstance(reporter, PeerReporter)
    scratch = None
    try:
        dataset = store.get_dataset(spec.dataset_id)
        rows = read_rows(store.rows_path(dataset.id))
        eval_rows = read_rows(store.eval_path(dataset.id))
        model = resolve_model(spec.base_model, settings.models_dir)
        resume_from = resume_point(store, job)
        if resume_from is not None and first:
            store.forget_after(job_id, _step_of(resume_from))  # the curve goes on from there
        start_from = store.adapter_dir(spec.from_adapter) if spec.from_adapter else None
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
            resume_from=resume_from,
            start_from=start_from,
            report_to=settings.loggers() if first else (),
            log_dir=job_dir / "tensorboard",
            # a time budget fitted the steps of the first run; a resumed one ends there too
            total_steps=job.total_steps if resume_from is not None else None,
        )
        if not first:
            return JobState.SUCCEEDED  # the first process settles the job
        if result.stopped:
            return _keep_checkpoint(store, job_id, result, reporter.shutdown)
        if job.role == PROBE:  # an auto search's trial: its eval loss is what it was for
            store.finish_job(job_id, JobState.SUCCEEDED)
            shutil.rmtree(job_dir / "trainer", ignore_errors=True)
            return JobState.SUCCEEDED
        write_model_card(
            staged,
            spec,
            result,
            model,
            dataset.name,
            final_metrics(reporter.history),
            common_system_prompt(rows),
            result.task,
        )
        adapter = store.add_adapter(
            staged,
            job_id=job_id,
            name=spec.name or job.name,
            base_model=spec.base_model,
            method=spec.method,
            trainable_params=result.trainable_params,
            total_params=result.total_params,
            size_bytes=folder_bytes(staged),
        )
        store.finish_job(job_id, JobState.SUCCEEDED, adapter_id=adapter.id)
        shutil.rmtree(job_dir / "trainer", ignore_errors=True)  # the adapter is what was made
        return JobState.SUCCEEDED
    except Exception as exc:
        traceback.print_exc()
        if first:  # checkpoints stay: a run that failed for a passing reason can be resumed
            detail = traceback.format_exc()[-4000:]
            store.finish_job(job_id, JobState.FAILED, plain_reason(exc), detail)
        return JobState.FAILED
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)


def resume_point(store: Store, job) -> Path | None:
    """The checkpoint a resumed job starts from: ours, inside its folder, and complete."""
    if not job.resume_from:
        return None
    job_dir = store.job_dir(job.id).resolve()
    folder = (job_dir / job.resume_from).resolve()
    if not folder.is_relative_to(job_dir) or not (folder / "trainer_state.json").is_file():
        raise FileNotFoundError(f"checkpoint {job.resume_from} of job {job.id}")
    return folder


def _step_of(checkpoint: Path) -> int:
    return int(checkpoint.name.rsplit("-", 1)[1])


def _keep_checkpoint(store: Store, job_id: str, result: TrainResult, shutdown: bool) -> JobState:
    """A run stopped early keeps what it learned in its last checkpoint, to resume from."""
    checkpoint = store.get_job(job_id).checkpoint
    kept = f"the run can be resumed from step {result.step} ({checkpoint})."
    if shutdown and stopped_state(store, job_id) == JobState.INTERRUPTED:
        store.finish_job(job_id, JobState.INTERRUPTED, f"The worker or the app stopped; {kept}")
        return JobState.INTERRUPTED
    store.finish_job(job_id, JobState.CANCELLED, f"Cancelled; {kept}")
    return JobState.CANCELLED


def preload() -> None:
    """What every job imports, done once in the fork server (no CUDA call, no thread pool)."""
    import datasets  # noqa: F401
    import peft  # noqa: F401
    import torch  # noqa: F401
    from transformers import AutoModelForCausalLM, LlamaForCausalLM, Trainer  # noqa: F401
    from trl import SFTConfig, SFTTrainer  # noqa: F401


def forked_job(job_id: str) -> int:
    """A job's process forked by the fork server: it writes to the job's log, as a process
    started for the job would, and dies with the server."""
    stop_with_parent()  # (a forked process does not inherit it)
    log = Store(from_env().data_dir).job_dir(job_id) / LOG_NAME
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    return run_process(job_id)


def run_process(job_id: str) -> int:
    """The job, in this process of its own: its exit code."""
    settings = from_env()
    store = Store(settings.data_dir)
    # Under accelerate launch each process has a rank; the first one speaks for the run.
    first = int(os.environ.get("RANK", "0")) == 0
    reporter = StoreReporter(store, job_id) if first else PeerReporter(store, job_id)
    handle_sigterm(store, job_id, reporter)  # before the slow imports in run()
    # Ctrl-C in a terminal running the worker reaches this process too; the orderly way out is
    # the worker stopping, which brings SIGTERM (below): stop after the step, keep the weights.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    stop_with_parent()
    if os.getppid() == 1:  # the worker died before the line above took effect
        os.kill(os.getpid(), signal.SIGTERM)
    if store.get_job(job_id).kind == JobKind.TRAIN:
        state = run(settings, job_id, reporter)
    else:
        from jobs.model_jobs import run_model_job

        state = run_model_job(settings, job_id, reporter)
    code = 0 if state in (JobState.SUCCEEDED, JobState.CANCELLED) else 1
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    if set(settings.loggers()) & {"wandb", "mlflow"}:
        import atexit

        atexit._run_exitfuncs()  # W&B and MLflow upload in exit hooks
    # The job is settled and its files are written; tearing down torch and friends at exit
    # takes 1-2 s the next job would wait for.
    return code


def main() -> None:
    quiet_library_logs()
    if sys.argv[1] == "--fork-server":
        from jobs.forkserver import serve

        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the worker stops it (end of its input)
        stop_with_parent()
        if os.getppid() != 1:
            serve(preload, forked_job)
        return
    os._exit(run_process(sys.argv[1]))


if __name__ == "__main__":
    main()
