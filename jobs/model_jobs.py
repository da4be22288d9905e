"""The child process's work for jobs that use a model without training it: evaluate models,
merge an adapter into its base, combine adapters into a new one."""

from __future__ import annotations

import json
import shutil
import traceback

from config import Settings
from finetune.combine import Source, combine_adapters
from finetune.data import read_rows
from finetune.evaluate import METRICS, evaluate, headline
from finetune.examples import split_rows
from finetune.generate import GenerationParams, ModelCache
from finetune.merge import merge_into_base
from finetune.model_card import write_card
from finetune.models import resolve_model
from jobs.failures import plain_reason
from storage.store import (
    COMBINED_FILE,
    EVAL_FILE,
    ROWS_FILE,
    JobKind,
    JobState,
    Store,
    folder_bytes,
)

MERGED = "merged"  # the merged model's folder, inside the job's folder


def eval_rows(store: Store, spec: dict) -> list[dict]:
    """The rows an evaluation scores, at most max_rows: with split "all" every row of the
    dataset (a file uploaded to evaluate on); else its own eval split, or failing that the
    held-out split its training jobs use (eval_fraction and seed as given)."""
    folder = store.dataset_dir(spec["dataset_id"])
    if spec.get("split") == "all":
        return (read_rows(folder / ROWS_FILE) + read_rows(folder / EVAL_FILE))[: spec["max_rows"]]
    rows = read_rows(folder / EVAL_FILE)
    if not rows:
        _, rows = split_rows(read_rows(folder / ROWS_FILE), spec["eval_fraction"], spec["seed"])
    return rows[: spec["max_rows"]]


def run_model_job(settings: Settings, job_id: str, reporter) -> JobState:
    import torch

    torch.set_num_threads(settings.train_threads)
    store = reporter.store
    job = store.get_job(job_id)
    try:
        if job.kind == JobKind.EVALUATE:
            return _evaluate(settings, store, job, reporter)
        if job.kind == JobKind.MERGE:
            return _merge(settings, store, job)
        if job.kind == JobKind.COMBINE:
            return _combine(settings, store, job)
        raise ValueError(f"unknown job kind {job.kind!r}")
    except Exception as exc:
        traceback.print_exc()
        reason = plain_reason(exc, job.kind)
        store.finish_job(job_id, JobState.FAILED, reason, traceback.format_exc()[-4000:])
        return JobState.FAILED


def _evaluate(settings: Settings, store: Store, job, reporter) -> JobState:
    spec = job.spec
    model = resolve_model(spec["base_model"], settings.models_dir)
    entries = [
        None if a is None else (a, store.adapter_dir(store.get_adapter(a).id))
        for a in spec["adapter_ids"]
    ]
    rows = eval_rows(store, spec)
    total = len(entries) * len(rows)
    store.update_job(job.id, total_steps=total)
    params = GenerationParams(max_new_tokens=spec["max_new_tokens"])

    def progress(done: int, total: int) -> bool:
        store.update_job(job.id, step=done)
        return not reporter.should_stop()

    reporter.training = True  # from here a stop request ends the run between answers
    found = evaluate(
        ModelCache(),
        model,
        entries,
        rows,
        spec["metric"],
        params,
        progress,
        settings.allow_remote_code,
        group_by=spec.get("group_by"),
    )
    metric = spec["metric"]
    result = {"metric": metric, "rows": len(rows), **found}
    store.set_result(job.id, result)
    if found["stopped"]:
        if reporter.shutdown:
            why = "The worker or the app stopped during the evaluation; retry it."
            store.finish_job(job.id, JobState.INTERRUPTED, why)
            return JobState.INTERRUPTED
        store.finish_job(job.id, JobState.CANCELLED, "Cancelled; the answers so far are kept.")
        return JobState.CANCELLED
    keys = ["rouge1", "rouge2", "rougeL"] if metric == "rouge" else [metric]
    store.add_evaluations(
        job.id,
        [
            {
                "adapter_id": s["adapter"],
                "base_model": spec["base_model"],
                "dataset_id": spec["dataset_id"],
                "metric": key,
                "value": s.get(key),
                "rows": s["rows"],
                "seconds": s["seconds"],
            }
            for s in found["summary"]
            for key in keys
        ],
    )
    best = max(
        found["summary"],
        key=lambda s: (headline(s, metric) or 0) * (1 if metric != "perplexity" else -1),
    )
    name = "base model" if best["adapter"] is None else best["adapter"]
    store.finish_job(job.id, JobState.SUCCEEDED)
    print(f"best by {METRICS[metric].split(' (')[0]}: {name}", flush=True)
    return JobState.SUCCEEDED


def _merge(settings: Settings, store: Store, job) -> JobState:
    spec = job.spec
    adapter = store.get_adapter(spec["adapter_id"])
    model = resolve_model(adapter.base_model, settings.models_dir)
    out = store.job_dir(job.id) / MERGED
    partial = out.with_name(MERGED + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    store.update_job(job.id, total_steps=1)
    checked = merge_into_base(
        model,
        store.adapter_dir(adapter.id),
        adapter.method,
        partial,
        settings.allow_remote_code,
        dtype=spec["dtype"],
    )
    partial.rename(out)  # the folder appears whole, or not at all
    store.set_result(job.id, {**checked, "folder": MERGED, "adapter_id": adapter.id})
    store.update_job(job.id, step=1)
    store.finish_job(job.id, JobState.SUCCEEDED)
    return JobState.SUCCEEDED


def _combine(settings: Settings, store: Store, job) -> JobState:
    spec = job.spec
    adapters = [store.get_adapter(a) for a in spec["adapter_ids"]]
    sources = [
        Source(f"{a.name} ({a.id})", store.adapter_dir(a.id), w, a.method)
        for a, w in zip(adapters, spec["weights"], strict=True)
    ]
    store.update_job(job.id, total_steps=1)
    scratch = store.tmp_dir()
    try:
        staged = scratch / "adapter"
        made = combine_adapters(
            resolve_model(spec["base_model"], settings.models_dir),
            sources,
            spec["method"],
            staged,
            spec["density"],
            spec["svd_rank"],
            settings.allow_remote_code,
        )
        recipe = {
            "method": spec["method"],
            "density": spec["density"],
            "svd_rank": spec["svd_rank"],
            "sources": [
                {"adapter_id": a.id, "name": a.name, "weight": w}
                for a, w in zip(adapters, spec["weights"], strict=True)
            ],
        }
        (staged / COMBINED_FILE).write_text(json.dumps(recipe, indent=2), encoding="utf-8")
        write_card(staged, spec["name"], spec["base_model"], _combined_text(recipe))
        adapter = store.add_adapter(
            staged,
            job_id=None,  # (the job made no training run: the adapter's origin says how)
            name=spec["name"],
            base_model=spec["base_model"],
            method=adapters[0].method if made["peft_type"] == "IA3" else "lora",
            trainable_params=made["trainable_params"],
            total_params=adapters[0].total_params,
            size_bytes=folder_bytes(staged),
            origin="combined",
        )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    store.set_result(job.id, {"r": made["r"], "peft_type": made["peft_type"]})
    store.update_job(job.id, step=1)
    store.finish_job(job.id, JobState.SUCCEEDED, adapter_id=adapter.id)
    return JobState.SUCCEEDED


def _combined_text(recipe: dict) -> str:
    parts = "\n".join(
        f"- {s['name']} (`{s['adapter_id']}`), weight {s['weight']}" for s in recipe["sources"]
    )
    return (
        f"Combined by AdapterLab with PEFT's `{recipe['method']}` combination of:\n\n{parts}\n\n"
        "Load it with `PeftModel.from_pretrained(base, folder)`."
    )
