"""Compare tab: adapters side by side on the PEFT trade-offs, and evaluations that score them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gradio as gr
import pandas as pd

import service
from config import Settings
from errors import UserError
from finetune.evaluate import METRICS
from storage.store import JobKind
from webui.choices import adapter_choices, dataset_choices

TRADEOFF_HEADERS = [
    "adapter",
    "method",
    "trainable",
    "trainable %",
    "size on disk",
    "peak train memory",
    "train time",
    "train tokens/s",
    "eval metric",
    "score",
    "answer time vs base",
]
BASE = "base model"


@dataclass
class CompareTab:
    selected: gr.Dropdown
    dataset: gr.Dropdown
    evaluation: gr.Dropdown
    refresh: dict


def tradeoff_rows(settings: Settings, adapter_ids: list[str] | None) -> list[list]:
    rows = []
    for r in service.tradeoffs(settings, adapter_ids or []):
        rows.append(
            [
                f"{r['name']} · {r['adapter_id']}",
                r["method"],
                f"{r['trainable_params']:,}" if r["trainable_params"] else "",
                f"{r['trainable_percent']:.3f}%" if r["trainable_percent"] else "",
                f"{(r['size_bytes'] or 0) / 2**20:.2f} MiB",
                f"{r['peak_memory_mb'] / 1024:.2f} GiB" if r["peak_memory_mb"] else "",
                f"{r['train_seconds']:.0f} s" if r["train_seconds"] else "",
                f"{r['train_tokens_per_s']:.1f}" if r["train_tokens_per_s"] else "",
                r["metric"] or "(not evaluated)",
                f"{r['metric_value']:.3f}" if r["metric_value"] is not None else "",
                f"{r['inference_overhead']:.2f}x" if r["inference_overhead"] else "",
            ]
        )
    return rows


def evaluation_choices(settings: Settings) -> list[tuple[str, str]]:
    return [
        (f"{j['name']} · {j['job_id']}", j["job_id"])
        for j in service.list_jobs(settings)
        if j["kind"] == JobKind.EVALUATE
    ]


def on_evaluate_click(
    settings: Settings,
    adapter_ids: list[str] | None,
    include_base: bool,
    dataset_id: str | None,
    metric: str,
    max_rows: float,
    split: str = "held_out",
    group_by: str | None = None,
) -> tuple[str, dict]:
    ids = ([None] if include_base else []) + list(adapter_ids or [])
    try:
        if not dataset_id:
            raise UserError("Pick a dataset to evaluate on.")
        started = service.start_evaluation(
            settings,
            ids,
            dataset_id,
            {
                "metric": metric,
                "max_rows": int(max_rows or 50),
                "split": split or "held_out",
                "group_by": None if group_by in (None, NO_GROUP) else group_by,
            },
        )
    except UserError as exc:
        return f"**Not started.** {exc}", gr.update()
    message = (
        f"Evaluation `{started['job_id']}` is queued: {len(ids)} model(s) × {started['rows']} "
        f"rows, scored by {started['metric']}. Its results appear below as it finishes."
    ) + "".join(f"\n- **Note:** {w}" for w in started["warnings"])
    return message, gr.update(choices=evaluation_choices(settings), value=started["job_id"])


NO_GROUP = "(no split)"


def group_choices(settings: Settings, dataset_id: str | None):
    """The columns an evaluation on this dataset can be split by; the first one chosen."""
    try:
        dataset = service.get_dataset(settings, dataset_id) if dataset_id else None
    except UserError:
        dataset = None
    columns = list(dataset["stats"].get("group_columns") or []) if dataset else []
    return gr.update(choices=[NO_GROUP, *columns], value=columns[0] if columns else NO_GROUP)


def on_results_show(settings: Settings, job_id: str | None, only_differing: bool):
    """The summary table, the bar chart and the per-example answers of one evaluation."""
    empty = (None, None, None, "")
    if not job_id:
        return empty
    try:
        results = service.evaluation_results(settings, job_id)
    except UserError as exc:
        return (*empty[:3], f"**{exc}**")
    names = {a["id"]: a["name"] for a in service.list_adapters(settings)}
    label = lambda a: BASE if a is None else f"{names.get(a, a)} · {a}"  # noqa: E731
    status = f"**{results['status']}** · {results['step']} of {results['total_steps'] or '?'}"
    if results["error"]:
        status += f" · {results['error']}"
    if not results["summary"]:
        return (*empty[:3], status + " · no results yet")
    metric = results["metric"]
    keys = ["rouge1", "rouge2", "rougeL"] if metric == "rouge" else [metric]
    headline = keys[-1]
    groups = sorted({g["group"] for s in results["summary"] for g in s.get("groups", [])}, key=str)
    by_group = lambda s: {g["group"]: g.get(headline) for g in s.get("groups", [])}  # noqa: E731
    summary = pd.DataFrame(
        [
            [
                label(s["adapter"]),
                *[_score(s.get(k)) for k in keys],
                *[_score(by_group(s).get(g)) for g in groups],
                s["rows"],
                s["seconds"],
            ]
            for s in results["summary"]
        ],
        columns=["model", *keys, *(f"{headline} · {g}" for g in groups), "rows", "seconds"],
    )
    short = lambda a: BASE if a is None else names.get(a, a)[:24]  # noqa: E731
    bars = pd.DataFrame(
        [
            {"model": f"{short(s['adapter'])} · {g}", "group": str(g), "score": v or 0.0}
            for s in results["summary"]
            for g, v in by_group(s).items()
        ]
        or [
            {"model": short(s["adapter"]), "group": "all rows", "score": s.get(headline) or 0.0}
            for s in results["summary"]
        ]
    )
    examples = []
    for example in results["examples"]:
        answers = example["answers"]
        texts = {a["text"].strip() for a in answers}
        scores = {a["score"] for a in answers}
        if only_differing and len(texts) <= 1 and len(scores) <= 1:
            continue
        row = [example["index"] + 1, example["prompt"], example["reference"]]
        if groups:
            row.insert(1, example.get("group"))
        for a in answers:
            row.append(f"{a['text']} [{_score(a['score'])}]")
        examples.append(row)
    columns = [
        "#",
        *([results["group_by"]] if groups else []),
        "prompt",
        "reference",
        *(label(a["adapter"]) for a in results["examples"][0]["answers"]),
    ]
    shown = f" · {len(examples)} of {len(results['examples'])} examples shown"
    return summary, bars, pd.DataFrame(examples, columns=columns), status + shown


def on_results_tick(settings: Settings, job_id: str | None, only_differing: bool):
    """While the evaluation runs (and just after it ends), the results again; else nothing to
    redraw (a table redrawn every few seconds would lose the reader's place)."""
    import time

    try:
        job = service.job_status(settings, job_id) if job_id else None
    except UserError:
        job = None
    if job is None or (job["finished_at"] and time.time() - job["finished_at"] > 10):
        return tuple(gr.skip() for _ in range(4))
    return on_results_show(settings, job_id, only_differing)


def _score(value) -> str:
    return "" if value is None else f"{value:.3f}"


def on_compare_refresh(
    settings: Settings, selected: list[str] | None, dataset: str | None, evaluation: str | None
) -> tuple:
    """The pickers re-read from storage, keeping what is still there.

    -> adapters picker, trade-offs table, dataset picker, evaluation picker.
    """
    adapters = adapter_choices(settings)
    ids = {v for _, v in adapters}
    kept = [a for a in selected or [] if a in ids]
    datasets = dataset_choices(settings)
    evaluations = evaluation_choices(settings)
    dataset_ids = [v for _, v in datasets]
    evaluation_ids = [v for _, v in evaluations]
    return (
        gr.update(choices=adapters, value=kept),
        tradeoff_rows(settings, kept),
        gr.update(choices=datasets, value=dataset if dataset in dataset_ids else None),
        gr.update(
            choices=evaluations,
            value=evaluation
            if evaluation in evaluation_ids
            else (evaluation_ids[0] if evaluation_ids else None),
        ),
    )


@dataclass
class EvaluateSection:
    """What to evaluate on and how: the inputs of Evaluate, by on_evaluate_click's names."""

    inputs: dict[str, Any]
    dataset: gr.Dropdown
    group_dropdown: gr.Dropdown
    evaluate_button: gr.Button
    evaluate_md: gr.Markdown


@dataclass
class ResultsSection:
    evaluation: gr.Dropdown
    only_differing: gr.Checkbox
    results_md: gr.Markdown
    summary_table: gr.Dataframe
    bars: gr.BarPlot
    examples_table: gr.Dataframe
    timer: gr.Timer  # redraws the results while the evaluation runs


def _build_evaluate_section() -> EvaluateSection:
    with gr.Accordion("Evaluate (a queued job)", open=True):
        with gr.Row():
            include_base = gr.Checkbox(value=True, label="Base model too")
            dataset = gr.Dropdown(label="Dataset to evaluate on", choices=[], scale=2)
            metric = gr.Dropdown(
                choices=[("auto (fits the task)", "auto"), *((k, k) for k in METRICS)],
                value="auto",
                label="Metric",
            )
            max_rows = gr.Number(value=50, label="Rows at most", precision=0, minimum=1)
            split_radio = gr.Radio(
                [("held-out rows", "held_out"), ("all rows", "all")],
                value="held_out",
                label="Rows",
                info="All: a dataset uploaded to evaluate on",
            )
            group_dropdown = gr.Dropdown(
                choices=[NO_GROUP],
                value=NO_GROUP,
                label="Split the scores by",
                info="A column of the dataset (the arithmetic sample: operation)",
            )
        evaluate_button = gr.Button("Evaluate", variant="primary")
        evaluate_md = gr.Markdown()
    inputs = {
        "include_base": include_base,
        "dataset_id": dataset,
        "metric": metric,
        "max_rows": max_rows,
        "split": split_radio,
        "group_by": group_dropdown,
    }
    return EvaluateSection(
        inputs=inputs,
        dataset=dataset,
        group_dropdown=group_dropdown,
        evaluate_button=evaluate_button,
        evaluate_md=evaluate_md,
    )


def _build_results_section() -> ResultsSection:
    with gr.Row():
        evaluation = gr.Dropdown(label="Evaluation", choices=[], scale=3)
        only_differing = gr.Checkbox(value=False, label="Only examples where the answers differ")
    results_md = gr.Markdown()
    with gr.Row():
        summary_table = gr.Dataframe(
            headers=["model", "score", "rows", "seconds"],
            label="Results",
            interactive=False,
            scale=2,
        )
        bars = gr.BarPlot(
            x="model",
            y="score",
            color="group",
            title="Score",
            label="Score by model",
            x_label_angle=-30,
            sort="-y",
            scale=1,
        )
    examples_table = gr.Dataframe(
        headers=["#", "prompt", "reference", "answers [score]"],
        label="Examples",
        interactive=False,
        wrap=True,
    )
    return ResultsSection(
        evaluation=evaluation,
        only_differing=only_differing,
        results_md=results_md,
        summary_table=summary_table,
        bars=bars,
        examples_table=examples_table,
        timer=gr.Timer(3.0),
    )


def _wire_compare_events(
    settings: Settings,
    selected: gr.Dropdown,
    tradeoffs_table: gr.Dataframe,
    evaluate: EvaluateSection,
    results: ResultsSection,
) -> None:
    private = {"api_visibility": "private"}
    selected.input(
        lambda ids: tradeoff_rows(settings, ids),
        inputs=[selected],
        outputs=[tradeoffs_table],
        **private,
    )
    evaluate_inputs = {"adapter_ids": selected, **evaluate.inputs}

    def on_evaluate(data: dict) -> tuple[str, dict]:
        return on_evaluate_click(
            settings, **{name: data[component] for name, component in evaluate_inputs.items()}
        )

    evaluate.evaluate_button.click(
        on_evaluate,
        inputs=set(evaluate_inputs.values()),
        outputs=[evaluate.evaluate_md, results.evaluation],
        **private,
    )
    evaluate.dataset.change(
        lambda d: group_choices(settings, d),
        inputs=[evaluate.dataset],
        outputs=[evaluate.group_dropdown],
        **private,
    )
    show = {
        "fn": lambda j, o: on_results_show(settings, j, o),
        "inputs": [results.evaluation, results.only_differing],
        "outputs": [
            results.summary_table,
            results.bars,
            results.examples_table,
            results.results_md,
        ],
        "show_progress": "hidden",
        **private,
    }
    results.evaluation.change(**show)
    results.only_differing.change(**show)
    results.timer.tick(**{**show, "fn": lambda j, o: on_results_tick(settings, j, o)})


def build_compare_tab(settings: Settings) -> CompareTab:
    gr.Markdown(
        "Pick adapters to set side by side: what each costs (parameters, size, memory, time) "
        "and what it gives (its newest evaluation score, and how long it takes to answer "
        "against the base model, unmerged)."
    )
    selected = gr.Dropdown(label="Adapters", choices=[], multiselect=True)
    tradeoffs_table = gr.Dataframe(headers=TRADEOFF_HEADERS, label="Trade-offs", interactive=False)
    evaluate = _build_evaluate_section()
    results = _build_results_section()
    _wire_compare_events(settings, selected, tradeoffs_table, evaluate, results)
    refresh = {
        "fn": lambda s, d, e: on_compare_refresh(settings, s, d, e),
        "inputs": [selected, evaluate.dataset, results.evaluation],
        "outputs": [selected, tradeoffs_table, evaluate.dataset, results.evaluation],
        "api_visibility": "private",
    }
    return CompareTab(
        selected=selected, dataset=evaluate.dataset, evaluation=results.evaluation, refresh=refresh
    )
