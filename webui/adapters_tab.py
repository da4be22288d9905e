"""Adapters tab: every trained adapter, with its counts, downloadable as a .zip."""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from storage.settings import Settings
from webui import actions


@dataclass
class AdaptersTab:
    adapters_table: gr.Dataframe
    adapter_dropdown: gr.Dropdown


def adapters_rows(settings: Settings) -> list[list]:
    return [
        [
            a["name"],
            a["id"],
            a["method"],
            a["base_model"],
            f"{a['trainable_params']:,}" if a["trainable_params"] else "",
            f"{(a['size_bytes'] or 0) / 2**20:.2f} MiB",
        ]
        for a in actions.list_adapters(settings)
    ]


def on_download_click(settings: Settings, adapter_id: str | None):
    if not adapter_id:
        raise gr.Error("Pick an adapter first.")
    try:
        return gr.update(value=str(actions.download_adapter(settings, adapter_id)), visible=True)
    except (ValueError, LookupError) as exc:
        raise gr.Error(str(exc)) from None


def build_adapters_tab(settings: Settings) -> AdaptersTab:
    adapters_table = gr.Dataframe(
        headers=["name", "id", "method", "base model", "trainable", "size on disk"],
        label="Adapters",
        interactive=False,
    )
    with gr.Row():
        adapter_dropdown = gr.Dropdown(label="Adapter", choices=[], scale=2)
        zip_button = gr.Button("Prepare .zip")
        zip_file = gr.File(label="Download", interactive=False, scale=2, visible=False)
    zip_button.click(
        lambda a: on_download_click(settings, a),
        inputs=[adapter_dropdown],
        outputs=[zip_file],
        api_visibility="private",
    )
    return AdaptersTab(adapters_table=adapters_table, adapter_dropdown=adapter_dropdown)
