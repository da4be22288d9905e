"""One training run: rows + spec in, a PEFT adapter folder out. Reads like a TRL script."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from finetune.callbacks import (
    Cadence,
    Progress,
    Reporter,
    SampleAnswers,
    early_stopping,
    method_callbacks,
    quarter,
    tensorboard,
)
from finetune.data import DataError
from finetune.examples import class_labels, collator, encoder_examples, split_rows, to_examples
from finetune.methods import CONVERTED_INITS, get_method
from finetune.models import device_settings, load_model
from finetune.prefix import SharedPrefixLoss
from finetune.schedule import Budget, Plan, budget_callback, fitted_scheduler
from finetune.spec import JobSpec
from finetune.tasks import CAUSAL_LM, SEQ_CLS, model_task
from finetune.watch import sample_rows

EVAL_ROWS_CAP = 32  # periodic eval loss on at most this many held-out rows (keeps CPU runs short)


@dataclass(frozen=True)
class TrainResult:
    step: int
    total_steps: int
    stopped: bool  # True when should_stop() ended the run early
    trainable_params: int
    total_params: int
    dtype: str  # the base model's compute dtype during training
    ended_by_time: bool = False  # the time budget ran out before the fitted last step
    task: str = CAUSAL_LM  # the model's task (what the model card's snippet loads it as)


UNBOUNDED_STEPS = 1_000_000  # a run with only a time budget: the budget ends it


def budget_only(t: dict) -> bool:
    """A time budget with neither epochs nor max_steps: it alone ends the run."""
    return bool(t["max_minutes"]) and t["epochs"] is None and t["max_steps"] is None


def steps_planned(t: dict, examples: int, world: int = 1) -> int:
    """Optimizer steps of a run over `examples` (as the Trainer counts them): max_steps, or the
    epochs' batches over the accumulation; a time budget alone starts from one epoch's."""
    if t["max_steps"]:
        return t["max_steps"]
    batches = math.ceil(examples / (t["batch_size"] * world))
    per_epoch = math.ceil(batches / t["gradient_accumulation_steps"])
    return max(1, math.ceil(per_epoch * (t["epochs"] or 1.0)))


def trainer_arguments(
    t: dict, work_dir: Path, plan, has_eval: bool, report_to, budgeted: bool = False
) -> dict:
    """TrainingArguments (and SFTConfig) values of a run, by transformers' own names.
    budgeted: a time budget alone ends the run (it sets the steps as it goes)."""
    eval_every = t["eval_steps"] or quarter(plan.total)
    best = t["load_best_model_at_end"] and has_eval
    return dict(
        output_dir=str(work_dir),
        max_steps=UNBOUNDED_STEPS if budgeted else plan.total,
        per_device_train_batch_size=t["batch_size"],
        per_device_eval_batch_size=t["batch_size"],
        gradient_accumulation_steps=t["gradient_accumulation_steps"],
        learning_rate=t["learning_rate"],
        # the scheduler is the fitted one (trainer_class); these name it in the saved args
        lr_scheduler_type=t["lr_scheduler_type"],
        warmup_steps=t["warmup_ratio"],  # below 1: a share of the steps
        weight_decay=t["weight_decay"],
        max_grad_norm=t["max_grad_norm"],
        neftune_noise_alpha=t["neftune_noise_alpha"],
        train_sampling_strategy="group_by_length" if t["group_by_length"] else "random",
        seed=t["seed"],
        logging_steps=t["logging_steps"],
        eval_strategy="steps" if has_eval else "no",
        eval_steps=eval_every,
        save_strategy="steps",
        save_steps=eval_every if best else t["save_steps"],  # the best is one of the checkpoints
        save_total_limit=t["keep_checkpoints"],
        load_best_model_at_end=best,
        metric_for_best_model="eval_loss" if has_eval else None,
        greater_is_better=False if has_eval else None,
        save_only_model=False,  # optimizer, scheduler and RNG too: a resumed run goes on exactly
        report_to=[r for r in report_to if r != "tensorboard"],
        disable_tqdm=True,
        # TRL's default is on; ours is off (about 20% faster) unless memory asks for it.
        activation_checkpointing=t["activation_checkpointing"],
        include_num_input_tokens_seen="non_padding",
        dataloader_num_workers=0,
        **device_settings(),
    )


def sft_arguments(t: dict) -> dict:
    """SFTConfig's own values: packing and padding-free (TRL's best-fit packing is padding-free
    too; padding-free alone gets rows already cut to max length, see to_examples)."""
    if t["padding_free"] and not t["packing"]:
        return {"padding_free": True, "max_length": None}
    return {"packing": t["packing"], "packing_strategy": "bfd", "max_length": t["max_length"]}


def loraplus_optimizer(model, t: dict):
    """AdamW with LoRA+'s rates: B matrices at loraplus_lr_ratio x the learning rate (PEFT)."""
    import torch
    from peft.optimizers import create_loraplus_optimizer

    return create_loraplus_optimizer(
        model,
        torch.optim.AdamW,
        lr=t["learning_rate"],
        loraplus_lr_ratio=t["loraplus_lr_ratio"],
        loraplus_weight_decay=t["weight_decay"],  # (PEFT's name for it there)
    )


def _world_size() -> int:
    import os

    return int(os.environ.get("WORLD_SIZE", "1"))


@dataclass
class Run:
    """A training run set up and ready to start: trainer.train() runs it."""

    trainer: object
    tokenizer: object
    method: object
    labels: list[str] | None
    initial: Path | None  # PiSSA / OLoRA's starting adapter, to save the result converted
    progress: Progress
    budget: Budget | None
    trainable: int
    total: int
    task: str


def train(
    spec: JobSpec,
    rows: list[dict],
    model_path: str,
    work_dir: Path,
    out_dir: Path,
    reporter: Reporter,
    trust_remote_code: bool = False,
    eval_rows: list[dict] | None = None,
    resume_from: Path | None = None,
    start_from: Path | None = None,
    report_to: tuple[str, ...] = (),
    log_dir: Path | None = None,
    total_steps: int | None = None,
) -> TrainResult:
    """Train spec.method on rows; write the adapter to out_dir (created, must not exist).

    eval_rows, when the dataset has its own eval split, replace the eval_fraction split.
    Checkpoints go to work_dir every training.save_steps; resume_from (one of them) continues a
    run to the same final step. start_from (an adapter folder of spec.method) trains that adapter
    further instead of a new one. report_to: loggers (tensorboard, wandb, mlflow); TensorBoard
    events go to log_dir (default work_dir/tensorboard). total_steps: the step count a resumed
    run keeps (a time budget fitted it in the first run).
    """
    run = build_run(
        spec,
        rows,
        model_path,
        work_dir,
        reporter,
        trust_remote_code,
        eval_rows,
        start_from,
        report_to,
        log_dir,
        total_steps,
    )
    trainer = run.trainer
    trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)

    state = trainer.state
    if not run.progress.stopped and state.is_world_process_zero:  # stopped: the checkpoint has it
        out_dir.mkdir(parents=True)
        save_trained(
            trainer.model, run.tokenizer, run.method, spec.method_params, out_dir, run.initial
        )
        if run.labels:
            (out_dir / LABELS_FILE).write_text(json.dumps(run.labels), encoding="utf-8")
    return TrainResult(
        step=state.global_step,
        total_steps=min(state.max_steps, trainer.plan.total),
        stopped=run.progress.stopped,
        trainable_params=run.trainable,
        total_params=run.total,
        dtype=str(trainer.model.dtype).removeprefix("torch."),
        ended_by_time=bool(run.budget and run.budget.ended_by_time),
        task=run.task,
    )


def build_run(
    spec: JobSpec,
    rows: list[dict],
    model_path: str,
    work_dir: Path,
    reporter: Reporter,
    trust_remote_code: bool = False,
    eval_rows: list[dict] | None = None,
    start_from: Path | None = None,
    report_to: tuple[str, ...] = (),
    log_dir: Path | None = None,
    total_steps: int | None = None,
) -> Run:
    """The model, data, method and trainer of a run, as train() describes them, not started."""
    from transformers import AutoConfig

    from finetune.methods import Context, trainable_counts

    t = spec.training
    method = get_method(spec.method)
    if eval_rows:
        train_rows = rows
    else:
        train_rows, eval_rows = split_rows(rows, t["eval_fraction"], t["seed"])
    eval_rows = eval_rows[:EVAL_ROWS_CAP]

    task = model_task(AutoConfig.from_pretrained(model_path, trust_remote_code=trust_remote_code))
    labels = class_labels(train_rows + eval_rows) if task == SEQ_CLS else None
    quantization = method.quantization(spec.method_params) if method.quantization else None
    if start_from is not None and method.writes == "model":  # a full model trains on as a whole
        model_path = str(start_from)
    model, tokenizer = load_model(model_path, trust_remote_code, quantization, labels)
    train_data, eval_data = _datasets(t, task, tokenizer, labels, train_rows, eval_rows)
    world = _world_size()
    planned = total_steps or steps_planned(t, len(train_data), world)
    context = Context(model_path=model_path, total_steps=planned, task_type=task)
    model, initial = _adapted(model, method, spec, context, start_from, work_dir)
    trainable, total = trainable_counts(model)

    # The step count and the schedule: fixed by epochs or max_steps, or fitted to a time budget
    # (a resumed run keeps the total it was fitted to: total_steps).
    plan = Plan(t["lr_scheduler_type"], t["warmup_ratio"], planned)
    budget = None
    if t["max_minutes"] and total_steps is None:
        budget = Budget(t["max_minutes"] * 60, plan, cap=planned, on_fit=reporter.planned)
    has_eval = eval_data is not None
    progress = Progress(reporter, trainable, total, plan)
    watched = sample_rows(eval_rows, train_rows, t["sample_prompts"])
    if quantization and device_settings()["use_cpu"]:
        # bitsandbytes repacks 4-bit weights for CPU inference on the first eval-mode forward,
        # for good: the training steps after it then fail. No sample answers there.
        watched = []
    callbacks = [
        *([budget_callback(budget)] if budget else []),  # first: the others read its total
        progress.callback(),
        Cadence(t, plan, has_eval),
        *method_callbacks(method, plan),
        *(
            [SampleAnswers(reporter, model, tokenizer, task, watched, t["sample_every"], plan)]
            if watched
            else []
        ),
        *([early_stopping(t)] if t["early_stopping_patience"] and has_eval else []),
        *([tensorboard(log_dir or work_dir / "tensorboard")] if "tensorboard" in report_to else []),
    ]
    unbounded = budget is not None and budget_only(t)
    arguments = trainer_arguments(t, work_dir, plan, has_eval, report_to, unbounded)
    common = {
        "model": model,
        "train_dataset": train_data,
        "eval_dataset": eval_data,
        "processing_class": tokenizer,
        "callbacks": callbacks,
        "optimizers": (loraplus_optimizer(model, t) if t["loraplus_lr_ratio"] else None, None),
    }
    trainer = _trainer(task, method, t, world, arguments, common)
    trainer.plan = plan
    if len(trainer.train_dataset) == 0:  # TRL drops rows whose answer was truncated away
        raise DataError(
            f"No training row has an answer left within max length {t['max_length']} tokens "
            "(the prompt fills it), so there is nothing to learn: raise training.max_length."
        )
    if t["packing"] and total_steps is None:  # packed rows are fewer: count again
        planned = steps_planned(t, len(trainer.train_dataset), world)
        plan.total = planned
        trainer.args.max_steps = UNBOUNDED_STEPS if unbounded else planned
    if budget is not None:
        budget.cap = UNBOUNDED_STEPS if unbounded else planned
    return Run(
        trainer, tokenizer, method, labels, initial, progress, budget, trainable, total, task
    )


def _datasets(t: dict, task: str, tokenizer, labels, train_rows: list, eval_rows: list):
    """The train and eval Datasets (eval None when no rows are held out)."""
    from datasets import Dataset

    if task == CAUSAL_LM:
        cut = t["padding_free"] and not t["packing"]
        examples = lambda part: to_examples(part, tokenizer, t["max_length"], cut)  # noqa: E731
    else:
        examples = lambda part: encoder_examples(part, tokenizer, t["max_length"], labels)  # noqa: E731
    train_data = Dataset.from_list(examples(train_rows))
    return train_data, Dataset.from_list(examples(eval_rows)) if eval_rows else None


def _adapted(model, method, spec: JobSpec, context, start_from: Path | None, work_dir: Path):
    """(the model ready to train with the method, PiSSA / OLoRA's starting adapter or None):
    a new adapter, or start_from's trained further."""
    from transformers import set_seed

    from finetune.methods import apply_method

    set_seed(spec.training["seed"])  # the method's new weights start the same for the same seed
    if start_from is not None and method.writes == "adapter":
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(start_from), is_trainable=True)
        return model, None  # it was saved converted already
    model = apply_method(model, method, spec.method_params, context)
    if start_from is not None and method.writes == "tensors":
        _load_selected(model, start_from)
    return model, keep_initial_adapter(model, spec.method_params, work_dir)


def _trainer(task: str, method, t: dict, world: int, arguments: dict, common: dict):
    """TRL's SFTTrainer for a causal LM, transformers' Trainer for an encoder's task."""
    if task == CAUSAL_LM:
        from trl import SFTConfig, SFTTrainer

        # (a prompt method's virtual tokens come first; recomputed layers would fill the
        # prefix's cache twice; data-parallel forwards must go through the DDP wrapper)
        shares = t["share_prefix"] and not method.prompt_learning and world == 1
        shares = shares and not t["activation_checkpointing"]
        return _trainer_class(SFTTrainer, method, shares)(
            args=SFTConfig(**arguments, **sft_arguments(t)), **common
        )
    from transformers import Trainer, TrainingArguments

    return _trainer_class(Trainer, method, False)(
        args=TrainingArguments(**arguments),
        data_collator=collator(task, common["processing_class"]),
        **common,
    )


LABELS_FILE = "labels.json"  # a classifier's labels, in the order of its outputs


SELECTED_WEIGHTS = "selected_weights.safetensors"  # what a selective run trained, by name


def save_trained(
    model, tokenizer, method, params: dict, out_dir: Path, initial: Path | None = None
) -> None:
    """What the run changed, in the ecosystem's own files: a PEFT adapter folder; for full
    fine-tuning a model folder (from_pretrained loads it); for selective, the trained tensors
    under their names in the base model (load_state_dict(..., strict=False) applies them)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if method.writes == "model":
        model.save_pretrained(out_dir, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(out_dir)
    elif method.writes == "tensors":
        from safetensors.torch import save_file

        tensors = {
            n: p.detach().contiguous().cpu() for n, p in model.named_parameters() if p.requires_grad
        }
        save_file(tensors, str(out_dir / SELECTED_WEIGHTS))
        (out_dir / "selection.json").write_text(
            json.dumps({"method": method.id, **params, "tensors": sorted(tensors)}, indent=1),
            encoding="utf-8",
        )
    else:
        model.save_pretrained(
            out_dir,
            safe_serialization=True,
            path_initial_model_for_weight_conversion=str(initial) if initial else None,
        )


def keep_initial_adapter(model, params: dict, work_dir: Path) -> Path | None:
    """PiSSA / OLoRA rewrite the base's weights: keep the starting adapter, so the saved one
    can be converted to a plain LoRA on the original base (PEFT's recipe)."""
    if params.get("init_lora_weights") not in CONVERTED_INITS:
        return None
    initial = work_dir / "initial-adapter"
    model.peft_config["default"].init_lora_weights = True
    model.save_pretrained(initial)
    return initial


class _FittedSchedule:
    """The learning-rate schedule follows trainer.plan: its total steps may be refitted to a
    time budget while the run goes (finetune.schedule)."""

    plan: Plan

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        if self.lr_scheduler is None:
            self.lr_scheduler = fitted_scheduler(optimizer or self.optimizer, self.plan)
        return self.lr_scheduler


class _OrthogonalPenalty:
    """AdaLoRA adds its orthogonality penalty to outputs.loss; TRL's SFT loss is computed from
    the log-probabilities and never reads it, so it is added here, as PEFT computes it."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        result = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        loss, outputs = result if return_outputs else (result, None)
        loss = loss + _orthogonal_penalty(model)
        return (loss, outputs) if return_outputs else loss


def _trainer_class(base, method, share_prefix: bool):
    """The trainer: transformers' or TRL's, with the fitted schedule, and the loss of batches
    that share a prefix (SFT) and AdaLoRA's penalty where they apply."""
    mixins = [_FittedSchedule]
    if method.rank_budget:
        mixins.insert(0, _OrthogonalPenalty)
    if share_prefix:
        mixins.append(SharedPrefixLoss)
    return type(f"AdapterLab{base.__name__}", (*mixins, base), {})


def _orthogonal_penalty(model):
    """orth_reg_weight x the mean Frobenius distance of A A^T and B^T B from the identity."""
    import torch

    adalora = model.base_model
    name = adalora.trainable_adapter_name
    terms = []
    for key, p in adalora.model.named_parameters():
        if ("lora_A" in key or "lora_B" in key) and name in key and p.numel():
            cov = p @ p.T if "lora_A" in key else p.T @ p
            eye = torch.eye(cov.shape[0], device=cov.device, dtype=cov.dtype)
            terms.append(torch.norm(cov - eye, p="fro"))
    weight = adalora.peft_config[name].orth_reg_weight
    return weight * torch.stack(terms).mean() if terms else 0.0


def _load_selected(model, folder: Path) -> None:
    """A selective run's trained tensors, put back to train further."""
    from safetensors.torch import load_file

    weights = load_file(folder / SELECTED_WEIGHTS)
    missing = set(weights) - set(dict(model.named_parameters()))
    if missing:
        raise DataError(f"The adapter's weights {sorted(missing)[:3]} are not in this model.")
    model.load_state_dict(weights, strict=False)
