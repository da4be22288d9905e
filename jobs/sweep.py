"""Settings searches as jobs: a parent job (kind sweep) and its trials, ordinary training jobs
in the queue; when the last trial settles, the best is chosen by its final eval loss and (auto)
the final run is queued with it. No process runs the parent: whoever settles a child job (the
worker, a cancel) advances it, and the database makes that happen once.
"""

from __future__ import annotations

from dataclasses import asdict

from config import Settings
from finetune import search as searches
from finetune.fields import SpecError
from finetune.spec import JobSpec, parse_spec
from jobs.queue import submit_job
from storage.store import Job, JobKind, JobState, Store

PROBE = "probe"  # an auto search's trial: measured, no adapter kept
TRIAL = "trial"  # a grid or random search's trial: its adapter is kept
FINAL = "final"  # an auto search's last run, with the best trial's values


def start_sweep(settings: Settings, spec: JobSpec, name: str, dataset_id: str) -> Job:
    """The parent job (running at once: it waits for its trials) and its trials, queued."""
    store = Store(settings.data_dir)
    chosen = searches.trials(spec.search, spec)
    base = asdict(spec)
    fraction = searches.trial_fraction(spec.search, len(chosen))
    specs = [searches.with_values(base, values, fraction) for values in chosen]
    for i, (values, trial) in enumerate(zip(chosen, specs, strict=True), start=1):
        try:
            parse_spec(trial)  # every trial is checked before anything is queued
        except SpecError as exc:
            raise SpecError(f"search: trial {i} ({searches.label(values)}): {exc}") from None
    parent = store.add_job(
        name,
        {**base, "trials": chosen},
        dataset_id,
        kind=JobKind.SWEEP,
    )
    store.update_job(parent.id, total_steps=len(chosen) + (spec.search["mode"] == "auto"), step=0)
    role = PROBE if spec.search["mode"] == "auto" else TRIAL
    for i, (values, trial) in enumerate(zip(chosen, specs, strict=True), start=1):
        trial["name"] = f"{name} · trial {i}/{len(chosen)} · {searches.label(values)}"[:200]
        submit_job(
            settings,
            trial["name"],
            trial,
            dataset_id,
            gpus=spec.training["gpus"],
            parent_id=parent.id,
            role=role,
        )
    # Running only now that its trials exist: a sweep advanced before they did would find none
    # to compare and fail. Trials that already ended moved nothing on: advance it once here.
    store.claim_job(parent.id, worker="")
    advance(settings, parent.id)
    return store.get_job(parent.id)


def trial_rows(store: Store, parent: Job, children: list[Job]) -> list[dict]:
    """One row per trial: its values, state, steps and final eval loss."""
    eval_losses = {j.id: store.last_losses(j.id)[j.id][1] for j in children}
    values = parent.spec.get("trials") or []
    trials = [j for j in children if j.role in (PROBE, TRIAL)]
    return [
        {
            "job_id": job.id,
            "values": values[i] if i < len(values) else {},
            "label": searches.label(values[i]) if i < len(values) else "",
            "state": job.state.value,
            "step": job.step,
            "eval_loss": eval_losses.get(job.id),
            "adapter_id": job.adapter_id,
        }
        for i, job in enumerate(trials)
    ]


def advance(settings: Settings, parent_id: str) -> None:
    """Move a sweep on once its running children have all settled."""
    store = Store(settings.data_dir)
    parent = store.get_job(parent_id)
    if parent.kind != JobKind.SWEEP or parent.state != JobState.RUNNING:
        return
    children = store.children(parent.id)
    if not children:  # being set up (start_sweep queues its trials first)
        return
    store.update_job(parent.id, step=sum(c.state.finished for c in children))
    if any(not c.state.finished for c in children):
        return
    rows = trial_rows(store, parent, children)
    mode = parent.spec["search"]["mode"]
    final = next((c for c in children if c.role == FINAL), None)
    if final is not None:
        result = {**(parent.result or {}), "trials": rows, "adapter_id": final.adapter_id}
        store.set_result(parent.id, result)
        state = final.state if final.state != JobState.INTERRUPTED else JobState.FAILED
        error = None if state == JobState.SUCCEEDED else f"The final run {final.id}: {final.error}"
        if final.state == JobState.INTERRUPTED:
            error += " Resume that job: the adapter it writes is this search's result."
        store.finish_job(parent.id, state, error, adapter_id=final.adapter_id)
        return
    chosen = searches.best(rows)
    if chosen is None:
        store.set_result(parent.id, {"mode": mode, "trials": rows, "best": None})
        store.finish_job(
            parent.id,
            JobState.FAILED,
            "No trial finished with an eval loss to compare; see the trials' own errors.",
        )
        return
    result = {"mode": mode, "trials": rows, "best": chosen}
    if mode != "auto":  # each trial trained with the whole budget: the best one is the result
        store.set_result(parent.id, {**result, "adapter_id": chosen["adapter_id"]})
        store.finish_job(parent.id, JobState.SUCCEEDED, adapter_id=chosen["adapter_id"])
        return
    if not store.set_result_once(parent.id, result):
        return  # another process settled the last trial at the same time and queues the run
    share = parent.spec["search"]["share"]
    spec = searches.with_values(
        {k: v for k, v in parent.spec.items() if k != "trials"}, chosen["values"], 1 - share
    )
    spec["name"] = f"{parent.name} · final · {chosen['label']}"[:200]
    job = submit_job(
        settings,
        spec["name"],
        spec,
        parent.dataset_id,
        gpus=spec["training"]["gpus"],
        parent_id=parent.id,
        role=FINAL,
    )
    store.set_result(parent.id, {**result, "final_job_id": job.id})


def cancel_sweep(settings: Settings, parent: Job) -> JobState:
    """Cancel every trial (queued ones at once, running ones after their step) and the parent."""
    store = Store(settings.data_dir)
    for child in store.children(parent.id):
        if not child.state.finished:
            store.cancel_job(child.id)
    store.finish_job(parent.id, JobState.CANCELLED, "Cancelled, with its trials.")
    return store.get_job(parent.id).state


def advance_all(settings: Settings) -> None:
    """Every running sweep, once (a worker that starts picks up what a dead one left)."""
    for job in Store(settings.data_dir).list_jobs():
        if job.kind == JobKind.SWEEP and job.state == JobState.RUNNING:
            advance(settings, job.id)
