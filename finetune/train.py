"""One training run: rows + spec in, a PEFT adapter folder out. Reads like a TRL script."""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

from finetune.data import MAX_LABELS, DataError
from finetune.methods import CONVERTED_INITS, get_method
from finetune.prefix import SharedPrefixLoss
from finetune.schedule import Budget, Plan, budget_callback, fitted_scheduler
from finetune.spec import JobSpec
from finetune.tasks import CAUSAL_LM, SEQ_2_SEQ_LM, SEQ_CLS, auto_class, label_kwargs, model_task
from finetune.watch import every_steps, sample_rows

EVAL_ROWS_CAP = 32  # periodic eval loss on at most this many held-out rows (keeps CPU runs short)


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


@dataclass(frozen=True)
class TrainResult:
    step: int
    total_steps: int
    stopped: bool  # True when should_stop() ended the run early
    trainable_params: int
    total_params: int
    dtype: str  # the base model's compute dtype during training
    ended_by_time: bool = False  # the time budget ran out before the fitted last step


def to_prompt_completion(row: dict) -> dict:
    """Chat turns -> TRL's conversational prompt/completion: loss on the last answer only."""
    messages = row["messages"]
    return {"prompt": messages[:-1], "completion": messages[-1:]}


def to_examples(rows: list[dict], tokenizer, max_length: int, cut: bool = False) -> list:
    """Rows as TRL dataset entries, tokenized as finetune.preview defines a training example
    (its tests check it against TRL's own tokenization): chat rows with labels on the last
    answer only (TRL truncates them to max_length, keeping the start), text rows in max-length
    chunks so that no document is cut short. cut: chat rows cut to max_length here (padding-free
    batches, which TRL leaves uncut); a row whose prompt fills max_length is left out, as TRL
    does."""
    from finetune.preview import encode_rows

    out: list[dict] = []
    for row, encoded in zip(rows, encode_rows(tokenizer, rows, max_length), strict=True):
        if "text" in row:
            out.extend({"input_ids": ex.input_ids} for ex in encoded)
            continue
        (ex,) = encoded
        if cut and ex.dropped:
            continue
        ids = ex.input_ids[:max_length] if cut else ex.input_ids
        out.append({"input_ids": ids, "labels": [-100] * ex.loss_from + ids[ex.loss_from :]})
    return out


def split_rows(rows: list[dict], eval_fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """A seeded shuffle-split; tiny sets get no eval rows."""
    import random

    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    n_eval = int(len(rows) * eval_fraction)  # eval_fraction <= 0.5 leaves most rows to train
    return [rows[i] for i in order[n_eval:]], [rows[i] for i in order[:n_eval]]


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


def quarter(total: int) -> int:
    """Eval every quarter of a run: the last one falls on the last step or just after it (where
    the run's final eval is)."""
    return max(1, math.ceil(total / 4))


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


def device_settings() -> dict:
    import torch

    if torch.cuda.is_available():
        return {"bf16": torch.cuda.is_bf16_supported(), "use_cpu": False}
    return {"bf16": False, "use_cpu": True}


def load_model(
    model_path: str,
    trust_remote_code: bool = False,
    quantization: dict | None = None,
    labels: list[str] | None = None,
    dtype=None,
):
    """The model (with the head its task needs; labels size a classifier) and tokenizer; with
    quantization (bitsandbytes kwargs), the base in 4 / 8 bits made ready for k-bit training.
    dtype: a torch dtype; by default bfloat16 where the GPU has it, else float32."""
    import torch
    from transformers import AutoConfig, AutoTokenizer, BitsAndBytesConfig

    if dtype is None:
        dtype = torch.bfloat16 if device_settings()["bf16"] else torch.float32
    tokenizer = AutoTokenizer.from_pretrained(model_path, trust_remote_code=trust_remote_code)
    task = model_task(AutoConfig.from_pretrained(model_path, trust_remote_code=trust_remote_code))
    extra = {}
    if quantization:
        # A new classification head trains in full precision; it is not quantized.
        skip = {"llm_int8_skip_modules": ["classifier", "score"]} if task == SEQ_CLS else {}
        config = BitsAndBytesConfig(**quantization, **skip, bnb_4bit_compute_dtype=dtype)
        device = "cuda:0" if torch.cuda.is_available() else "cpu"
        extra = {"quantization_config": config, "device_map": {"": device}}
    model = auto_class(task).from_pretrained(
        model_path,
        dtype=dtype,
        use_safetensors=True,
        trust_remote_code=trust_remote_code,
        **label_kwargs(labels),
        **extra,
    )
    if quantization:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    return model, tokenizer


@dataclass
class Run:
    """A training run set up and ready to start: trainer.train() runs it."""

    trainer: object
    tokenizer: object
    method: object
    labels: list[str] | None
    initial: Path | None  # PiSSA / OLoRA's starting adapter, to save the result converted
    progress: _Progress
    budget: Budget | None
    trainable: int
    total: int


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
    from datasets import Dataset
    from transformers import AutoConfig, set_seed

    from finetune.methods import Context, apply_method, trainable_counts

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
    if task == CAUSAL_LM:
        cut = t["padding_free"] and not t["packing"]
        examples = lambda part: to_examples(part, tokenizer, t["max_length"], cut)  # noqa: E731
    else:
        examples = lambda part: encoder_examples(part, tokenizer, t["max_length"], labels)  # noqa: E731
    train_data = Dataset.from_list(examples(train_rows))
    eval_data = Dataset.from_list(examples(eval_rows)) if eval_rows else None
    world = _world_size()
    planned = total_steps or steps_planned(t, len(train_data), world)
    context = Context(model_path=model_path, total_steps=planned, task_type=task)
    set_seed(t["seed"])  # the method's new weights start the same for the same seed
    if start_from is not None and method.writes == "adapter":
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(start_from), is_trainable=True)
        initial = None  # it was saved converted already
    else:
        model = apply_method(model, method, spec.method_params, context)
        if start_from is not None and method.writes == "tensors":
            _load_selected(model, start_from)
        initial = keep_initial_adapter(model, spec.method_params, work_dir)
    trainable, total = trainable_counts(model)

    # The step count and the schedule: fixed by epochs or max_steps, or fitted to a time budget
    # (a resumed run keeps the total it was fitted to: total_steps).
    plan = Plan(t["lr_scheduler_type"], t["warmup_ratio"], planned)
    budget = None
    if t["max_minutes"] and total_steps is None:
        budget = Budget(t["max_minutes"] * 60, plan, cap=planned, on_fit=reporter.planned)
    has_eval = eval_data is not None
    progress = _Progress(reporter, trainable, total, plan)
    watched = sample_rows(eval_rows, train_rows, t["sample_prompts"])
    if quantization and device_settings()["use_cpu"]:
        # bitsandbytes repacks 4-bit weights for CPU inference on the first eval-mode forward,
        # for good: the training steps after it then fail. No sample answers there.
        watched = []
    callbacks = [
        *([budget_callback(budget)] if budget else []),  # first: the others read its total
        progress.callback(),
        _Cadence(t, plan, has_eval),
        *_method_callbacks(method, plan),
        *(
            [_SampleAnswers(reporter, model, tokenizer, task, watched, t["sample_every"], plan)]
            if watched
            else []
        ),
        *([_early_stopping(t)] if t["early_stopping_patience"] and has_eval else []),
        *(
            [_tensorboard(log_dir or work_dir / "tensorboard")]
            if "tensorboard" in report_to
            else []
        ),
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
    if task == CAUSAL_LM:
        from trl import SFTConfig, SFTTrainer

        # (a prompt method's virtual tokens come first; recomputed layers would fill the
        # prefix's cache twice; data-parallel forwards must go through the DDP wrapper)
        shares = t["share_prefix"] and not method.prompt_learning and world == 1
        shares = shares and not t["activation_checkpointing"]
        trainer = _trainer_class(SFTTrainer, method, shares)(
            args=SFTConfig(**arguments, **sft_arguments(t)), **common
        )
    else:
        from transformers import Trainer, TrainingArguments

        trainer = _trainer_class(Trainer, method, False)(
            args=TrainingArguments(**arguments), data_collator=_collator(task, tokenizer), **common
        )
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
    return Run(trainer, tokenizer, method, labels, initial, progress, budget, trainable, total)


LABELS_FILE = "labels.json"  # a classifier's labels, in the order of its outputs


def class_labels(rows: list[dict]) -> list[str]:
    """The labels of classification rows (their answers), sorted: the head's output order."""
    labels = sorted({r["messages"][-1]["content"] for r in rows if "messages" in r})
    if not labels or len(labels) > MAX_LABELS or any("text" in r for r in rows):
        raise DataError(
            "A classification model (an encoder) trains on a text + label dataset; this one has "
            f"{len(labels)} different answers. Upload it with the classification schema."
        )
    return labels


def encoder_examples(
    rows: list[dict], tokenizer, max_length: int, labels: list[str] | None
) -> list[dict]:
    """Chat rows as an encoder sees them: the user's text in; the answer as a label id
    (classification) or as target tokens (seq2seq)."""
    out = []
    for row in rows:
        if "messages" not in row:
            raise DataError("A seq2seq or classification model trains on input -> target rows.")
        text = "\n\n".join(m["content"] for m in row["messages"][:-1] if m["role"] == "user")
        answer = row["messages"][-1]["content"]
        example = dict(tokenizer(text, truncation=True, max_length=max_length))
        if labels is not None:
            example["labels"] = labels.index(answer)
        else:
            target = tokenizer(text_target=answer, truncation=True, max_length=max_length)
            ids = list(target["input_ids"])
            if tokenizer.eos_token_id is not None and (
                not ids or ids[-1] != tokenizer.eos_token_id
            ):
                ids = [*ids[: max_length - 1], tokenizer.eos_token_id]  # the target's end
            example["labels"] = ids
        out.append(example)
    return out


def _collator(task: str, tokenizer):
    from transformers import DataCollatorForSeq2Seq, DataCollatorWithPadding

    if task == SEQ_2_SEQ_LM:
        return DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100)
    return DataCollatorWithPadding(tokenizer)


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


def _method_callbacks(method, plan: Plan) -> list:
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


class _Progress:
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
                if _agreed(progress.reporter.should_stop()):
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
        values = {"epoch": state.epoch, "memory_mb": _memory_mb()}
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


def _agreed(stop: bool) -> bool:
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


class _Cadence:
    """Eval every quarter of the run (or eval_steps) as the total moves, and once more at the
    last step: every run ends with an eval loss (auto settings choose by it). A TrainerCallback
    made in __new__, as _SampleAnswers."""

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


def _early_stopping(t: dict):
    from transformers import EarlyStoppingCallback

    return EarlyStoppingCallback(early_stopping_patience=t["early_stopping_patience"])


class _SampleAnswers:
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


def _tensorboard(log_dir: Path):
    """TensorBoard event files (loss, eval loss, learning rate) in the job's folder."""
    from transformers.integrations import TensorBoardCallback

    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        from tensorboardX import SummaryWriter
    return TensorBoardCallback(tb_writer=SummaryWriter(log_dir=str(log_dir)))


def _memory_mb() -> float:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # the peak, in KiB on Linux


def write_model_card(
    out_dir: Path,
    spec: JobSpec,
    result: TrainResult,
    base_path: str,
    dataset_label: str,
    final: dict[str, float],
    system_prompt: str,
) -> None:
    """README.md (a Hub-style model card) and recipe.json (the spec that made it)."""
    writes = get_method(spec.method).writes
    metrics = "\n".join(f"- {k}: {v:.4g}" for k, v in final.items()) or "- (none recorded)"
    params = "\n".join(f"- {k}: {v}" for k, v in spec.method_params.items())
    training = "\n".join(f"- {k}: {v}" for k, v in spec.training.items() if v is not None)
    pct = 100 * result.trainable_params / max(result.total_params, 1)
    base_label = spec.base_model
    system, system_note = "", ""
    if system_prompt:
        system = f'{{"role": "system", "content": {json.dumps(system_prompt)}}}, '
        system_note = f" Its training prompts had the system message {json.dumps(system_prompt)}."
    (out_dir / "README.md").write_text(
        f"""---
base_model: {base_label}
library_name: {"peft" if writes == "adapter" else "transformers"}
tags: [adapterlab, {spec.method}]
---
# {spec.name or "AdapterLab adapter"}

A {spec.method} adapter for `{base_label}`, trained with AdapterLab on {dataset_label}.

Trainable parameters: {result.trainable_params:,} of {result.total_params:,} ({pct:.3f}%).
Steps: {result.step} of {result.total_steps}{" (stopped early)" if result.stopped else ""}.

## Method parameters
{params}

## Training
{training}

## Final metrics
{metrics}

## Load it
Trained on the base model at `{base_path}` in {result.dtype}; load it the same way to get the
answers AdapterLab's playground gives.{system_note}
```python
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
{_loader(writes, base_path, result.dtype)}
messages = [{system}{{"role": "user", "content": "..."}}]
inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=True,
                                       return_tensors="pt")
print(tokenizer.decode(model.generate(**inputs, max_new_tokens=64)[0]))
```
""",
        encoding="utf-8",
    )
    (out_dir / "recipe.json").write_text(spec.to_json() + "\n", encoding="utf-8")


def _loader(writes: str, base_path: str, dtype: str) -> str:
    """The lines of the model card's example that load what the method wrote."""
    if writes == "model":
        return (
            'tokenizer = AutoTokenizer.from_pretrained("path/to/this/folder")\n'
            "model = AutoModelForCausalLM.from_pretrained(\n"
            f'    "path/to/this/folder", dtype=torch.{dtype})'
        )
    base = (
        f'tokenizer = AutoTokenizer.from_pretrained("{base_path}")\n'
        f'model = AutoModelForCausalLM.from_pretrained("{base_path}", dtype=torch.{dtype})\n'
    )
    if writes == "tensors":
        return (
            "from safetensors.torch import load_file\n" + base + "model.load_state_dict("
            f'load_file("path/to/this/folder/{SELECTED_WEIGHTS}"), strict=False)'
        )
    return (
        "from peft import PeftModel\n"
        + base
        + ('model = PeftModel.from_pretrained(model, "path/to/this/folder")')
    )


def final_metrics(history: list[dict]) -> dict[str, float]:
    final: dict[str, float] = {}
    for entry in history:
        for key in ("loss", "eval_loss"):
            if entry.get(key) is not None:
                final[key] = entry[key]
    return final
