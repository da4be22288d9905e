"""Merge an adapter into its base as a queued job, and hand out the merged model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from config import Settings
from errors import UserError
from finetune.merge import check_merge
from jobs.model_jobs import MERGED
from jobs.queue import submit_job
from service.adapters import zip_once
from storage.store import JobKind, JobState, Store


def start_merge(settings: Settings, adapter_id: str, dtype: str = "float32") -> dict[str, Any]:
    """Queue a job that merges the adapter into its base and checks the result -> {job_id}."""
    store = Store(settings.data_dir)
    adapter = store.get_adapter(adapter_id)
    dtype = dtype or "float32"
    check_merge(adapter.method, dtype)
    spec = {"adapter_id": adapter.id, "base_model": adapter.base_model, "dtype": dtype}
    name = f"merge {adapter.name} ({dtype})"[:200]
    job = submit_job(settings, name, spec, None, kind=JobKind.MERGE)
    return {"job_id": job.id, "status": job.state.value}


def download_merged(settings: Settings, job_id: str) -> Path:
    """The merged model of a finished merge job, as a .zip."""
    store = Store(settings.data_dir)
    job = store.get_job(job_id)
    if job.kind != JobKind.MERGE:
        raise UserError(f"Job {job_id} is a {job.kind} job, not a merge.")
    folder = store.job_dir(job.id) / MERGED
    if job.state != JobState.SUCCEEDED or not folder.is_dir():
        raise UserError(f"Job {job_id} is {job.state.value}: no merged model to download yet.")
    return zip_once(folder, store.download_path(f"merged-{job.id}.zip"), "merged")


def merged_models(settings: Settings) -> list[dict[str, Any]]:
    """Finished merges, newest first: {job_id, adapter_id, dtype, max_logit_diff, bytes}."""
    store = Store(settings.data_dir)
    return [
        {"job_id": j.id, "name": j.name, **{k: (j.result or {}).get(k) for k in _MERGE_KEYS}}
        for j in store.list_jobs()
        if j.kind == JobKind.MERGE and j.state == JobState.SUCCEEDED
    ]


_MERGE_KEYS = ("adapter_id", "dtype", "max_logit_diff", "max_logit", "bytes")
