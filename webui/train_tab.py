"""Train tab: base model, dataset, method fields (from the registry), parameter count, Start."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gradio as gr

from finetune.counts import linear_module_names
from finetune.methods import METHODS, get_method
from finetune.models import resolve_model
from finetune.spec import TRAINING_FIELDS
from storage.settings import Settings
from storage.store import Store
from webui import actions
from webui.data_tab import dataset_choices
from webui.forms import base_model_dropdown, field_component, read_values

# A first run of a few minutes on a CPU with the bundled model; the API's defaults stay neutral.
FORM_DEFAULTS = {"max_steps": 30, "batch_size": 8}


@dataclass
class TrainForm:
    base_model: gr.Dropdown
    dataset: gr.Dropdown
    method: gr.Dropdown
    name: gr.Textbox
    method_inputs: dict[str, Any]
    training_inputs: dict[str, Any]
    counts_md: gr.Markdown
    start_button: gr.Button
    message_md: gr.Markdown

    def inputs(self) -> set:
        return {
            self.base_model,
            self.dataset,
            self.method,
            self.name,
            *self.method_inputs.values(),
            *self.training_inputs.values(),
        }


def read_form(form: TrainForm, data: dict) -> dict[str, Any]:
    """The spec, as the API takes it, from the form's values."""
    return {
        "base_model": data[form.base_model] or "",
        "dataset_id": data[form.dataset] or "",
        "method": data[form.method],
        "method_params": read_values(
            get_method(data[form.method]).fields, form.method_inputs, data
        ),
        "training": read_values(TRAINING_FIELDS, form.training_inputs, data),
        "name": data[form.name] or None,
    }


def on_form_change(settings: Settings, form: TrainForm, data: dict) -> str:
    spec = read_form(form, data)
    spec["dataset_id"] = spec["dataset_id"] or "(none yet)"  # counts do not need the dataset
    try:
        est = actions.estimate(settings, spec)
    except (ValueError, LookupError) as exc:
        return f"**Cannot count:** {exc}"
    return (
        f"**Trainable parameters: {est['trainable_params']:,}** of {est['total_params']:,} "
        f"(**{est['trainable_percent']:.3f}%**)" + dataset_note(settings, spec)
    )


def dataset_note(settings: Settings, spec: dict) -> str:
    """Which rows the job will train and evaluate on."""
    try:
        dataset = Store(settings.data_dir).get_dataset(spec["dataset_id"])
    except LookupError:
        return ""
    if dataset.eval_rows:
        return (
            f"\n\nDataset: {dataset.rows:,} training rows and its own eval split of "
            f"{dataset.eval_rows:,} rows (the eval fraction is not used)."
        )
    held = int(dataset.rows * (spec["training"].get("eval_fraction") or 0))
    return f"\n\nDataset: {dataset.rows:,} rows; the eval fraction holds out {held:,} of them."


def on_start_click(settings: Settings, form: TrainForm, data: dict) -> str:
    try:
        result = actions.start_job(settings, read_form(form, data))
    except (ValueError, LookupError) as exc:
        return f"**Not started.** {exc}"
    return (
        f"**Started.** Job `{result['job_id']}` is {result['status']}: "
        f"{result['trainable_params']:,} trainable parameters "
        f"({result['trainable_percent']:.3f}%). Follow it in the **Jobs** tab."
    )


def on_base_model_change(settings: Settings, base_model: str, current: list[str]):
    try:
        names = linear_module_names(resolve_model(base_model, settings.models_dir))
    except (ValueError, LookupError):
        return gr.update()
    return gr.update(choices=names, value=[n for n in current if n in names] or current)


def build_train_tab(settings: Settings) -> TrainForm:
    with gr.Row():
        base_model = base_model_dropdown(
            settings.models_dir,
            "A prepared model, a local model folder, or a Hub id (needs network).",
        )
        datasets = dataset_choices(settings)
        dataset = gr.Dropdown(
            choices=datasets,
            value=datasets[0][1] if datasets else None,
            label="Dataset",
            info="Upload one or pick a sample in the Data tab.",
        )
        method = gr.Dropdown(
            choices=[(m.label, m.id) for m in METHODS.values()],
            value="lora",
            label="Method",
        )
    lora = get_method("lora")
    gr.Markdown(f"**{lora.label}** ({lora.family}): {lora.description}")
    with gr.Row():
        method_inputs = {f.name: field_component(f) for f in lora.fields}
    training_inputs = {}
    for start in range(0, len(TRAINING_FIELDS), 4):
        with gr.Row():
            for f in TRAINING_FIELDS[start : start + 4]:
                training_inputs[f.name] = field_component(f, FORM_DEFAULTS.get(f.name))
    name = gr.Textbox(label="Job name (optional)")
    counts_md = gr.Markdown()
    start_button = gr.Button("Start training", variant="primary")
    message_md = gr.Markdown()
    form = TrainForm(
        base_model=base_model,
        dataset=dataset,
        method=method,
        name=name,
        method_inputs=method_inputs,
        training_inputs=training_inputs,
        counts_md=counts_md,
        start_button=start_button,
        message_md=message_md,
    )
    base_model.change(
        lambda b, t: on_base_model_change(settings, b, t),
        inputs=[base_model, method_inputs["target_modules"]],
        outputs=[method_inputs["target_modules"]],
        api_visibility="private",
    )
    gr.on(
        triggers=[
            base_model.change,
            method.change,
            *(c.change for c in method_inputs.values()),
        ],
        fn=lambda data: on_form_change(settings, form, data),
        inputs=form.inputs(),
        outputs=[counts_md],
        api_visibility="private",
    )
    start_button.click(
        lambda data: on_start_click(settings, form, data),
        inputs=form.inputs(),
        outputs=[message_md],
        api_visibility="private",
    )
    return form
