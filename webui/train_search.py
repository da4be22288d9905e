"""The Train form's settings search: its section, read into the spec, filled from a spec."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import gradio as gr

from finetune.fields import SpecError


@dataclass
class SearchInputs:
    mode: gr.Dropdown
    space: gr.Code
    trials: gr.Number


NO_SEARCH = "none"
SEARCH_MODES = [
    ("none: train once with these settings", NO_SEARCH),
    ("auto: short trials of learning rate x rank, then the rest with the best", "auto"),
    ("grid: every combination of the values below", "grid"),
    ("random: trials drawn from the values or ranges below", "random"),
]
SPACE_EXAMPLE = '{"learning_rate": [0.0003, 0.001, 0.003], "r": [8, 16]}'


def read_search(search: SearchInputs, data: dict) -> dict[str, Any] | None:
    """The settings search as the spec takes it (its values are JSON text)."""
    mode = data[search.mode]
    if mode in (None, NO_SEARCH):
        return None
    if mode == "auto":
        return {"mode": mode}
    text = (data[search.space] or "").strip()
    try:
        space = json.loads(text) if text else None
    except json.JSONDecodeError as exc:
        raise SpecError(f"search.space: not valid JSON ({exc.msg}); e.g. {SPACE_EXAMPLE}") from None
    read = {"mode": mode, "space": space}
    if mode == "random":
        read["trials"] = int(data[search.trials] or 0)
    return read


def fill_search(search: SearchInputs, spec_search: dict) -> dict:
    """The section set to a spec's search (a cloned job's): {component: update}."""
    updates = {search.mode: gr.update(value=spec_search.get("mode") or NO_SEARCH)}
    if spec_search.get("space"):
        space = {
            path.split(".", 1)[-1]: {k: v for k, v in values.items() if k != "whole"}
            if isinstance(values, dict)
            else values
            for path, values in spec_search["space"].items()
        }
        updates[search.space] = gr.update(value=json.dumps(space))
    if spec_search.get("trials"):
        updates[search.trials] = gr.update(value=spec_search["trials"])
    return updates


def build_search_section() -> SearchInputs:
    with gr.Accordion("Settings search", open=False), gr.Row():
        return SearchInputs(
            mode=gr.Dropdown(
                choices=SEARCH_MODES,
                value=NO_SEARCH,
                label="Search",
                info="Trials are ordinary jobs under one search job; the best has the "
                "lowest eval loss at its end.",
                scale=2,
            ),
            space=gr.Code(
                value=SPACE_EXAMPLE,
                language="json",
                label="Values to try (grid, random): training or method fields; random "
                'also takes ranges, {"min": 1e-5, "max": 1e-2, "log": true}',
                lines=2,
                scale=3,
            ),
            trials=gr.Number(value=8, label="Trials (random)", precision=0, minimum=2),
        )
