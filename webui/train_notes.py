"""What the Train tab says under the form: trainable parameters, memory, the data, how long the
run goes, and what a settings search will queue."""

from __future__ import annotations

import service
from config import Settings
from errors import UserError
from finetune.search import trials
from finetune.spec import parse_spec
from finetune.tasks import TASKS


def counts_text(settings: Settings, spec: dict, est: dict) -> str:
    """The form's estimate (service.estimate's answer for `spec`) in words."""
    return (
        f"Task: {TASKS[est['task']]}.\n\n"
        f"**Trainable parameters: {est['trainable_params']:,}** of {est['total_params']:,} "
        f"(**{est['trainable_percent']:.3f}%**); what it writes: "
        f"**{_megabytes(est['adapter_bytes'])}**"
        + memory_note(est["memory"])
        + dataset_note(settings, spec)
        + plan_note(spec["training"])
        + search_note(spec)
    )


def search_note(spec: dict) -> str:
    """What a settings search will queue."""
    search = spec.get("search")
    if not search:
        return ""
    parsed = parse_spec(spec)
    count = len(trials(parsed.search, parsed))
    if search["mode"] == "auto":
        share = parsed.search["share"]
        return (
            f"\n\nAuto settings: **{count} trials** share {share:.0%} of that; the rest trains "
            "with the one whose eval loss ends lowest."
        )
    return f"\n\n{search['mode'].title()} search: **{count} trials**, each for all of that."


def plan_note(training: dict) -> str:
    """How long the run goes and the batch each optimizer step sees."""
    minutes, epochs, steps = (training.get(k) for k in ("max_minutes", "epochs", "max_steps"))
    ends = [f"{minutes:g} minutes" if minutes else ""]
    if steps:  # max steps override epochs
        ends.append(f"{steps:,} steps")
    elif epochs:
        ends.append(f"{epochs:g} epoch{'s' if epochs != 1 else ''}")
    ends = [e for e in ends if e] or ["1 epoch"]
    until = ends[0] if len(ends) == 1 else f"{' or '.join(ends)}, whichever comes first"
    batch = training.get("batch_size") or 0
    accumulation = training.get("gradient_accumulation_steps") or 1
    gpus = training.get("gpus") or 1
    effective = f"{batch} x {accumulation} accumulated" if accumulation > 1 else f"{batch}"
    if gpus > 1:
        effective += f" x {gpus} GPUs"
    schedule = training.get("lr_scheduler_type") or "linear"
    return (
        f"\n\nRuns for **{until}**; the {schedule.replace('_', ' ')} learning-rate schedule "
        f"ends with it. Effective batch: **{batch * accumulation * gpus}** ({effective})."
    )


def memory_note(memory: dict) -> str:
    """The estimate against the device's free memory; what to change when it will not fit."""
    gib = 2**30
    parts = ", ".join(
        f"{name} {memory[name] / gib:.2f}"
        for name in ("weights", "gradients", "optimizer", "activations", "logits", "runtime")
    )
    device = memory["device"]
    line = (
        f"\n\nMemory: about **{memory['total'] / gib:.1f} GiB** ({parts} GiB) of "
        f"{device['available_bytes'] / gib:.1f} GiB free on {device['name']}"
    )
    if memory["fits"]:
        return line + "."
    return line + ": **it will not fit.** Try " + "; ".join(memory["advice"]) + "."


def _megabytes(n: int) -> str:
    return f"{n / 2**20:,.1f} MB" if n >= 2**20 else f"{n / 2**10:,.0f} KB"


def dataset_note(settings: Settings, spec: dict) -> str:
    """Which rows the job will train and evaluate on."""
    try:
        dataset = service.get_dataset(settings, spec["dataset_id"])
    except UserError:
        return ""
    rows, eval_rows = dataset["rows"], dataset["eval_rows"]
    if eval_rows:
        return (
            f"\n\nDataset: {rows:,} training rows and its own eval split of "
            f"{eval_rows:,} rows (the eval fraction is not used)."
        )
    held = int(rows * (spec["training"].get("eval_fraction") or 0))
    return f"\n\nDataset: {rows:,} rows; the eval fraction holds out {held:,} of them."
