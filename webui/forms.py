"""Form components built from registry fields, and reading their values back by name."""

from __future__ import annotations

from typing import Any

import gradio as gr

from finetune.fields import Field


def field_component(field: Field, value: Any = None):
    """The component for one field; `value` overrides the field's default in the form."""
    value = field.default if value is None else value
    if field.kind is bool:
        return gr.Checkbox(value=value, label=field.label, info=field.help)
    if field.kind is list:
        return gr.Dropdown(
            choices=list(value or []),
            value=list(value or []),
            multiselect=True,
            allow_custom_value=True,
            label=field.label,
            info=field.help,
        )
    if field.kind is str and field.choices:
        return gr.Dropdown(
            choices=list(field.choices), value=value, label=field.label, info=field.help
        )
    if field.kind in (int, float):
        # A number box cannot be empty: for an optional field, 0 stands for "not set".
        return gr.Number(
            value=0 if value is None and field.optional else value,
            label=field.label,
            info=f"{field.help} (0: not set)" if field.optional else field.help,
            # Gradio checks bounds before the handler: 0 ("not set") must pass them.
            minimum=None if field.optional else field.minimum,
            maximum=field.maximum,
            precision=0 if field.kind is int else None,
        )
    return gr.Textbox(value=value, label=field.label, info=field.help)


def read_values(fields: tuple[Field, ...], components: dict[str, Any], data: dict) -> dict:
    """{field name: value} from a handler's {component: value} input (never by position)."""
    values = {}
    for field in fields:
        value = data[components[field.name]]
        values[field.name] = None if field.optional and value in (0, None) else value
    return values


def base_model_dropdown(models_dir, info: str | None = None) -> gr.Dropdown:
    """Prepared models to pick from, or any local folder / Hub id typed in."""
    from finetune.models import list_local_models

    models = list_local_models(models_dir)
    return gr.Dropdown(
        choices=models,
        value=models[0] if models else None,
        allow_custom_value=True,
        label="Base model",
        info=info,
    )
