"""Data tab: add files, a Hub dataset or a sample; see what is wrong, row by row, and exactly
what the model will see (chat template applied, the tokens that carry loss marked)."""

from __future__ import annotations

import html
import time
from dataclasses import dataclass
from typing import Any

import gradio as gr

import service
from config import Settings
from errors import UserError
from finetune.data import SCHEMAS, BadRows, problems_json
from finetune.samples import SAMPLES
from finetune.sources import ARCHIVES, SUFFIXES
from webui.forms import base_model_dropdown

SLOTS = max(len(s.fields) + len(s.optional) for s in SCHEMAS.values())  # mapping dropdowns
NOT_MAPPED = "(none)"
BAD_ROW_HEADERS = ["file", "row", "column", "problem"]
CSS = """
.al-example { white-space: pre-wrap; font-family: ui-monospace, monospace; font-size: 12px;
  border: 1px solid var(--border-color-primary); border-radius: 6px; padding: 8px; margin: 6px 0; }
.al-prompt { color: var(--body-text-color-subdued); }
.al-loss { background: #d9f2d9; color: #0b4f0b; }
.al-cut { background: #f9d6d5; color: #7a1a17; text-decoration: line-through; }
.al-hist { display: flex; align-items: flex-end; gap: 2px; height: 120px; margin-top: 6px; }
.al-bar { flex: 1; background: #f59e0b; min-height: 1px; }
.al-bar.over { background: #dc2626; }
.al-axis { display: flex; justify-content: space-between; font-size: 11px; opacity: .7; }
"""


@dataclass
class DataTab:
    datasets_table: gr.Dataframe
    dataset_dropdown: gr.Dropdown
    message_md: gr.Markdown


def datasets_rows(settings: Settings) -> list[list]:
    return [
        [
            d["name"],
            d["id"],
            d["format"],
            d["rows"],
            d["eval_rows"],
            d["dropped_rows"],
            time.strftime("%Y-%m-%d %H:%M", time.localtime(d["created_at"])),
        ]
        for d in service.list_datasets(settings)
    ]


def dataset_choices(settings: Settings) -> list[tuple[str, str]]:
    return [(f"{d['name']} ({d['rows']:,} rows)", d["id"]) for d in service.list_datasets(settings)]


def _fields(schema_id: str) -> list[str]:
    schema = SCHEMAS.get(schema_id)
    return list(schema.fields + schema.optional) if schema else []


def mapping_updates(schema_id: str, columns: list[str], mapping: dict[str, str]) -> list:
    """One dropdown per schema field (required ones marked), each offering the file's columns."""
    names = _fields(schema_id)
    required = SCHEMAS[schema_id].fields if schema_id in SCHEMAS else ()
    updates = []
    for slot in range(SLOTS):
        if slot < len(names):
            name = names[slot]
            updates.append(
                gr.update(
                    visible=True,
                    label=f"{name} ←" + ("" if name in required else " (optional)"),
                    choices=[NOT_MAPPED, *columns],
                    value=mapping.get(name) or NOT_MAPPED,
                )
            )
        else:
            updates.append(gr.update(visible=False, value=NOT_MAPPED))
    return updates


def read_mapping(schema_id: str, values: list[str | None]) -> dict[str, str]:
    return {
        name: value
        for name, value in zip(_fields(schema_id), values, strict=False)
        if value and value != NOT_MAPPED
    }


def bad_rows_table(problems: list[dict], stored: bool = False) -> Any:
    """The problem rows; a file column only when the upload had several files."""
    import pandas as pd

    if not problems:
        return gr.update(value=None, visible=False)
    several = any(p.get("source") for p in problems)
    rows = [
        ([p["source"]] if several else []) + [p["row"], p["column"] or "(whole row)", p["problem"]]
        for p in problems
    ]
    headers = BAD_ROW_HEADERS if several else BAD_ROW_HEADERS[1:]
    label = f"Rows dropped ({len(problems):,})" if stored else "Rows that cannot be used"
    return gr.update(value=pd.DataFrame(rows, columns=headers), visible=True, label=label)


def examples_html(examples: list[dict]) -> str:
    blocks = []
    for i, ex in enumerate(examples, start=1):
        body = "".join(
            f'<span class="al-{s["kind"]}">{html.escape(s["text"])}</span>' for s in ex["segments"]
        )
        note = " · <b>dropped by training: the prompt fills max length</b>" if ex["dropped"] else ""
        blocks.append(
            f"<div><small>Example {i}: {ex['tokens']} tokens = {ex['prompt_tokens']} prompt + "
            f"{ex['loss_tokens']} with loss"
            + (f" + {ex['cut_tokens']} cut by max length" if ex["cut_tokens"] else "")
            + f"{note}</small><div class='al-example'>{body}</div></div>"
        )
    legend = (
        "<small>Legend: <span class='al-prompt'>prompt (no loss)</span> · "
        "<span class='al-loss'>trained on (loss)</span> · "
        "<span class='al-cut'>cut by max length</span></small>"
    )
    return legend + "".join(blocks)


def histogram_html(stats: dict) -> str:
    hist, limit = stats["histogram"], stats["max_length"]
    top = max(hist["counts"]) or 1
    bars = "".join(
        f'<div class="al-bar{" over" if hist["edges"][i + 1] - 1 > limit else ""}" '
        f'title="{hist["edges"][i]}-{hist["edges"][i + 1] - 1} tokens: {c} rows" '
        f'style="height:{100 * c / top:.1f}%"></div>'
        for i, c in enumerate(hist["counts"])
    )
    edges = hist["edges"]
    over = stats["truncated_rows"] + stats["chunked_rows"]
    return (
        f"<div><small>Tokens per row: {edges[0]} to {edges[-1] - 1}"
        + (f"; red: past max length {limit} ({over:,} rows)" if over else "")
        + f"</small><div class='al-hist'>{bars}</div>"
        f"<div class='al-axis'><span>{edges[0]}</span>"
        f"<span>{(edges[0] + edges[-1]) // 2}</span><span>{edges[-1]} tokens</span></div></div>"
    )


def describe(preview: dict) -> str:
    info = preview["dataset"]
    lines = [
        f"**{info['name']}** (`{info['id']}`): {info['rows']:,} training rows"
        + (f", {info['eval_rows']:,} eval rows (its own split)" if info["eval_rows"] else "")
        + f"; schema `{info['format']}`"
        + (f", {info['dropped_rows']:,} bad rows dropped" if info["dropped_rows"] else "")
        + ".",
        "Mapping: " + ", ".join(f"{k} ← `{v}`" for k, v in info["mapping"].items()) + ".",
    ]
    content = info["stats"]
    if content.get("turns_mean"):
        lines.append(
            f"Turns per row: {content['turns_mean']} (max {content['turns_max']}); "
            f"characters per row: {content['chars_mean']:,} (max {content['chars_max']:,})."
        )
    if content.get("labels"):
        lines.append(f"Labels: {', '.join(content['labels'])}.")
    stats = preview.get("token_stats")
    if stats:
        sample = f" (from a sample of {stats['rows_measured']:,})" if stats["sampled"] else ""
        lines.append(
            f"Tokens per row{sample}: mean {stats['tokens_mean']}, median {stats['tokens_p50']}, "
            f"95% {stats['tokens_p95']}, max {stats['tokens_max']}. "
            f"Max length {stats['max_length']} truncates **{stats['truncated_rows']:,}** rows"
            + (f" and splits {stats['chunked_rows']:,} long texts" if stats["chunked_rows"] else "")
            + f"; {stats['tokens_per_epoch']:,} tokens per epoch"
            + (
                f", about {_duration(stats['seconds_per_epoch'])} per epoch at the "
                f"{stats['tokens_per_s_history']:,} tokens/s of past jobs on this model."
                if stats["seconds_per_epoch"]
                else " (no past job on this model to time an epoch by)."
            )
        )
    lines += [f"- Warning: {w}" for w in info["warnings"]]
    return "\n\n".join(lines)


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


def show_dataset(settings: Settings, dataset_id: str | None, base_model: str, max_length: int):
    """Message, bad rows, examples, stats and histogram of a stored dataset."""
    if not dataset_id:
        return "", bad_rows_table([]), "", ""
    try:
        preview = service.preview_dataset(settings, dataset_id, base_model or "", max_length)
    except UserError as exc:
        return f"**Cannot preview.** {exc}", bad_rows_table([]), "", ""
    examples = examples_html(preview.get("examples", []))
    hist = histogram_html(preview["token_stats"]) if "token_stats" in preview else ""
    return describe(preview), bad_rows_table(preview["bad_rows"], stored=True), examples, hist


def _stored(settings: Settings, info: dict, model_name: str, length: int) -> tuple:
    text, bad_update, ex_html, hist_html = show_dataset(settings, info["id"], model_name, length)
    head = "**Already here.** " if info.get("existing") else "**Stored.** "
    return (
        head + text,
        bad_update,
        ex_html,
        hist_html,
        gr.update(choices=dataset_choices(settings), value=info["id"]),
        datasets_rows(settings),
    )


def _not_stored(message: str, problems: list[dict] | None = None) -> tuple:
    return message, bad_rows_table(problems or []), "", "", gr.update(), gr.update()


def on_upload(
    settings: Settings,
    paths: Any,
    name: str,
    options: dict,
    eval_paths: Any,
    model_name: str,
    length: int,
) -> tuple:
    """-> message, bad-rows table, examples, histogram, dataset dropdown, datasets table."""
    try:
        info = service.upload_dataset(settings, paths, name, options, eval_paths)
    except BadRows as exc:
        problems = problems_json(exc.problems[: service.datasets.BAD_ROWS_KEPT])
        return _not_stored(
            f"**Not stored.** {len(exc.problems):,} of {exc.total:,} rows cannot be used; they "
            "are listed below. Fix the file, or choose **Drop bad rows** and add it again.",
            problems,
        )
    except UserError as exc:
        return _not_stored(f"**Not stored.** {exc}")
    return _stored(settings, info, model_name, length)


def on_sample(settings: Settings, key: str, model_name: str, length: int) -> tuple:
    try:
        info = service.add_sample(settings, key)
    except UserError as exc:
        return _not_stored(f"**Not stored.** {exc}")
    return _stored(settings, info, model_name, length)


def on_source_change(settings: Settings, paths: Any, options: dict) -> tuple:
    """Files chosen (or a Hub id entered): the columns, the detected schema and its mapping.

    -> message, schema dropdown, columns state, one update per mapping dropdown.
    """
    if not paths and not options.get("hub_id"):
        return "", gr.update(value=""), [], *mapping_updates("", [], {})
    try:
        found = service.inspect_columns(settings, paths, options)
    except UserError as exc:
        return f"**Cannot read it.** {exc}", gr.update(), [], *mapping_updates("", [], {})
    note = (
        f"Detected schema `{found['format']}`; check the mapping, then **Check and add**."
        if found["format"]
        else "No schema detected from the columns "
        f"({', '.join(found['columns'])}): choose one and map its fields."
    )
    return (
        note,
        gr.update(value=found["format"]),
        found["columns"],
        *mapping_updates(found["format"], found["columns"], found["mapping"]),
    )


def on_delete_click(settings: Settings, dataset_id: str | None) -> tuple:
    """-> message, dataset dropdown, datasets table, examples, histogram, bad-rows table."""
    if not dataset_id:
        return "Choose a dataset to delete.", *(gr.update(),) * 5
    try:
        service.delete_dataset(settings, dataset_id)
    except UserError as exc:
        return f"**Not deleted.** {exc}", *(gr.update(),) * 5
    return (
        f"Deleted `{dataset_id}`.",
        gr.update(choices=dataset_choices(settings), value=None),
        datasets_rows(settings),
        "",
        "",
        bad_rows_table([]),
    )


def build_data_tab(settings: Settings) -> DataTab:
    kinds = ", ".join(s.lstrip(".").upper() for s in SUFFIXES + ARCHIVES)
    gr.Markdown(
        f"Add **{kinds}** files (several make one dataset), a Hub dataset, or a sample. The "
        "schema is detected; change it or the column mapping below. Every row is checked "
        "before anything is stored."
    )
    with gr.Row():
        with gr.Column(scale=1):
            files = gr.File(
                label="Dataset files",
                file_count="multiple",
                file_types=list(SUFFIXES + ARCHIVES),
                type="filepath",
            )
            with gr.Accordion(
                "Eval file (optional; else each job splits off eval rows)", open=False
            ):
                eval_files = gr.File(
                    label="Eval file",
                    file_count="multiple",
                    file_types=list(SUFFIXES + ARCHIVES),
                    type="filepath",
                )
            with gr.Accordion("From the Hugging Face Hub", open=False):
                hub_id = gr.Textbox(label="Dataset id", placeholder="owner/name")
                with gr.Row():
                    hub_split = gr.Textbox(label="Split", value="train")
                    hub_subset = gr.Textbox(label="Subset (optional)")
            name = gr.Textbox(label="Name (optional)", placeholder="my dataset")
            schema = gr.Dropdown(
                choices=[("detect", ""), *[(f"{k}: {s.label}", k) for k, s in SCHEMAS.items()]],
                value="",
                label="Schema",
            )
            slots = [
                gr.Dropdown(visible=False, choices=[NOT_MAPPED], value=NOT_MAPPED)
                for _ in range(SLOTS)
            ]
            on_bad = gr.Radio(
                choices=[("Refuse the file", "refuse"), ("Drop bad rows", "drop")],
                value="refuse",
                label="If some rows cannot be used",
            )
            with gr.Accordion("More options", open=False):
                labels = gr.Textbox(
                    label="Allowed labels (classification; comma separated, optional)"
                )
                text_mode = gr.Radio(
                    choices=[
                        ("One example per blank-line block", "blocks"),
                        ("One per file", "file"),
                    ],
                    value="blocks",
                    label=".txt files",
                )
                check_length = gr.Checkbox(
                    value=True, label="Flag rows longer than max length, in the model's tokens"
                )
            upload_button = gr.Button("Check and add", variant="primary")
            with gr.Row():
                sample = gr.Dropdown(
                    choices=[(s.label, key) for key, s in SAMPLES.items()],
                    value="arithmetic",
                    label="Bundled sample",
                    scale=3,
                )
                sample_button = gr.Button("Use this sample", scale=2)
        with gr.Column(scale=2):
            with gr.Row():
                model = base_model_dropdown(
                    settings.models_dir, "Its chat template and tokenizer are used for the preview"
                )
                max_length = gr.Number(
                    value=service.DEFAULT_MAX_LENGTH,
                    precision=0,
                    label="Max length to check and preview (tokens)",
                )
            message = gr.Markdown()
            bad_rows = gr.Dataframe(
                headers=BAD_ROW_HEADERS,
                label="Rows that cannot be used",
                visible=False,
                wrap=True,
                elem_id="bad-rows",
            )
            examples = gr.HTML()
            histogram = gr.HTML()
    with gr.Row():
        dataset = gr.Dropdown(
            label="Dataset", choices=dataset_choices(settings), value=None, scale=3
        )
        delete_button = gr.Button("Delete dataset", variant="stop", scale=1)
    table = gr.Dataframe(
        headers=["name", "id", "schema", "rows", "eval rows", "dropped", "created"],
        label="Datasets",
        interactive=False,
    )
    columns = gr.State([])
    private = {"api_visibility": "private"}

    inspect_outputs = [message, schema, columns, *slots]
    files.change(
        lambda paths, mode: on_source_change(settings, paths, {"text_mode": mode}),
        [files, text_mode],
        inspect_outputs,
        **private,
    )
    hub_id.submit(
        lambda hub, split, subset: on_source_change(
            settings, None, {"hub_id": hub.strip(), "hub_split": split, "hub_subset": subset}
        ),
        [hub_id, hub_split, hub_subset],
        inspect_outputs,
        **private,
    )

    def on_schema(schema_id, cols, *values):
        current = read_mapping(schema_id, list(values))
        same = {f: f for f in _fields(schema_id) if f in cols}
        return mapping_updates(schema_id, cols, {**same, **current})

    schema.input(on_schema, [schema, columns, *slots], slots, **private)

    form = {
        files,
        eval_files,
        hub_id,
        hub_split,
        hub_subset,
        name,
        schema,
        on_bad,
        labels,
        text_mode,
        check_length,
        model,
        max_length,
        *slots,
    }

    def on_upload_click(data: dict) -> tuple:
        schema_id = data[schema] or ""
        options = {
            "format": schema_id,
            "mapping": read_mapping(schema_id, [data[s] for s in slots]) if schema_id else {},
            "on_bad_rows": data[on_bad],
            "labels": [x.strip() for x in (data[labels] or "").split(",") if x.strip()],
            "text_mode": data[text_mode],
            "base_model": (data[model] or "") if data[check_length] else "",
            "max_length": int(data[max_length] or service.DEFAULT_MAX_LENGTH),
            "hub_id": (data[hub_id] or "").strip(),
            "hub_split": data[hub_split] or "train",
            "hub_subset": data[hub_subset] or "",
        }
        return on_upload(
            settings,
            data[files],
            data[name],
            options,
            data[eval_files],
            data[model],
            data[max_length],
        )

    outputs = [message, bad_rows, examples, histogram, dataset, table]
    upload_button.click(on_upload_click, form, outputs, **private)
    sample_button.click(
        lambda key, m, n: on_sample(settings, key, m, n),
        [sample, model, max_length],
        outputs,
        **private,
    )
    preview_inputs = [dataset, model, max_length]
    preview_outputs = [message, bad_rows, examples, histogram]
    for trigger in (dataset.input, model.input, max_length.submit):
        trigger(
            lambda d, m, n: show_dataset(settings, d, m, n),
            preview_inputs,
            preview_outputs,
            **private,
        )

    delete_button.click(
        lambda dataset_id: on_delete_click(settings, dataset_id),
        [dataset],
        [message, dataset, table, examples, histogram, bad_rows],
        **private,
    )
    return DataTab(datasets_table=table, dataset_dropdown=dataset, message_md=message)
