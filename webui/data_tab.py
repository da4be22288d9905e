"""Data tab: add files, a Hub dataset or a sample; see what is wrong, row by row, and exactly
what the model will see (chat template applied, the tokens that carry loss marked)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import gradio as gr

import service
from config import Settings
from errors import UserError
from finetune.data import SCHEMAS, BadRows, problems_json
from finetune.sources import ARCHIVES, SUFFIXES
from webui.choices import dataset_choices
from webui.data_sections import (
    NOT_MAPPED,
    SLOTS,
    CheckSection,
    PreviewSection,
    SourceSection,
    build_check_section,
    build_preview_section,
    build_source_section,
)
from webui.data_view import bad_rows_table, describe, examples_html, histogram_html

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


@dataclass
class DataSections:
    source: SourceSection
    check: CheckSection
    preview: PreviewSection
    dataset: gr.Dropdown  # the stored dataset to preview or delete
    delete_button: gr.Button
    table: gr.Dataframe
    columns: gr.State  # the columns found in the files or the Hub dataset

    def upload_inputs(self) -> set:
        source, check, preview = self.source, self.check, self.preview
        return {
            source.files,
            source.eval_files,
            source.hub_id,
            source.hub_split,
            source.hub_subset,
            source.name,
            check.schema,
            check.on_bad,
            check.labels,
            check.text_mode,
            check.check_length,
            preview.model,
            preview.max_length,
            *check.slots,
        }


def upload_options(tab: DataSections, data: dict) -> dict:
    """How to read and check the upload, as service.upload_dataset takes it."""
    source, check, preview = tab.source, tab.check, tab.preview
    schema_id = data[check.schema] or ""
    return {
        "format": schema_id,
        "mapping": read_mapping(schema_id, [data[s] for s in check.slots]) if schema_id else {},
        "on_bad_rows": data[check.on_bad],
        "labels": [x.strip() for x in (data[check.labels] or "").split(",") if x.strip()],
        "text_mode": data[check.text_mode],
        "base_model": (data[preview.model] or "") if data[check.check_length] else "",
        "max_length": int(data[preview.max_length] or service.DEFAULT_MAX_LENGTH),
        "hub_id": (data[source.hub_id] or "").strip(),
        "hub_split": data[source.hub_split] or "train",
        "hub_subset": data[source.hub_subset] or "",
    }


def on_upload_click(settings: Settings, tab: DataSections, data: dict) -> tuple:
    """The form's values ({component: value}) checked and stored; -> as on_upload."""
    return on_upload(
        settings,
        data[tab.source.files],
        data[tab.source.name],
        upload_options(tab, data),
        data[tab.source.eval_files],
        data[tab.preview.model],
        data[tab.preview.max_length],
    )


def on_schema_input(schema_id: str, columns: list[str], *values: str | None) -> list:
    """Another schema chosen: its fields mapped, keeping what was mapped and same-named columns."""
    current = read_mapping(schema_id, list(values))
    same = {f: f for f in _fields(schema_id) if f in columns}
    return mapping_updates(schema_id, columns, {**same, **current})


def _wire_source_events(settings: Settings, tab: DataSections) -> None:
    """Files chosen or a Hub id entered: columns read, the schema detected, the mapping offered."""
    source, check, private = tab.source, tab.check, {"api_visibility": "private"}
    inspect_outputs = [tab.preview.message, check.schema, tab.columns, *check.slots]
    source.files.change(
        lambda paths, mode: on_source_change(settings, paths, {"text_mode": mode}),
        [source.files, check.text_mode],
        inspect_outputs,
        **private,
    )
    source.hub_id.submit(
        lambda hub, split, subset: on_source_change(
            settings, None, {"hub_id": hub.strip(), "hub_split": split, "hub_subset": subset}
        ),
        [source.hub_id, source.hub_split, source.hub_subset],
        inspect_outputs,
        **private,
    )
    check.schema.input(
        on_schema_input, [check.schema, tab.columns, *check.slots], check.slots, **private
    )


def _wire_dataset_events(settings: Settings, tab: DataSections) -> None:
    """Add (an upload or a sample), preview and delete: each shows the dataset's state after."""
    check, preview, private = tab.check, tab.preview, {"api_visibility": "private"}
    outputs = [
        preview.message,
        preview.bad_rows,
        preview.examples,
        preview.histogram,
        tab.dataset,
        tab.table,
    ]
    check.upload_button.click(
        lambda data: on_upload_click(settings, tab, data), tab.upload_inputs(), outputs, **private
    )
    check.sample_button.click(
        lambda key, m, n: on_sample(settings, key, m, n),
        [check.sample, preview.model, preview.max_length],
        outputs,
        **private,
    )
    for trigger in (tab.dataset.input, preview.model.input, preview.max_length.submit):
        trigger(
            lambda d, m, n: show_dataset(settings, d, m, n),
            [tab.dataset, preview.model, preview.max_length],
            [preview.message, preview.bad_rows, preview.examples, preview.histogram],
            **private,
        )
    tab.delete_button.click(
        lambda dataset_id: on_delete_click(settings, dataset_id),
        [tab.dataset],
        [
            preview.message,
            tab.dataset,
            tab.table,
            preview.examples,
            preview.histogram,
            preview.bad_rows,
        ],
        **private,
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
            source = build_source_section()
            check = build_check_section()
        with gr.Column(scale=2):
            preview = build_preview_section(settings)
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
    tab = DataSections(
        source=source,
        check=check,
        preview=preview,
        dataset=dataset,
        delete_button=delete_button,
        table=table,
        columns=gr.State([]),
    )
    _wire_source_events(settings, tab)
    _wire_dataset_events(settings, tab)
    return DataTab(datasets_table=table, dataset_dropdown=dataset, message_md=preview.message)
