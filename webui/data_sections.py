"""The Data tab's sections, each built into a small dataclass of its components: where the rows
come from, how they are read and checked, and the preview."""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

import service
from config import Settings
from finetune.data import SCHEMAS
from finetune.samples import SAMPLES
from finetune.sources import ARCHIVES, SUFFIXES
from webui.data_view import BAD_ROW_HEADERS
from webui.forms import base_model_dropdown

SLOTS = max(len(s.fields) + len(s.optional) for s in SCHEMAS.values())  # mapping dropdowns
NOT_MAPPED = "(none)"


@dataclass
class SourceSection:
    """Where the rows come from: files, an eval file, or a Hub dataset; and the dataset's name."""

    files: gr.File
    eval_files: gr.File
    hub_id: gr.Textbox
    hub_split: gr.Textbox
    hub_subset: gr.Textbox
    name: gr.Textbox


@dataclass
class CheckSection:
    """How the rows are read and checked, and the buttons that add a dataset."""

    schema: gr.Dropdown
    slots: list[gr.Dropdown]  # the mapping: one dropdown per schema field (SLOTS of them)
    on_bad: gr.Radio
    labels: gr.Textbox
    text_mode: gr.Radio
    check_length: gr.Checkbox
    upload_button: gr.Button
    sample: gr.Dropdown
    sample_button: gr.Button


@dataclass
class PreviewSection:
    """What the model will see of a dataset, and what is wrong with it."""

    model: gr.Dropdown
    max_length: gr.Number
    message: gr.Markdown
    bad_rows: gr.Dataframe
    examples: gr.HTML
    histogram: gr.HTML


def build_source_section() -> SourceSection:
    files = gr.File(
        label="Dataset files",
        file_count="multiple",
        file_types=list(SUFFIXES + ARCHIVES),
        type="filepath",
    )
    with gr.Accordion("Eval file (optional; else each job splits off eval rows)", open=False):
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
    return SourceSection(
        files=files,
        eval_files=eval_files,
        hub_id=hub_id,
        hub_split=hub_split,
        hub_subset=hub_subset,
        name=gr.Textbox(label="Name (optional)", placeholder="my dataset"),
    )


def build_check_section() -> CheckSection:
    schema = gr.Dropdown(
        choices=[("detect", ""), *[(f"{k}: {s.label}", k) for k, s in SCHEMAS.items()]],
        value="",
        label="Schema",
    )
    slots = [
        gr.Dropdown(visible=False, choices=[NOT_MAPPED], value=NOT_MAPPED) for _ in range(SLOTS)
    ]
    on_bad = gr.Radio(
        choices=[("Refuse the file", "refuse"), ("Drop bad rows", "drop")],
        value="refuse",
        label="If some rows cannot be used",
    )
    with gr.Accordion("More options", open=False):
        labels = gr.Textbox(label="Allowed labels (classification; comma separated, optional)")
        text_mode = gr.Radio(
            choices=[("One example per blank-line block", "blocks"), ("One per file", "file")],
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
    return CheckSection(
        schema=schema,
        slots=slots,
        on_bad=on_bad,
        labels=labels,
        text_mode=text_mode,
        check_length=check_length,
        upload_button=upload_button,
        sample=sample,
        sample_button=sample_button,
    )


def build_preview_section(settings: Settings) -> PreviewSection:
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
    return PreviewSection(
        model=model,
        max_length=max_length,
        message=message,
        bad_rows=bad_rows,
        examples=gr.HTML(),
        histogram=gr.HTML(),
    )
