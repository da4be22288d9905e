"""How a job looks in the Jobs tab: the table's rows, progress with its time left, the curves,
sample answers and a search's trials (pure formatting of what storage holds)."""

from __future__ import annotations

import html
import time

import pandas as pd

import service
from finetune.model_card import final_metrics
from storage.store import Job, JobKind, JobState, Metric, Sample

COLUMNS = [
    "#",
    "state",
    "name",
    "base model",
    "method",
    "dataset",
    "created",
    "started",
    "finished",
    "took",
    "step",
    "loss",
    "eval loss",
    "id",
]


# The curves: (metric field, series label, plot). A plot holds the series that share its scale.
CURVES = {
    "loss": [("loss", "loss"), ("eval_loss", "eval loss")],
    "learning rate": [("learning_rate", "learning rate")],
    "tokens/s": [("tokens_per_s", "tokens/s")],
    "memory (MB)": [("memory_mb", "memory MB")],
}


def jobs_rows(jobs: list[dict]) -> list[list]:
    """One row per job (as service.list_jobs gives them), for the table."""
    return [
        [
            j["position"] or "",
            j["status"],
            j["name"],
            _short_model(j["base_model"]),
            j["method"],
            j["dataset"] or "",
            _when(j["created_at"]),
            _when(j["started_at"]),
            _when(j["finished_at"]),
            _duration(j["seconds"]) if j["seconds"] is not None else "",
            f"{j['step']}/{j['total_steps'] or '?'}",
            _number(j["loss"]),
            _number(j["eval_loss"]),
            j["job_id"],
        ]
        for j in jobs
    ]


def _short_model(path: str | None) -> str:
    return (path or "").rstrip("/").rsplit("/", 1)[-1]


def _number(value: float | None) -> str:
    return f"{value:.4g}" if value is not None else ""


def _when(ts: float | None) -> str:
    return time.strftime("%m-%d %H:%M:%S", time.localtime(ts)) if ts else ""


_UNIT = {"train": "step", "evaluate": "answer", "merge": "part", "sweep": "job"}


def progress_html(job: Job, metrics: list[Metric], position: int | None = None) -> str:
    total = job.total_steps or 0
    fraction = min(job.step / total, 1.0) if total else 0.0
    if job.state == JobState.SUCCEEDED:
        fraction = 1.0
    eta = ""
    if job.state == JobState.QUEUED:
        eta = f" · number {position} in the queue" if position else ""
        if job.resume_from:
            eta += f" · resumes from {job.resume_from}"
    elif job.state == JobState.RUNNING and total and job.step >= total:
        eta = " · saving the adapter" if job.kind == JobKind.TRAIN else " · finishing"
    elif job.state == JobState.RUNNING and total:
        seconds = _seconds_left(job, metrics, total)
        eta = f" · about {_duration(seconds)} left" if seconds is not None else " · starting"
    elif job.finished_at and job.started_at:
        eta = f" · took {_duration(job.finished_at - job.started_at)}"
    last = final_metrics([vars(m) for m in metrics])
    losses = "".join(f" · {name.replace('_', ' ')} {value:.4g}" for name, value in last.items())
    where = f"<div><small>worker {html.escape(job.worker)}</small></div>" if job.worker else ""
    unit = _UNIT.get(job.kind, "step")
    return (
        f"<div><b>{job.state.value}</b> · {unit} {job.step} of {total or '?'}{eta}{losses}</div>"
        f'<div style="background:#e5e7eb;border-radius:6px;height:14px;margin-top:6px">'
        f'<div class="job-progress" style="width:{fraction * 100:.1f}%;height:14px;'
        f'border-radius:6px;background:#f97316"></div></div>' + memory_line(job, metrics) + where
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


def _seconds_left(job: Job, metrics: list[Metric], total: int) -> float | None:
    """From the measured pace between this run's logged steps (evaluations included), not the
    start-up, nor the pause before a resume."""
    steps = [m for m in metrics if m.loss is not None and m.created_at >= (job.started_at or 0)]
    if len(steps) < 2 or steps[-1].step <= steps[0].step:
        return None
    first, last = steps[0], steps[-1]
    pace = (last.created_at - first.created_at) / (last.step - first.step)
    left = pace * (total - last.step)
    minutes = (job.spec.get("training") or {}).get("max_minutes")
    if minutes and job.runs <= 1:  # a time budget ends it (training began a step before)
        left = min(left, max(0.0, first.created_at - pace + minutes * 60 - time.time()))
    return left


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"
    return f"{seconds // 60} min {seconds % 60:02d} s" if seconds >= 60 else f"{seconds} s"


def curves(job: Job, metrics: list[Metric], plot: str = "loss") -> pd.DataFrame | None:
    """One plot's series over the steps; None until it has a point.

    Gradio's LinePlot fixes its axis types and colour domain from the first value it draws and
    only swaps the data after that: so no empty frame, and every series the job will have is there
    from the first point (a series without a point yet gets one NaN row, which Vega skips).
    """
    rows = []
    for m in metrics:
        for field, label in CURVES[plot]:
            value = getattr(m, field)
            if value is not None:
                rows.append({"step": m.step, "value": value, "series": label})
    if not rows:
        return None
    series = [label for field, label in CURVES[plot]]
    if plot == "loss" and not job.spec.get("training", {}).get("eval_fraction"):
        series = [s for s in series if s != "eval loss" or any(r["series"] == s for r in rows)]
    return _frame(rows, series)


def _frame(rows: list[dict], series: list[str]) -> pd.DataFrame:
    """The points, with one NaN row for each series that has none yet (see curves)."""
    present = {r["series"] for r in rows}
    rows = rows + [
        {"step": rows[0]["step"], "value": float("nan"), "series": name}
        for name in series
        if name not in present
    ]
    frame = pd.DataFrame(rows, columns=["step", "value", "series"])
    return frame.astype({"step": "int64", "value": "float64", "series": "string"})


def sweep_curves(view: service.JobView, plot: str) -> pd.DataFrame | None:
    """A search's trials side by side: each trial's eval loss (or learning rate, tokens/s,
    memory) over its steps, one series per trial and one for the final run."""
    job, children = view.job, view.children
    field = "eval_loss" if plot == "loss" else CURVES[plot][0][0]
    names = [_child_label(c) for c in children]
    if job.spec.get("search", {}).get("mode") == "auto" and not any(
        c.role == "final" for c in children
    ):
        names.append("final run")  # its colour is fixed from the first point, as the others'
    rows = [
        {"step": m.step, "value": getattr(m, field), "series": name}
        for child, name in zip(children, names, strict=False)
        for m in view.child_metrics[child.id]
        if getattr(m, field) is not None
    ]
    return _frame(rows, names) if rows else None


def _child_label(child: Job) -> str:
    if child.role == "final":
        return "final run"
    return child.name.split(" · trial ", 1)[-1][:60]


def sweep_html(job: Job, rows: list[dict]) -> str:
    """The trials as a table, the best marked, and the choice the search made."""
    best = (job.result or {}).get("best") or {}
    cells = []
    for i, row in enumerate(rows, start=1):
        mark = " ★" if row["job_id"] == best.get("job_id") else ""
        loss = f"{row['eval_loss']:.4f}" if row["eval_loss"] is not None else ""
        cells.append(
            f"<tr><td>{i}{mark}</td><td>{html.escape(row['label'])}</td><td>{row['state']}</td>"
            f"<td>{row['step']}</td><td>{loss}</td><td>{row['job_id']}</td></tr>"
        )
    mode = job.spec.get("search", {}).get("mode", "")
    if best:
        then = {
            "auto": "the final run trains with it for the rest of the budget",
            "grid": "its adapter is the search's result",
            "random": "its adapter is the search's result",
        }[mode]
        choice = (
            f"<p><b>Chosen: {html.escape(best['label'])}</b> (eval loss "
            f"{best['eval_loss']:.4f}); {then}.</p>"
        )
    else:
        choice = "<p><small>The choice is made when every trial has ended.</small></p>"
    return (
        f"{choice}<table class='job-samples'><thead><tr><th>trial</th><th>values</th>"
        "<th>state</th><th>steps</th><th>final eval loss</th><th>job</th></tr></thead>"
        f"<tbody>{''.join(cells)}</tbody></table>"
    )


def samples_html(samples: list[Sample]) -> str:
    """Each fixed prompt: the base model's answer (step 0) beside the newest answers."""
    if not samples:
        return "<p><small>Sample answers appear here as the job trains.</small></p>"
    steps = sorted({s.step for s in samples})
    shown = ([0] if 0 in steps else []) + [s for s in steps if s][-3:]
    by_key = {(s.step, s.prompt_index): s for s in samples}
    prompts = sorted({(s.prompt_index, s.prompt) for s in samples})
    head = "".join(f"<th>{'base model' if step == 0 else f'step {step}'}</th>" for step in shown)
    rows = []
    for index, prompt in prompts:
        cells = "".join(
            f"<td>{html.escape(by_key[(step, index)].text) if (step, index) in by_key else ''}</td>"
            for step in shown
        )
        rows.append(f"<tr><td><b>{html.escape(prompt[:300])}</b></td>{cells}</tr>")
    return (
        '<table class="job-samples"><thead><tr><th>prompt</th>'
        f"{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"
    )
