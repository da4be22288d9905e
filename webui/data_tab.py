"""Data tab: upload a file or pick a bundled sample, see its rows or exactly what is wrong."""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from finetune.samples import SAMPLES
from storage.settings import Settings
from webui import actions


@dataclass
class DataTab:
    datasets_table: gr.Dataframe
    message_md: gr.Markdown


def datasets_rows(settings: Settings) -> list[list]:
    return [[d["name"], d["id"], d["format"], d["rows"]] for d in actions.list_datasets(settings)]


def describe(info: dict, preview: list[dict]) -> str:
    lines = [
        f"**{info['name']}** (`{info['id']}`): {info['rows']:,} rows, format `{info['format']}`, "
        f"columns: {', '.join(info['columns'])}."
    ]
    lines += [f"- Warning: {w}" for w in info["warnings"]]
    lines.append("\nFirst rows, as chat turns:")
    for i, row in enumerate(preview, start=1):
        turns = " → ".join(f"*{t['role']}*: {t['content'][:160]}" for t in row["messages"])
        lines.append(f"{i}. {turns}")
    return "\n".join(lines)


def on_upload_click(settings: Settings, file_path: str | None, name: str):
    try:
        info = actions.upload_dataset(settings, file_path, name)
    except (ValueError, LookupError) as exc:
        return f"**Not stored.** {exc}", gr.update()
    preview = actions.preview_dataset(settings, info["id"])
    return "**Stored.** " + describe(info, preview), datasets_rows(settings)


def on_sample_click(settings: Settings, sample: str):
    info = actions.add_sample(settings, sample)
    preview = actions.preview_dataset(settings, info["id"])
    return "**Stored.** " + describe(info, preview), datasets_rows(settings)


def build_data_tab(settings: Settings) -> DataTab:
    gr.Markdown(
        "Upload a **JSON, JSONL, CSV or TSV** file with `messages` (chat turns), alpaca columns "
        "(`instruction`, optional `input`, `output`) or `prompt` / `completion`; or pick a sample."
    )
    with gr.Row():
        with gr.Column():
            upload_file = gr.File(
                label="Dataset file",
                file_types=[".json", ".jsonl", ".csv", ".tsv"],
                type="filepath",
            )
            name_text = gr.Textbox(label="Name (optional)", placeholder="my dataset")
            upload_button = gr.Button("Upload", variant="primary")
        with gr.Column():
            sample_dropdown = gr.Dropdown(
                choices=[(label, key) for key, (label, _) in SAMPLES.items()],
                value="arithmetic",
                label="Bundled sample",
            )
            sample_button = gr.Button("Use this sample")
    message_md = gr.Markdown()
    datasets_table = gr.Dataframe(
        headers=["name", "id", "format", "rows"],
        label="Datasets",
        interactive=False,
    )
    upload_button.click(
        lambda f, n: on_upload_click(settings, f, n),
        inputs=[upload_file, name_text],
        outputs=[message_md, datasets_table],
        api_visibility="private",
    )
    sample_button.click(
        lambda s: on_sample_click(settings, s),
        inputs=[sample_dropdown],
        outputs=[message_md, datasets_table],
        api_visibility="private",
    )
    return DataTab(datasets_table=datasets_table, message_md=message_md)
