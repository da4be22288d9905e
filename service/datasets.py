"""Stored datasets: read one, preview it as training sees it, list and delete them (uploading
them is service.uploads). Plain values in, plain data out, a UserError for the user."""

from __future__ import annotations

import functools
import json
import statistics
from pathlib import Path
from typing import Any

from config import Settings
from errors import UserError
from finetune.data import sample_rows
from finetune.models import resolve_model
from finetune.spec import TRAINING_FIELDS
from storage.store import ROWS_FILE, Dataset, InUse, Store

PREVIEW_EXAMPLES = 3
BAD_ROWS_KEPT = 1000  # problems returned and stored per upload; the count is always exact
DEFAULT_MAX_LENGTH = next(f.default for f in TRAINING_FIELDS if f.name == "max_length")


def get_dataset(settings: Settings, dataset_id: str) -> dict[str, Any]:
    """One dataset, as /list_datasets lists it (NotFound for an unknown id)."""
    return dataset_info(Store(settings.data_dir).get_dataset(dataset_id))


def dataset_info(dataset: Dataset) -> dict[str, Any]:
    return {
        "id": dataset.id,
        "name": dataset.name,
        "format": dataset.format,
        "rows": dataset.rows,
        "eval_rows": dataset.eval_rows,
        "dropped_rows": dataset.dropped_rows,
        "columns": dataset.columns,
        "mapping": dataset.mapping,
        "sources": dataset.sources,
        "stats": dataset.stats,
        "warnings": dataset.warnings,
        "created_at": dataset.created_at,
    }


def tokenizer_of(settings: Settings, base_model: str):
    """The base model's tokenizer (cached), or a plain message saying why it cannot load."""
    from finetune.preview import load_tokenizer

    path = resolve_model(base_model, settings.models_dir)
    try:
        return load_tokenizer(str(path), settings.allow_remote_code)
    except (OSError, ValueError) as exc:
        raise UserError(f"The tokenizer of {base_model} cannot be loaded: {exc}") from None


def stored_problems(store: Store, dataset_id: str) -> list[dict]:
    path = store.problems_path(dataset_id)
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else []


def preview_dataset(
    settings: Settings,
    dataset_id: str,
    base_model: str = "",
    max_length: int | None = None,
    examples: int = PREVIEW_EXAMPLES,
) -> dict[str, Any]:
    """The first examples as training sees them with base_model's tokenizer, and the stats.

    Without a base model: the normalized rows and the model-free stats only.
    """
    from finetune.preview import STATS_SAMPLE

    store = Store(settings.data_dir)
    dataset = store.get_dataset(dataset_id)
    folder = store.dataset_dir(dataset.id)
    first, sample, total = sample_rows(folder / ROWS_FILE, examples, STATS_SAMPLE)
    out: dict[str, Any] = {
        "dataset": dataset_info(dataset),
        "rows": first,
        "bad_rows": stored_problems(store, dataset.id)[:100],
    }
    if not base_model:
        return out
    max_length = DEFAULT_MAX_LENGTH if max_length in (None, 0) else int(max_length)
    if not 16 <= max_length <= 131072:
        raise UserError("max_length: must be from 16 to 131072.")
    from finetune.preview import render, token_stats

    tokenizer = tokenizer_of(settings, base_model)
    if tokenizer.chat_template is None and any("messages" in r for r in first):
        raise UserError(
            f"{base_model} has no chat template: it is not a chat model. Seq2seq and "
            "classification models train on each row's input and answer as they are; pick a "
            "chat model to see the template applied."
        )
    out["examples"] = [ex for row in first for ex in render(tokenizer, row, max_length)]
    stats = token_stats(tokenizer, sample, max_length, total)
    history = store.throughput(base_model)
    tps = statistics.median(history) if history else None
    stats["tokens_per_s_history"] = round(tps, 1) if tps else None
    stats["seconds_per_epoch"] = round(stats["tokens_per_epoch"] / tps, 1) if tps else None
    out["token_stats"] = stats
    return out


@functools.lru_cache(maxsize=64)
def longest_row(data_dir: Path, dataset_id: str, model_path: str, trust: bool) -> int:
    """The longest row of a dataset in a model's tokens (from a sample of a big one); datasets
    never change, so this is cached."""
    from finetune.preview import STATS_SAMPLE, load_tokenizer, token_lengths

    store = Store(data_dir)
    _, sample, _ = sample_rows(store.rows_path(dataset_id), 0, STATS_SAMPLE)
    return max(token_lengths(load_tokenizer(model_path, trust), sample), default=0)


def list_datasets(settings: Settings) -> list[dict[str, Any]]:
    return [dataset_info(d) for d in Store(settings.data_dir).list_datasets()]


def delete_dataset(settings: Settings, dataset_id: str) -> dict[str, Any]:
    """Delete a dataset no queued, running or interrupted (resumable) job needs."""
    store = Store(settings.data_dir)
    dataset = store.get_dataset(dataset_id)
    jobs = store.jobs_needing(dataset.id)
    if jobs:
        raise InUse(
            f"Dataset '{dataset.name}' is needed by {len(jobs)} job(s) that may still run "
            f"({', '.join(jobs[:3])}); cancel or finish them first."
        )
    store.delete_dataset(dataset.id)
    return {"deleted": dataset.id}
