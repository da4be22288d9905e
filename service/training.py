"""Training: check a job spec (counts, memory, the data's fit), queue it, or queue a search."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, replace
from typing import Any

from config import Settings
from finetune.counts import count_parameters, fitted_params
from finetune.fields import SpecError
from finetune.memory import current_device, estimate_memory
from finetune.methods import get_method
from finetune.model_card import RECIPE
from finetune.models import load_config, resolve_model
from finetune.spec import JobSpec, check_training, parse_spec
from finetune.tasks import CAUSAL_LM, SEQ_2_SEQ_LM, SEQ_CLS, model_task
from jobs.queue import submit_job
from jobs.sweep import start_sweep
from storage.store import Store


def estimate(settings: Settings, spec: Any) -> dict[str, Any]:
    """Trainable and total parameters for a spec, exact, without loading weights."""
    parsed = parse_spec(spec)
    if parsed.from_adapter:
        parsed = continued(settings, parsed)
    model = resolve_model(parsed.base_model, settings.models_dir)
    config = load_config(model, settings.allow_remote_code)
    dataset = _dataset_or_none(settings, parsed.dataset_id)
    labels = dataset.stats.get("labels") if dataset else None
    counts = count_parameters(
        model, parsed.method, parsed.method_params, settings.allow_remote_code, labels
    )
    memory = estimate_memory(
        config,
        counts.trainable,
        counts.total,
        get_method(parsed.method),
        parsed.method_params,
        parsed.training,
        current_device(),
        _longest_row(settings, parsed.dataset_id, model),
    )
    return {
        "task": model_task(config),
        "trainable_params": counts.trainable,
        "total_params": counts.total,
        "trainable_percent": round(counts.percent, 4),
        "adapter_bytes": counts.size_bytes,
        "memory": memory.to_dict(),
    }


def _dataset_or_none(settings: Settings, dataset_id: str):
    try:
        return Store(settings.data_dir).get_dataset(dataset_id)
    except LookupError:
        return None


def check_task_fit(task: str, dataset_format: str) -> None:
    """The dataset must be what the model's task trains on."""
    if task == SEQ_CLS and dataset_format != "classification":
        raise SpecError(
            f"dataset_id: an encoder model classifies text, so it needs a classification "
            f"dataset (text + label); this one is {dataset_format}. Pick a decoder model to "
            "train on it, or a classification dataset."
        )
    if task == SEQ_2_SEQ_LM and dataset_format == "text":
        raise SpecError(
            "dataset_id: a seq2seq model maps an input to a target; plain text has no target. "
            "Pick a decoder model for continued pretraining."
        )


def list_methods() -> list[dict[str, Any]]:
    """The method registry: ids, families, descriptions, fields with defaults and ranges."""
    from finetune.methods import METHODS

    return [m.describe() for m in METHODS.values()]


def _longest_row(settings: Settings, dataset_id: str, model: str) -> int | None:
    """None when the dataset is not known yet (the form before a dataset is chosen)."""
    from service.datasets import longest_row

    try:
        dataset = Store(settings.data_dir).get_dataset(dataset_id)
        return longest_row(settings.data_dir, dataset.id, str(model), settings.allow_remote_code)
    except Exception:  # a template error must not block the counts or Start
        return None  # the estimate then assumes rows of max_length


def start_job(settings: Settings, spec: Any) -> dict[str, Any]:
    """Validate a spec (fields, dataset, model, target modules) and queue the job."""
    parsed = parse_spec(spec)
    store = Store(settings.data_dir)
    try:
        dataset = store.get_dataset(parsed.dataset_id)
    except LookupError:
        raise SpecError(f"dataset_id: no dataset {parsed.dataset_id!r}; upload one first") from None
    if parsed.from_adapter:
        parsed = continued(settings, parsed)
        spec = asdict(parsed)
    counts = estimate(settings, spec)
    check_task_fit(counts["task"], dataset.format)
    check_training_fit(counts["task"], parsed, dataset)
    model = resolve_model(parsed.base_model, settings.models_dir)
    fitted = fitted_params(model, parsed.method, parsed.method_params, settings.allow_remote_code)
    parsed = replace(parsed, method_params=fitted)  # the recipe says what really trains
    when = time.strftime("%b %d %H:%M")
    if parsed.search:
        name = parsed.name or f"{parsed.search['mode']} search · {parsed.method} on {dataset.name}"
        parent = start_sweep(settings, parsed, f"{name} · {when}"[:200], dataset.id)
        trials = [j.id for j in store.children(parent.id)]
        return {"job_id": parent.id, "status": parent.state.value, "trials": trials, **counts}
    name = parsed.name or f"{parsed.method} on {dataset.name} · {when}"
    job = submit_job(settings, name, asdict(parsed), dataset.id, gpus=parsed.training["gpus"])
    store.update_job(
        job.id,
        trainable_params=counts["trainable_params"],
        total_params=counts["total_params"],
        memory_estimate_mb=counts["memory"]["total"] / 2**20,
    )
    return {"job_id": job.id, "status": job.state.value, **counts}


def check_training_fit(task: str, spec: JobSpec, dataset) -> None:
    """Training options that need a causal LM, or held-out rows to measure."""
    t = spec.training
    if task != CAUSAL_LM:
        for name in ("packing", "padding_free"):
            if t[name]:
                raise SpecError(
                    f"training.{name}: packs the rows of a decoder (chat or text); this "
                    "model's task pads its batches. Turn it off."
                )
    if dataset.eval_rows or int(dataset.rows * t["eval_fraction"]) >= 1:
        return
    for name, what in (
        ("early_stopping_patience", "Early stopping watches"),
        ("load_best_model_at_end", "Keeping the best checkpoint compares"),
    ):
        if t[name]:
            raise SpecError(
                f"training.{name}: {what} the eval loss, and this run holds out no rows: "
                "raise training.eval_fraction (or upload an eval file)."
            )
    if spec.search:
        raise SpecError(
            "search: trials are compared by their eval loss, and this run holds out no rows: "
            "raise training.eval_fraction (or upload an eval file)."
        )


def continued(settings: Settings, spec: JobSpec) -> JobSpec:
    """A spec that trains an adapter further: its base, method and method settings are the
    adapter's own (what it was trained with); the data and training settings are the new ones."""
    store = Store(settings.data_dir)
    try:
        adapter = store.get_adapter(spec.from_adapter)
    except LookupError:
        raise SpecError(f"from_adapter: no adapter {spec.from_adapter!r}") from None
    if resolve_model(adapter.base_model, settings.models_dir) != resolve_model(
        spec.base_model, settings.models_dir
    ):
        raise SpecError(
            f"from_adapter: adapter {adapter.id} was trained on {adapter.base_model}, "
            f"not {spec.base_model}"
        )
    recipe_file = store.adapter_dir(adapter.id) / RECIPE
    if not recipe_file.is_file():
        raise SpecError(f"from_adapter: adapter {adapter.id} has no recipe to train further from")
    recipe = parse_spec(json.loads(recipe_file.read_text(encoding="utf-8")))
    training = dict(spec.training)
    if training["learning_rate"] is None:
        training["learning_rate"] = get_method(recipe.method).learning_rate
    check_training(get_method(recipe.method), training)
    return replace(
        spec,
        base_model=recipe.base_model,
        method=recipe.method,
        method_params=recipe.method_params,
        training=training,
    )
