"""Jobs tab: every job and its state; the selected one's progress, curves, recipe, error, Cancel."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

import gradio as gr
import pandas as pd

from finetune.train import final_metrics
from storage.settings import Settings
from storage.store import Job, JobState, Metric
from webui import actions

REFRESH_S = 2.0


@dataclass
class JobsTab:
    job_dropdown: gr.Dropdown
    timer: gr.Timer


def jobs_rows(jobs: list[Job]) -> list[list]:
    return [
        [
            j.name,
            j.id,
            j.state.value,
            f"{j.step}/{j.total_steps or '?'}",
            _when(j.created_at),
        ]
        for j in jobs
    ]


def _when(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else ""


def progress_html(job: Job, metrics: list[Metric]) -> str:
    total = job.total_steps or 0
    fraction = min(job.step / total, 1.0) if total else 0.0
    if job.state == JobState.SUCCEEDED:
        fraction = 1.0
    eta = ""
    if job.state == JobState.RUNNING and total and job.step >= total:
        eta = " · saving the adapter"
    elif job.state == JobState.RUNNING and total:
        seconds = _seconds_left(metrics, total)
        eta = f" · about {_duration(seconds)} left" if seconds is not None else " · starting"
    elif job.finished_at and job.started_at:
        eta = f" · took {_duration(job.finished_at - job.started_at)}"
    last = final_metrics([vars(m) for m in metrics])
    losses = "".join(f" · {name.replace('_', ' ')} {value:.4g}" for name, value in last.items())
    return (
        f"<div><b>{job.state.value}</b> · step {job.step} of {total or '?'}{eta}{losses}</div>"
        f'<div style="background:#e5e7eb;border-radius:6px;height:14px;margin-top:6px">'
        f'<div class="job-progress" style="width:{fraction * 100:.1f}%;height:14px;'
        f'border-radius:6px;background:#f97316"></div></div>' + memory_line(job, metrics)
    )


def memory_line(job: Job, metrics: list[Metric]) -> str:
    """The measured peak beside the pre-flight estimate, once there is a measurement."""
    peaks = [m.memory_mb for m in metrics if m.memory_mb is not None]
    if not peaks:
        return ""
    line = f"peak memory {max(peaks) / 1024:.2f} GiB"
    if job.memory_estimate_mb:
        line += f" (estimated {job.memory_estimate_mb / 1024:.2f} GiB before the start)"
    return f"<div><small>{line}</small></div>"


def _seconds_left(metrics: list[Metric], total: int) -> float | None:
    """From the measured pace between logged steps (evaluations included), not the start-up."""
    steps = [m for m in metrics if m.loss is not None]
    if len(steps) < 2 or steps[-1].step <= steps[0].step:
        return None
    first, last = steps[0], steps[-1]
    pace = (last.created_at - first.created_at) / (last.step - first.step)
    return pace * (total - last.step)


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 60} min {seconds % 60:02d} s" if seconds >= 60 else f"{seconds} s"


def curves(job: Job, metrics: list[Metric]) -> pd.DataFrame | None:
    """The job's loss curves; None until it has a point.

    Gradio's LinePlot fixes its axis types and colour domain from the first value it draws and
    only swaps the data after that: so no empty frame, and every series the job will have is there
    from the first point (a series without a point yet gets one NaN row, which Vega skips).
    """
    rows = []
    for m in metrics:
        if m.loss is not None:
            rows.append({"step": m.step, "value": m.loss, "series": "loss"})
        if m.eval_loss is not None:
            rows.append({"step": m.step, "value": m.eval_loss, "series": "eval loss"})
    if not rows:
        return None
    series = ["loss"]
    if job.spec.get("training", {}).get("eval_fraction"):
        series.append("eval loss")
    present = {r["series"] for r in rows}
    rows += [
        {"step": rows[0]["step"], "value": float("nan"), "series": name}
        for name in series
        if name not in present
    ]
    frame = pd.DataFrame(rows, columns=["step", "value", "series"])
    return frame.astype({"step": "int64", "value": "float64", "series": "string"})


def on_jobs_tick(settings: Settings, selected: str | None):
    store = actions.settled_store(settings)
    jobs = store.list_jobs()
    ids = [j.id for j in jobs]
    if selected not in ids:
        selected = ids[0] if ids else None
    choices = [(f"{j.name} · {j.state.value} · {j.id}", j.id) for j in jobs]
    if selected is None:
        return (
            jobs_rows(jobs),
            gr.update(choices=choices, value=None),
            "No jobs yet.",
            None,
            "",
            "",
            gr.update(interactive=False),
        )
    job = next(j for j in jobs if j.id == selected)
    metrics = store.list_metrics(job.id)
    error = ""
    if job.error:
        error = f"**{job.error}**"
        if job.error_detail:
            error += f"\n\n```\n{job.error_detail[-3000:]}\n```"
    return (
        jobs_rows(jobs),
        gr.update(choices=choices, value=selected),
        progress_html(job, metrics),
        curves(job, metrics),
        json.dumps(job.spec, indent=2),
        error,
        gr.update(interactive=not job.state.finished),
    )


def on_cancel_click(settings: Settings, job_id: str | None) -> str:
    if not job_id:
        return "Select a job first."
    try:
        result = actions.cancel_job(settings, job_id)
    except (ValueError, LookupError) as exc:
        return f"**Cannot cancel.** {exc}"
    if result["status"] == JobState.CANCELLED:
        return f"Job `{job_id}` was cancelled before it started."
    return f"Job `{job_id}` will stop after its current step and keep its weights."


def build_jobs_tab(settings: Settings) -> JobsTab:
    jobs_table = gr.Dataframe(
        headers=["name", "id", "state", "step", "created"],
        label="Jobs",
        interactive=False,
    )
    job_dropdown = gr.Dropdown(label="Job", choices=[], allow_custom_value=True)
    progress = gr.HTML()
    with gr.Row():
        loss_plot = gr.LinePlot(
            x="step",
            y="value",
            color="series",
            title="Loss",
            label="Loss curve",
        )
    with gr.Row():
        cancel_button = gr.Button("Cancel job", variant="stop", interactive=False)
        cancel_md = gr.Markdown()
    error_md = gr.Markdown()
    recipe_code = gr.Code(label="Recipe (the job's spec)", language="json")
    timer = gr.Timer(REFRESH_S)
    outputs = [
        jobs_table,
        job_dropdown,
        progress,
        loss_plot,
        recipe_code,
        error_md,
        cancel_button,
    ]
    refresh = {
        "fn": lambda s: on_jobs_tick(settings, s),
        "inputs": [job_dropdown],
        "outputs": outputs,
        "api_visibility": "private",
        "show_progress": "hidden",
    }
    timer.tick(**refresh)
    job_dropdown.input(**refresh)
    cancel_button.click(
        lambda j: on_cancel_click(settings, j),
        inputs=[job_dropdown],
        outputs=[cancel_md],
        api_visibility="private",
    )
    return JobsTab(job_dropdown=job_dropdown, timer=timer)
