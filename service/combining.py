"""Combine adapters of one base into a new one, as a queued job (it loads the base model).

Everything a user can get wrong is checked here, in the web process, from the records and the
adapters' own configs; the job (jobs.model_jobs) only does the combining.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from config import Settings
from finetune.combine import MAX_ADAPTERS, Source, check_combination
from finetune.fields import Field, Request, SpecError
from finetune.methods import COMBINATIONS
from finetune.models import resolve_model
from jobs.queue import submit_job
from service.adapters import adapter_info
from storage.store import JobKind, JobState, Store

COMBINE_WAIT_S = 600.0  # how long /combine_adapters waits for its job before it says so
_POLL_S = 0.2


@dataclass(frozen=True)
class CombineRequest(Request):
    """Adapters of one base and their weights, and PEFT's combination to apply."""

    adapter_ids: list[str]
    weights: list[float]
    method: str = "cat"
    name: str | None = None
    density: float | None = None
    svd_rank: int | None = None

    FIELDS = (
        Field("adapter_ids", "Adapters", list, None, max_items=MAX_ADAPTERS),
        Field("weights", "Weights", list, None, item=float, max_items=MAX_ADAPTERS),
        Field("method", "Combination", str, "cat", choices=tuple(COMBINATIONS)),
        Field("name", "Name", str, None, optional=True, max_chars=200),
        Field("density", "Density", float, None, optional=True),
        Field("svd_rank", "SVD rank", int, None, optional=True),
    )

    def check(self, where: str) -> None:
        if len(self.adapter_ids) != len(self.weights):
            raise SpecError(
                f"weights: give one weight per adapter ({len(self.adapter_ids)} adapters, "
                f"{len(self.weights)} weights)"
            )


def start_combine(settings: Settings, request: CombineRequest) -> dict[str, Any]:
    """Check the combination, then queue the job that makes it -> {job_id, status}."""
    store = Store(settings.data_dir)
    adapters = [store.get_adapter(a) for a in request.adapter_ids]
    sources = [
        Source(f"{a.name} ({a.id})", store.adapter_dir(a.id), w, a.method)
        for a, w in zip(adapters, request.weights, strict=True)
    ]
    check_combination(sources, request.method, request.density, request.svd_rank)
    bases = {resolve_model(a.base_model, settings.models_dir) for a in adapters}
    if len(bases) > 1:
        listed = ", ".join(sorted({a.base_model for a in adapters}))
        raise SpecError(f"The adapters were trained on different base models ({listed}).")
    label = request.name or f"{request.method} of " + " + ".join(a.name for a in adapters)
    spec = {**request.to_dict(), "name": label[:200], "base_model": adapters[0].base_model}
    job = submit_job(settings, f"combine: {label}"[:200], spec, None, kind=JobKind.COMBINE)
    return {"job_id": job.id, "status": job.state.value}


def combined_adapter(settings: Settings, job_id: str) -> dict[str, Any]:
    """The adapter a finished combine job made -> {adapter_id, r, ...its record}."""
    store = Store(settings.data_dir)
    job = store.get_job(job_id)
    if job.kind != JobKind.COMBINE:
        raise SpecError(f"Job {job_id} is a {job.kind} job, not a combination.")
    if job.state == JobState.FAILED:
        raise SpecError(f"Not combined: {job.error}")
    if job.state != JobState.SUCCEEDED or job.adapter_id is None:
        raise SpecError(
            f"Job {job_id} is {job.state.value}: the combined adapter is not made yet "
            "(its progress is in the Jobs tab and /job_status)."
        )
    adapter = store.get_adapter(job.adapter_id)
    return {"adapter_id": adapter.id, "r": (job.result or {}).get("r"), **adapter_info(adapter)}


def combine(
    settings: Settings, request: CombineRequest, wait_s: float = COMBINE_WAIT_S
) -> dict[str, Any]:
    """Queue the combination and wait for its job (at most wait_s) -> the new adapter's record."""
    job_id = start_combine(settings, request)["job_id"]
    store = Store(settings.data_dir)
    deadline = time.monotonic() + wait_s
    while not store.get_job(job_id).state.finished and time.monotonic() < deadline:
        time.sleep(_POLL_S)
    return combined_adapter(settings, job_id)
