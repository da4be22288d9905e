"""Evaluate the base and adapters as a queued job, read what it found, and set adapters side by
side on the PEFT trade-offs (size, memory, speed, quality)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from config import Settings
from errors import UserError
from finetune.data import group_columns, read_rows
from finetune.evaluate import check_metric, default_metric
from finetune.fields import Field, Request, SpecError
from finetune.models import load_config
from finetune.spec import TRAINING_FIELDS
from finetune.tasks import model_task
from jobs.model_jobs import eval_rows
from jobs.queue import submit_job
from service.playground import entries
from storage.store import EVAL_FILE, ROWS_FILE, JobKind, Store

MAX_EVAL_ROWS = 2000
_TRAINING_DEFAULTS = {f.name: f.default for f in TRAINING_FIELDS}


@dataclass(frozen=True)
class EvaluationOptions(Request):
    """How an evaluation scores: every field optional."""

    metric: str = "auto"
    split: str = "held_out"  # or "all": every row (a dataset uploaded to evaluate on)
    max_rows: int = 50
    max_new_tokens: int = 32
    eval_fraction: float | None = None  # None: as the adapters' training jobs split this dataset
    seed: int | None = None
    base_model: str | None = None
    name: str | None = None
    group_by: str | None = None  # a column kept beside the rows: scores per value of it too

    FIELDS = (
        Field("metric", "Metric", str, "auto", max_chars=40),
        Field("split", "Rows", str, "held_out", choices=("held_out", "all")),
        Field("max_rows", "Rows at most", int, 50, minimum=1, maximum=MAX_EVAL_ROWS),
        Field("max_new_tokens", "New tokens", int, 32, minimum=1, maximum=512),
        Field("eval_fraction", "Held-out fraction", float, None, optional=True),
        Field("seed", "Seed", int, None, minimum=0, maximum=2**31, optional=True),
        Field("base_model", "Base model", str, None, optional=True, max_chars=500),
        Field("name", "Name", str, None, optional=True, max_chars=200),
        Field("group_by", "Group by", str, None, optional=True, max_chars=200),
    )

    def check(self, where: str) -> None:
        if self.eval_fraction is not None and not 0 < self.eval_fraction <= 0.5:
            raise SpecError(f"{where}.eval_fraction: must be above 0 and at most 0.5")


def start_evaluation(
    settings: Settings,
    adapter_ids: list[str | None],
    dataset_id: str,
    options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Queue a job in which the base (None) and the adapters answer the dataset's held-out rows
    -> {job_id, status, metric, rows}."""
    opts = EvaluationOptions.parse(options, "options")
    store = Store(settings.data_dir)
    try:
        dataset = store.get_dataset(dataset_id)
    except LookupError:
        raise SpecError(f"dataset_id: no dataset {dataset_id!r}; upload one first") from None
    model, chosen = entries(settings, adapter_ids, opts.base_model)
    task = model_task(load_config(model, settings.allow_remote_code))
    metric = opts.metric
    if metric in ("", "auto"):
        metric = default_metric(task, dataset.format)
    check_metric(metric, task, dataset.format != "text")
    split, warnings = _split_of(store, [e[0] for e in chosen if e is not None], dataset.id)
    spec = {
        "base_model": opts.base_model or _base_of(store, chosen),
        "adapter_ids": [None if e is None else e[0] for e in chosen],
        "dataset_id": dataset.id,
        "metric": metric,
        "max_rows": opts.max_rows,
        "max_new_tokens": opts.max_new_tokens,
        "split": opts.split,
        "eval_fraction": split[0] if opts.eval_fraction is None else opts.eval_fraction,
        "seed": split[1] if opts.seed is None else opts.seed,
        "group_by": _group_by(store, dataset, opts.group_by),
    }
    rows = eval_rows(store, spec)
    if not rows:
        raise SpecError(
            f"Dataset {dataset.name} has no held-out rows to evaluate on (it is too small for "
            "an eval split): upload an eval file with it, or raise options.eval_fraction."
        )
    name = opts.name or f"evaluate {len(chosen)} on {dataset.name}"
    job = submit_job(settings, name[:200], spec, dataset.id, kind=JobKind.EVALUATE)
    if spec["split"] == "all" or _has_own_eval(store, dataset.id):
        warnings = [w for w in warnings if "held out" not in w]
    return {
        "job_id": job.id,
        "status": job.state.value,
        "metric": metric,
        "rows": len(rows),
        "warnings": warnings,
    }


def _group_by(store: Store, dataset, column) -> str | None:
    """A column of the dataset's rows to split the scores by (kept beside each row)."""
    if column in (None, ""):
        return None
    if not isinstance(column, str):
        raise SpecError(f"options.group_by: must be a column name, got {column!r}")
    columns = dataset.stats.get("group_columns")
    if columns is None:  # a dataset stored before rows kept their other columns
        folder = store.dataset_dir(dataset.id)
        columns = group_columns(read_rows(folder / ROWS_FILE) + read_rows(folder / EVAL_FILE))
    if column not in columns:
        known = f"its columns: {', '.join(columns)}" if columns else "it has no other columns"
        raise SpecError(
            f"options.group_by: dataset {dataset.name} has no column {column!r} ({known})"
        )
    return column


def _has_own_eval(store: Store, dataset_id: str) -> bool:
    path = store.eval_path(dataset_id)
    return path.is_file() and path.stat().st_size > 0


def _base_of(store: Store, chosen) -> str:
    first = next(e for e in chosen if e is not None)
    return store.get_adapter(first[0]).base_model


def _split_of(
    store: Store, adapter_ids: list[str], dataset_id: str
) -> tuple[tuple[float, int], list[str]]:
    """The held-out split of the adapters trained on this dataset (what they never saw), and
    warnings when there is none that they all share."""
    splits, unseen = {}, []
    for adapter_id in adapter_ids:
        adapter = store.get_adapter(adapter_id)
        if adapter.job_id is None:
            continue
        job = store.get_job(adapter.job_id)
        if job.dataset_id != dataset_id:
            continue
        training = job.spec.get("training", {})
        if not training.get("eval_fraction"):
            unseen.append(adapter.name)
        else:
            splits[adapter.name] = (training["eval_fraction"], training["seed"])
    warnings = []
    if unseen:
        warnings.append(
            f"{', '.join(unseen)} held out no rows of this dataset (eval_fraction 0): the rows "
            "scored may be rows it trained on. Evaluate on a dataset it did not see."
        )
    if len(set(splits.values())) > 1:
        warnings.append(
            "The adapters held out different rows of this dataset; the first one's held-out "
            "rows are scored, which the others may have trained on."
        )
    default = (_TRAINING_DEFAULTS["eval_fraction"] or 0.1, _TRAINING_DEFAULTS["seed"])
    return next(iter(splits.values()), default), warnings


def evaluation_results(settings: Settings, job_id: str) -> dict[str, Any]:
    """An evaluation job's state, and once it has them its summary and per-example answers."""
    job = Store(settings.data_dir).get_job(job_id)
    if job.kind != JobKind.EVALUATE:
        raise UserError(f"Job {job_id} is a {job.kind} job, not an evaluation.")
    result = job.result or {}
    return {
        "job_id": job.id,
        "status": job.state.value,
        "step": job.step,
        "total_steps": job.total_steps,
        "metric": job.spec["metric"],
        "group_by": job.spec.get("group_by"),
        "summary": result.get("summary", []),
        "examples": result.get("examples", []),
        "error": job.error,
    }


def tradeoffs(settings: Settings, adapter_ids: list[str]) -> list[dict[str, Any]]:
    """One row per adapter: what it costs (parameters, size, memory, time) and what it gives
    (its newest evaluation, and its answering time against the base in that evaluation)."""
    store = Store(settings.data_dir)
    adapters = [store.get_adapter(a) for a in adapter_ids]
    scores = store.latest_evaluations([a.id for a in adapters])
    rows = []
    for adapter in adapters:
        row: dict[str, Any] = {
            "adapter_id": adapter.id,
            "name": adapter.name,
            "method": adapter.method,
            "origin": adapter.origin,
            "trainable_params": adapter.trainable_params,
            "trainable_percent": _percent(adapter.trainable_params, adapter.total_params),
            "size_bytes": adapter.size_bytes,
            "peak_memory_mb": None,
            "train_seconds": None,
            "train_tokens_per_s": None,
            "metric": None,
            "metric_value": None,
            "inference_overhead": None,
        }
        if adapter.job_id:
            job = store.get_job(adapter.job_id)
            metrics = store.list_metrics(job.id)
            memory = [m.memory_mb for m in metrics if m.memory_mb is not None]
            speed = [m.tokens_per_s for m in metrics if m.tokens_per_s is not None]
            row["peak_memory_mb"] = max(memory) if memory else None
            row["train_tokens_per_s"] = sum(speed) / len(speed) if speed else None
            if job.started_at and job.finished_at:
                row["train_seconds"] = round(job.finished_at - job.started_at, 1)
        newest = max(  # ROUGE-L stands for a ROUGE evaluation, as everywhere else
            scores.get(adapter.id, {}).values(),
            key=lambda r: (r["created_at"], r["metric"] not in ("rouge1", "rouge2")),
            default=None,
        )
        if newest is not None:
            row["metric"], row["metric_value"] = newest["metric"], newest["value"]
            row["metric_dataset"] = newest["dataset_id"]
            row["inference_overhead"] = _overhead(store, newest)
        rows.append(row)
    return rows


def _percent(part: int | None, whole: int | None) -> float | None:
    return round(100 * part / whole, 4) if part and whole else None


def _overhead(store: Store, scored: dict) -> float | None:
    """The adapter's answering time over the base model's, in the same evaluation job."""
    base = [
        r
        for r in store.job_evaluations(scored["job_id"])
        if r["adapter_id"] is None and r["metric"] == scored["metric"]
    ]
    if not base or not base[0]["seconds"] or scored["seconds"] is None:
        return None
    return round(scored["seconds"] / base[0]["seconds"], 3)
