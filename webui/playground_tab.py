"""Playground tab: the base model and an adapter answer the same prompt, side by side."""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from storage.settings import Settings
from webui import actions
from webui.forms import base_model_dropdown


@dataclass
class PlaygroundTab:
    adapter_dropdown: gr.Dropdown


def adapter_choices(settings: Settings) -> list[tuple[str, str]]:
    return [(f"{a['name']} · {a['id']}", a["id"]) for a in actions.list_adapters(settings)]


def on_generate_click(
    settings: Settings,
    base_model: str,
    adapter_id: str | None,
    prompt: str,
    system_prompt: str,
    max_new_tokens: float,
    temperature: float,
    seed: float,
):
    params = {
        "max_new_tokens": int(max_new_tokens or 64),
        "temperature": float(temperature or 0),
        "seed": int(seed or 0),
        "system_prompt": system_prompt or "",
    }
    ids = [None, adapter_id] if adapter_id else [None]
    try:
        outputs = actions.generate(settings, base_model, ids, prompt, params)["outputs"]
    except (ValueError, LookupError) as exc:
        return f"Error: {exc}", ""
    texts = [_caption(o) for o in outputs]
    return texts[0], texts[1] if len(texts) > 1 else "(pick an adapter to compare)"


def on_adapter_change(settings: Settings, adapter_id: str | None) -> str:
    """The system message the adapter was trained with: answers depend on it."""
    if not adapter_id:
        return ""
    try:
        return actions.training_system_prompt(settings, adapter_id)
    except (ValueError, LookupError):
        return ""


def _caption(output: dict) -> str:
    speed = f", {output['tokens_per_s']} tokens/s" if output.get("tokens_per_s") else ""
    return f"{output['text']}\n\n— {output['seconds']} s{speed}"


def build_playground_tab(settings: Settings) -> PlaygroundTab:
    with gr.Row():
        base_model = base_model_dropdown(settings.models_dir)
        choices = adapter_choices(settings)
        adapter_dropdown = gr.Dropdown(
            choices=choices, value=choices[0][1] if choices else None, label="Adapter"
        )
    prompt_text = gr.Textbox(label="Prompt", value="What is 47 + 85?", lines=3)
    system_text = gr.Textbox(
        label="System prompt (optional)",
        info="Filled in with the one the adapter was trained with; empty uses the model's own.",
    )
    with gr.Row():
        max_tokens_number = gr.Number(
            value=48, label="Max new tokens", minimum=1, maximum=2048, precision=0
        )
        temperature_number = gr.Number(
            value=0.0, label="Temperature (0 = greedy)", minimum=0, maximum=5
        )
        seed_number = gr.Number(value=0, label="Seed", precision=0)
    generate_button = gr.Button("Generate", variant="primary")
    with gr.Row():
        base_text = gr.Textbox(label="Base model", lines=8, interactive=False)
        adapter_text = gr.Textbox(label="With adapter", lines=8, interactive=False)
    adapter_dropdown.change(
        lambda a: on_adapter_change(settings, a),
        inputs=[adapter_dropdown],
        outputs=[system_text],
        api_visibility="private",
    )
    generate_button.click(
        lambda *v: on_generate_click(settings, *v),
        inputs=[
            base_model,
            adapter_dropdown,
            prompt_text,
            system_text,
            max_tokens_number,
            temperature_number,
            seed_number,
        ],
        outputs=[base_text, adapter_text],
        api_visibility="private",
    )
    return PlaygroundTab(adapter_dropdown=adapter_dropdown)
