"""Train tab: base model, dataset, method fields (from the registry), parameter count, Start."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gradio as gr

from finetune.counts import linear_module_names
from finetune.methods import ATTENTION_MODULES, METHODS, get_method
from finetune.models import load_config, resolve_model
from finetune.spec import TRAINING_FIELDS
from finetune.tasks import TASKS, model_task
from storage.settings import Settings
from storage.store import Store
from webui import actions
from webui.data_tab import dataset_choices
from webui.forms import base_model_dropdown, field_component, read_values

NEW_ADAPTER = "(a new adapter)"

# A first run of a few minutes on a CPU with the bundled model; the API's defaults stay neutral.
FORM_DEFAULTS = {"max_steps": 30, "batch_size": 8}


@dataclass
class TrainForm:
    base_model: gr.Dropdown
    dataset: gr.Dropdown
    method: gr.Dropdown
    from_adapter: gr.Dropdown
    name: gr.Textbox
    method_inputs: dict[str, dict[str, Any]]  # method id -> field name -> component
    method_groups: dict[str, Any]  # method id -> its group of fields (shown when chosen)
    method_md: gr.Markdown
    training_inputs: dict[str, Any]
    counts_md: gr.Markdown
    start_button: gr.Button
    message_md: gr.Markdown

    def inputs(self) -> set:
        return {
            self.base_model,
            self.dataset,
            self.method,
            self.from_adapter,
            self.name,
            *(c for fields in self.method_inputs.values() for c in fields.values()),
            *self.training_inputs.values(),
        }


def read_form(form: TrainForm, data: dict) -> dict[str, Any]:
    """The spec, as the API takes it, from the form's values."""
    return {
        "base_model": data[form.base_model] or "",
        "dataset_id": data[form.dataset] or "",
        "method": data[form.method],
        "method_params": read_values(
            get_method(data[form.method]).fields, form.method_inputs[data[form.method]], data
        ),
        "training": read_values(TRAINING_FIELDS, form.training_inputs, data),
        "name": data[form.name] or None,
        "from_adapter": None
        if data[form.from_adapter] in (None, NEW_ADAPTER)
        else data[form.from_adapter],
    }


def fill_form(settings: Settings, form: TrainForm, spec: dict) -> dict:
    """The form set to a spec (a cloned job's): {component: update}."""
    method = spec.get("method", "lora")
    updates = {
        form.base_model: gr.update(value=spec.get("base_model")),
        form.dataset: gr.update(choices=dataset_choices(settings), value=spec.get("dataset_id")),
        form.method: gr.update(value=method),
        form.from_adapter: gr.update(
            choices=adapter_start_choices(settings), value=spec.get("from_adapter") or NEW_ADAPTER
        ),
        form.name: gr.update(value=spec.get("name") or ""),
    }
    params = spec.get("method_params", {})
    for name, component in form.method_inputs.get(method, {}).items():
        if name in params:
            value = params[name]
            extra = {"choices": value} if isinstance(value, list) else {}  # a picker's own
            updates[component] = gr.update(value=value, **extra)
    for name, component in form.training_inputs.items():
        if name in spec.get("training", {}):
            value = spec["training"][name]
            updates[component] = gr.update(value=0 if value is None else value)
    return updates


def on_form_change(settings: Settings, form: TrainForm, data: dict) -> str:
    spec = read_form(form, data)
    spec["dataset_id"] = spec["dataset_id"] or "(none yet)"  # counts do not need the dataset
    try:
        est = actions.estimate(settings, spec)
    except (ValueError, LookupError) as exc:
        return f"**Cannot count:** {exc}"
    return (
        f"Task: {TASKS[est['task']]}.\n\n"
        f"**Trainable parameters: {est['trainable_params']:,}** of {est['total_params']:,} "
        f"(**{est['trainable_percent']:.3f}%**); what it writes: "
        f"**{_megabytes(est['adapter_bytes'])}**"
        + memory_note(est["memory"])
        + dataset_note(settings, spec)
    )


def memory_note(memory: dict) -> str:
    """The estimate against the device's free memory; what to change when it will not fit."""
    gib = 2**30
    parts = ", ".join(
        f"{name} {memory[name] / gib:.2f}"
        for name in ("weights", "gradients", "optimizer", "activations", "logits", "runtime")
    )
    device = memory["device"]
    line = (
        f"\n\nMemory: about **{memory['total'] / gib:.1f} GiB** ({parts} GiB) of "
        f"{device['available_bytes'] / gib:.1f} GiB free on {device['name']}"
    )
    if memory["fits"]:
        return line + "."
    return line + ": **it will not fit.** Try " + "; ".join(memory["advice"]) + "."


def _megabytes(n: int) -> str:
    return f"{n / 2**20:,.1f} MB" if n >= 2**20 else f"{n / 2**10:,.0f} KB"


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


TARGET_PRESETS = ("attention (q, k, v, o)", "all linear layers", "custom")


def adapter_start_choices(settings: Settings) -> list[tuple[str, str]]:
    """A new adapter, or any adapter of ours to train further."""
    adapters = Store(settings.data_dir).list_adapters()
    return [(NEW_ADAPTER, NEW_ADAPTER)] + [
        (f"{a.name} · {a.method} · {a.id}", a.id) for a in adapters
    ]


def on_base_model_change(settings: Settings, base_model: str, *current: list[str]) -> list:
    """Every target-module picker offers the chosen model's own linear layers."""
    try:
        names = linear_module_names(resolve_model(base_model, settings.models_dir))
    except (ValueError, LookupError):
        return [gr.update() for _ in current]
    return [
        gr.update(choices=names, value=[n for n in chosen if n in names] or chosen)
        for chosen in current
    ]


def on_preset_change(settings: Settings, preset: str, base_model: str, chosen: list[str]):
    """attention: q/k/v/o (those the model has); all linear: every linear layer but the head."""
    if preset == TARGET_PRESETS[2]:
        return gr.update()
    try:
        names = linear_module_names(resolve_model(base_model, settings.models_dir))
    except (ValueError, LookupError):
        return gr.update()
    if preset == TARGET_PRESETS[1]:
        return gr.update(choices=names, value=names)
    attention = [n for n in names if n in ATTENTION_MODULES] or chosen
    return gr.update(choices=names, value=attention)


def method_choices(settings: Settings, base_model: str, current: str):
    """The methods that train the chosen model's task (the registry says which)."""
    try:
        config = load_config(resolve_model(base_model, settings.models_dir))
    except (ValueError, LookupError):
        return gr.update()
    task = model_task(config)
    ids = [key for key, entry in METHODS.items() if task in entry.tasks]
    return gr.update(
        choices=[(METHODS[key].label, key) for key in ids],
        value=current if current in ids else ids[0],
    )


def method_description(method_id: str) -> str:
    method = get_method(method_id)
    gates = []
    if not method.can_merge:
        gates.append("cannot be merged into the base")
    if not method.can_combine:
        gates.append("cannot be combined with other adapters")
    note = f" It {' and '.join(gates)}." if gates else ""
    return f"**{method.label}** ({method.family}): {method.description}{note}"


def on_method_change(form: TrainForm, method_id: str) -> list:
    return [method_description(method_id)] + [
        gr.update(visible=key == method_id) for key in form.method_groups
    ]


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
    from_adapter = gr.Dropdown(
        choices=adapter_start_choices(settings),
        value=NEW_ADAPTER,
        label="Start from",
        info="A new adapter, or one of yours trained further (on this data, for the epochs or "
        "steps below): its method and settings are kept.",
    )
    method_md = gr.Markdown(method_description("lora"))
    method_inputs: dict[str, dict[str, Any]] = {}
    method_groups: dict[str, Any] = {}
    presets: dict[str, Any] = {}
    for key, entry in METHODS.items():
        with gr.Group(visible=key == "lora") as group:
            targets = next((f for f in entry.fields if f.name == "target_modules"), None)
            if targets and tuple(targets.default) == ATTENTION_MODULES:  # not IA3's own mix
                presets[key] = gr.Radio(
                    choices=list(TARGET_PRESETS), value=TARGET_PRESETS[0], label="Target preset"
                )
            with gr.Row():
                method_inputs[key] = {f.name: field_component(f) for f in entry.fields}
            if not entry.fields:
                gr.Markdown("No settings: every weight of the model trains.")
        method_groups[key] = group
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
        from_adapter=from_adapter,
        name=name,
        method_inputs=method_inputs,
        method_groups=method_groups,
        method_md=method_md,
        training_inputs=training_inputs,
        counts_md=counts_md,
        start_button=start_button,
        message_md=message_md,
    )
    pickers = [
        fields["target_modules"] for fields in method_inputs.values() if "target_modules" in fields
    ]
    base_model.change(
        lambda b, *t: on_base_model_change(settings, b, *t),
        inputs=[base_model, *pickers],
        outputs=pickers,
        api_visibility="private",
    )
    for key, preset in presets.items():
        picker = method_inputs[key]["target_modules"]
        preset.input(
            lambda p, b, t: on_preset_change(settings, p, b, t),
            inputs=[preset, base_model, picker],
            outputs=[picker],
            api_visibility="private",
        )
    base_model.change(
        lambda b, m: method_choices(settings, b, m),
        inputs=[base_model, method],
        outputs=[method],
        api_visibility="private",
    )
    method.change(
        lambda m: on_method_change(form, m),
        inputs=[method],
        outputs=[method_md, *method_groups.values()],
        api_visibility="private",
    )
    gr.on(
        triggers=[
            base_model.change,
            dataset.change,
            method.change,
            from_adapter.change,
            *(c.change for fields in method_inputs.values() for c in fields.values()),
            *(c.change for c in training_inputs.values()),
        ],
        fn=lambda data: on_form_change(settings, form, data),
        inputs=form.inputs(),
        outputs=[counts_md],
        api_visibility="private",
        trigger_mode="always_last",  # one model change updates several pickers: count once
    )
    start_button.click(
        lambda data: on_start_click(settings, form, data),
        inputs=form.inputs(),
        outputs=[message_md],
        api_visibility="private",
    )
    return form
