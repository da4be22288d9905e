"""Jobs tab: the queue and every job; the selected one's progress, curves, samples and log."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import gradio as gr

import service
from config import Settings
from errors import UserError
from storage.store import Job, JobKind, JobState
from webui.jobs_view import (
    COLUMNS,
    CURVES,
    curves,
    jobs_rows,
    progress_html,
    samples_html,
    sweep_curves,
    sweep_html,
)

REFRESH_S = 2.0
LOG_LINES = 40
ALL_STATES = "all"
# The buttons under the job picker, by the action each takes on the selected job: (label, variant).
BUTTONS = {
    "up": ("Move up", "secondary"),
    "down": ("Move down", "secondary"),
    "top": ("Run next", "secondary"),
    "cancel": ("Cancel job", "stop"),
    "resume": ("Resume", "secondary"),
    "retry": ("Retry", "secondary"),
    "clone": ("Clone into the Train form", "secondary"),
    "delete": ("Delete…", "secondary"),
}
ACTIONS = ("up", "down", "top", "cancel", "resume", "retry")  # on a click; delete asks first


@dataclass
class JobsTab:
    job_dropdown: gr.Dropdown
    clone_button: gr.Button
    timer: gr.Timer


@dataclass
class JobControls:
    """The filter, the table, the job picker and what can be done to the picked job."""

    state_radio: gr.Radio
    jobs_table: gr.Dataframe
    job_dropdown: gr.Dropdown
    buttons: dict[str, gr.Button]  # BUTTONS' actions
    confirm_row: gr.Row
    confirm_md: gr.Markdown
    confirm_button: gr.Button
    keep_button: gr.Button
    action_md: gr.Markdown


@dataclass
class JobPanel:
    """The picked job: progress, curves, samples (or a search's trials), error, log, recipe."""

    progress: gr.HTML
    plots: dict[str, gr.LinePlot]  # CURVES' plots
    samples: gr.HTML
    error_md: gr.Markdown
    log_code: gr.Code
    recipe_code: gr.Code


def shown_components(controls: JobControls, panel: JobPanel) -> dict[str, Any]:
    """The components on_jobs_tick updates, by the names it gives its values."""
    return {
        "table": controls.jobs_table,
        "job": controls.job_dropdown,
        "progress": panel.progress,
        **panel.plots,
        "samples": panel.samples,
        "log": panel.log_code,
        "recipe": panel.recipe_code,
        "error": panel.error_md,
        **controls.buttons,
    }


def on_jobs_tick(settings: Settings, selected: str | None, state_filter: str | None) -> dict:
    """Everything the tab shows, read from storage, by name: the table, and the selected job's
    view (the names of shown_components)."""
    jobs = service.list_jobs(settings, None if state_filter in (None, ALL_STATES) else state_filter)
    ids = [j["job_id"] for j in jobs]
    if selected not in ids:
        selected = ids[0] if ids else None
    choices = [(f"{j['name']} · {j['status']} · {j['job_id']}", j["job_id"]) for j in jobs]
    listed = {"table": jobs_rows(jobs), "job": gr.update(choices=choices, value=selected)}
    if selected is None:
        empty = "No jobs yet." if state_filter in (None, ALL_STATES) else "No jobs in this state."
        return {
            **listed,
            "progress": empty,
            **dict.fromkeys(CURVES),
            "samples": samples_html([]),
            "log": "",
            "recipe": "",
            "error": "",
            **button_states(None, False),
        }
    info = next(j for j in jobs if j["job_id"] == selected)
    view = service.job_view(settings, selected)
    job, metrics = view.job, view.metrics
    if job.kind == JobKind.SWEEP:
        drawn = {plot: sweep_curves(view, plot) for plot in CURVES}
        below = sweep_html(job, view.trials)
    else:
        drawn = {plot: curves(job, metrics, plot) for plot in CURVES}
        below = samples_html(view.samples)
    return {
        **listed,
        "progress": progress_html(job, metrics, info["position"]),
        **drawn,
        "samples": below,
        "log": "\n".join(service.job_log(settings, job.id, LOG_LINES)["lines"]),
        "recipe": json.dumps(job.spec, indent=2),
        "error": error_text(job),
        **button_states(job, info["resumable"]),
    }


def error_text(job: Job) -> str:
    """Why the job failed, and the tail of its traceback."""
    if not job.error:
        return ""
    text = f"**{job.error}**"
    if job.error_detail:
        text += f"\n\n```\n{job.error_detail[-3000:]}\n```"
    return text


def button_states(job: Job | None, resumable: bool) -> dict[str, dict]:
    """What the job's state allows, by BUTTONS' action."""
    state = job.state if job else None
    queued = state == JobState.QUEUED
    stopped = state in service.jobs.RESUMABLE
    allowed = {
        "up": queued,
        "down": queued,
        "top": queued,
        "cancel": state in (JobState.QUEUED, JobState.RUNNING),
        "resume": stopped and resumable,
        "retry": stopped,
        "clone": job is not None and job.kind in (JobKind.TRAIN, JobKind.SWEEP),
        "delete": job is not None and state != JobState.RUNNING,
    }
    return {action: gr.update(interactive=ok) for action, ok in allowed.items()}


def on_action_click(settings: Settings, action: str, job_id: str | None) -> str:
    """One button's action on the selected job; the message says what happened or why not."""
    if not job_id:
        return "Select a job first."
    try:
        if action in ("up", "down", "top"):
            info = service.move_job(settings, job_id, action)
            return f"Job `{job_id}` is number {info['position']} in the queue."
        if action == "cancel":
            result = service.cancel_job(settings, job_id)
            if result["status"] == JobState.CANCELLED:
                return f"Job `{job_id}` was cancelled before it started."
            return f"Job `{job_id}` will stop after its current step and keep a checkpoint."
        if action == "resume":
            info = service.resume_job(settings, job_id)
            return f"Job `{job_id}` is queued again; it resumes from {info['checkpoint']}."
        if action == "retry":
            started = service.retry_job(settings, job_id)
            return f"Retrying as job `{started['job_id']}`, from the start."
        if action == "delete":
            service.delete_job(settings, job_id)
            return f"Job `{job_id}` was deleted with its files. An adapter it wrote stays."
    except UserError as exc:
        return f"**Cannot {action}.** {exc}"
    raise ValueError(f"unknown action {action}")


def _build_controls() -> JobControls:
    with gr.Row():
        state_radio = gr.Radio(
            [ALL_STATES, *(s.value for s in JobState)], value=ALL_STATES, label="Show", scale=3
        )
    jobs_table = gr.Dataframe(
        headers=COLUMNS,
        label="Jobs (# is the place in the queue)",
        interactive=False,
        wrap=True,
    )
    job_dropdown = gr.Dropdown(label="Job", choices=[], allow_custom_value=True)
    with gr.Row():
        buttons = {
            action: gr.Button(label, variant=variant, size="sm", interactive=False)
            for action, (label, variant) in BUTTONS.items()
        }
    with gr.Row(visible=False) as confirm_row:
        confirm_md = gr.Markdown()
        confirm_button = gr.Button("Delete the job and its files", variant="stop", size="sm")
        keep_button = gr.Button("Keep it", size="sm")
    return JobControls(
        state_radio=state_radio,
        jobs_table=jobs_table,
        job_dropdown=job_dropdown,
        buttons=buttons,
        confirm_row=confirm_row,
        confirm_md=confirm_md,
        confirm_button=confirm_button,
        keep_button=keep_button,
        action_md=gr.Markdown(),
    )


def _build_panel() -> JobPanel:
    progress = gr.HTML()
    plots = {}
    for row in (list(CURVES)[:2], list(CURVES)[2:]):
        with gr.Row():
            for plot in row:
                plots[plot] = gr.LinePlot(
                    x="step", y="value", color="series", title=plot, label=plot
                )
    return JobPanel(
        progress=progress,
        plots=plots,
        samples=gr.HTML(label="Sample answers"),
        error_md=gr.Markdown(),
        log_code=gr.Code(label=f"Log (last {LOG_LINES} lines)", language=None, lines=8),
        recipe_code=gr.Code(label="Recipe (the job's spec)", language="json"),
    )


def _wire_jobs_events(
    settings: Settings, controls: JobControls, panel: JobPanel, timer: gr.Timer
) -> None:
    shown = shown_components(controls, panel)

    def on_tick(selected: str | None, state_filter: str | None) -> dict:
        ticked = on_jobs_tick(settings, selected, state_filter)
        if ticked.keys() != shown.keys():  # a component left stale, or a value with nowhere to go
            raise ValueError(f"on_jobs_tick gave {sorted(ticked)}, the tab shows {sorted(shown)}")
        return {shown[name]: value for name, value in ticked.items()}

    refresh = {
        "fn": on_tick,
        "inputs": [controls.job_dropdown, controls.state_radio],
        "outputs": list(shown.values()),
        "api_visibility": "private",
        "show_progress": "hidden",
    }
    timer.tick(**refresh)
    controls.job_dropdown.input(**refresh)
    controls.state_radio.input(**refresh)
    for action in ACTIONS:
        controls.buttons[action].click(
            lambda j, a=action: on_action_click(settings, a, j),
            inputs=[controls.job_dropdown],
            outputs=[controls.action_md],
            api_visibility="private",
        ).then(**refresh)
    controls.buttons["delete"].click(
        lambda j: (gr.update(visible=True), f"Delete job `{j}`, its log, checkpoints and curves?"),
        inputs=[controls.job_dropdown],
        outputs=[controls.confirm_row, controls.confirm_md],
        api_visibility="private",
    )
    controls.keep_button.click(
        lambda: gr.update(visible=False), outputs=[controls.confirm_row], api_visibility="private"
    )
    controls.confirm_button.click(
        lambda j: (gr.update(visible=False), on_action_click(settings, "delete", j)),
        inputs=[controls.job_dropdown],
        outputs=[controls.confirm_row, controls.action_md],
        api_visibility="private",
    ).then(**refresh)


def build_jobs_tab(settings: Settings) -> JobsTab:
    controls = _build_controls()
    panel = _build_panel()
    timer = gr.Timer(REFRESH_S)
    _wire_jobs_events(settings, controls, panel, timer)
    return JobsTab(
        job_dropdown=controls.job_dropdown, clone_button=controls.buttons["clone"], timer=timer
    )
