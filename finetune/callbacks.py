"""The training run's TrainerCallbacks: progress and stop checks for the Reporter, evaluation
cadence, sample answers, AdaLoRA's rank budget, early stopping, TensorBoard.

Each callback class is made inside a function (or __new__), so transformers is imported only
when a run starts.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

from finetune.schedule import Plan
from finetune.watch import every_steps


class Reporter:
    """How a run talks back to whoever started it (the job runner's subclass stores it all);
    this one listens to nothing and never stops a run."""

    def started(self, total_steps: int, trainable_params: int, total_params: int) -> None:
        pass

    def logged(self, step: int, values: dict[str, float]) -> None:
        pass

    def planned(self, total_steps: int) -> None:
        """A time budget set the run's total steps anew."""

    def saved(self, step: int, checkpoint: Path) -> None:
        """A complete checkpoint (weights, optimizer, scheduler, RNG) to resume from."""

    def sampled(self, step: int, prompts: list[str], texts: list[str]) -> None:
        """Answers to the fixed sample prompts; step 0 is the model before training."""

    def should_stop(self) -> bool:
        return False


def quarter(total: int) -> int:
    """Eval every quarter of a run: the last one falls on the last step or just after it (where
    the run's final eval is)."""
    return max(1, math.ceil(total / 4))


def method_callbacks(method, plan: Plan) -> list:
    """AdaLoRA moves its rank budget after each optimizer step, before gradients are cleared,
    on a schedule over the run's total steps (which a time budget may refit)."""
    if not method.rank_budget:
        return []
    from transformers import TrainerCallback

    class RankBudget(TrainerCallback):
        def on_optimizer_step(self, args, state, control, model=None, **kwargs):
            config = model.peft_config[model.base_model.trainable_adapter_name]
            if config.total_step != plan.total:  # the schedule's phases, in the same shares
                share = plan.total / max(config.total_step, 1)
                config.tinit, config.tfinal = (
                    round(config.tinit * share),
                    round(config.tfinal * share),
                )
                config.total_step = max(plan.total, 3)
            model.base_model.update_and_allocate(state.global_step)

    return [RankBudget()]


class Progress:
    """Turns Trainer events into Reporter calls: metrics each log, a stop check each step."""

    def __init__(self, reporter: Reporter, trainable: int, total: int, plan: Plan):
        self.reporter, self.trainable, self.total, self.plan = reporter, trainable, total, plan
        self.stopped = False
        self._last = (time.perf_counter(), 0)

    def callback(self):
        from transformers import TrainerCallback

        progress = self

        class Callback(TrainerCallback):
            def on_train_begin(self, args, state, control, **kwargs):
                progress._last = (time.perf_counter(), state.num_input_tokens_seen or 0)
                progress.reporter.started(
                    min(state.max_steps, progress.plan.total), progress.trainable, progress.total
                )

            def on_step_end(self, args, state, control, **kwargs):
                if agreed(progress.reporter.should_stop()):
                    progress.stopped = True
                    control.should_training_stop = True
                    control.should_save = True  # a stopped run can be resumed from here
                elif state.global_step >= state.max_steps and state.global_step % args.save_steps:
                    control.should_save = False  # the finished run is saved as the adapter

            def on_save(self, args, state, control, **kwargs):
                if state.is_world_process_zero:
                    folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
                    progress.reporter.saved(state.global_step, folder)

            def on_log(self, args, state, control, logs=None, **kwargs):
                logs = logs or {}
                if "loss" in logs or "eval_loss" in logs:  # not the end-of-run summary
                    progress.reporter.logged(state.global_step, progress.values(state, logs))

        return Callback()

    def values(self, state, logs: dict) -> dict[str, float]:
        now, tokens = time.perf_counter(), state.num_input_tokens_seen or 0
        last_time, last_tokens = self._last
        values = {"epoch": state.epoch, "memory_mb": memory_mb()}
        for ours, theirs in (
            ("loss", "loss"),
            ("eval_loss", "eval_loss"),
            ("learning_rate", "learning_rate"),
        ):
            if theirs in logs:
                values[ours] = float(logs[theirs])
        if "loss" in logs and tokens > last_tokens and now > last_time:
            values["tokens_per_s"] = (tokens - last_tokens) / (now - last_time)
            self._last = (now, tokens)
        return values


def agreed(stop: bool) -> bool:
    """In a data-parallel run every process stops at the same step, or the others wait forever
    for the one that stopped: any process's stop is everyone's."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return stop
    import torch

    flag = torch.tensor([1.0 if stop else 0.0])
    if dist.get_backend() == "nccl":
        flag = flag.cuda()
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item())


class Cadence:
    """Eval every quarter of the run (or eval_steps) as the total moves, and once more at the
    last step: every run ends with an eval loss (auto settings choose by it). A TrainerCallback
    made in __new__, as SampleAnswers."""

    def __new__(cls, t: dict, plan: Plan, has_eval: bool):
        from transformers import TrainerCallback

        class Cadence(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                if not t["eval_steps"]:
                    state.eval_steps = quarter(plan.total)
                    if args.load_best_model_at_end:  # the best must be a saved checkpoint
                        state.save_steps = state.eval_steps
                if has_eval and state.global_step >= state.max_steps:
                    control.should_evaluate = True

        return Cadence()


def early_stopping(t: dict):
    from transformers import EarlyStoppingCallback

    return EarlyStoppingCallback(early_stopping_patience=t["early_stopping_patience"])


class SampleAnswers:
    """A TrainerCallback (made in __new__, so transformers is imported only when training):
    the base model's answers at the start, the run's every `sample_every` steps (None: four
    times a run, as the plan's total stands) and at the end."""

    def __new__(
        cls,
        reporter: Reporter,
        model,
        tokenizer,
        task: str,
        rows: list,
        sample_every: int | None,
        plan: Plan,
    ):
        from transformers import TrainerCallback

        from finetune.watch import answer, prompt_text

        prompts = [prompt_text(r) for r in rows]

        def sample(step: int, base: bool = False) -> None:
            texts = answer(model, tokenizer, task, rows, base=base)
            reporter.sampled(step, prompts, texts)

        class SampleAnswers(TrainerCallback):
            def on_train_begin(self, args, state, control, **kwargs):
                if state.is_world_process_zero and rows and state.global_step == 0:
                    sample(0, base=True)

            def on_step_end(self, args, state, control, **kwargs):
                step = state.global_step
                stopped_early = control.should_training_stop and step < state.max_steps
                due = step % every_steps(sample_every, plan.total) == 0 or step >= state.max_steps
                if state.is_world_process_zero and rows and due and not stopped_early:
                    sample(step)

        return SampleAnswers()


def tensorboard(log_dir: Path):
    """TensorBoard event files (loss, eval loss, learning rate) in the job's folder."""
    from transformers.integrations import TensorBoardCallback

    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        from tensorboardX import SummaryWriter
    return TensorBoardCallback(tb_writer=SummaryWriter(log_dir=str(log_dir)))


def memory_mb() -> float:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # the peak, in KiB on Linux
