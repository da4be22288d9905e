"""Train tab: base model, dataset, method fields (from the registry), parameter count, Start."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gradio as gr

import service
from config import Settings
from errors import UserError
from finetune.counts import linear_module_names
from finetune.methods import ATTENTION_MODULES, METHODS, get_method
from finetune.models import load_config, resolve_model
from finetune.spec import TRAINING_FIELDS
from finetune.tasks import model_task
from webui.choices import dataset_choices
from webui.forms import base_model_dropdown, field_component, read_values
from webui.train_notes import counts_text
from webui.train_search import SearchInputs, build_search_section, fill_search, read_search

NEW_ADAPTER = "(a new adapter)"

# A first run with the bundled model: ten minutes on a CPU (or one epoch, whichever ends first;
# a GPU ends the epoch in seconds). The API's defaults stay neutral.
FORM_DEFAULTS = {"max_minutes": 10, "epochs": 1}


def form_default(name: str, method_id: str):
    """A training field's value in a fresh form: the learning rate is the method's own."""
    if name == "learning_rate":
        return get_method(method_id).learning_rate
    return FORM_DEFAULTS.get(name)


@dataclass
class TrainForm:
    base_model: gr.Dropdown
    dataset: gr.Dropdown
    method: gr.Dropdown
    from_adapter: gr.Dropdown
    name: gr.Textbox
    method_inputs: dict[str, dict[str, Any]]  # method id -> field name -> component
    method_groups: dict[str, Any]  # method id -> its group of fields (shown when chosen)
    presets: dict[str, gr.Radio]  # method id -> its target preset, where it has one
    method_md: gr.Markdown
    training_inputs: dict[str, Any]
    search: SearchInputs
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
            self.search.mode,
            self.search.space,
            self.search.trials,
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
        "search": read_search(form.search, data),
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
    return {**updates, **fill_search(form.search, spec.get("search") or {})}


def on_form_change(settings: Settings, form: TrainForm, data: dict) -> str:
    try:
        spec = read_form(form, data)
        spec["dataset_id"] = spec["dataset_id"] or "(none yet)"  # counts need no dataset
        est = service.estimate(settings, spec)
    except UserError as exc:
        return f"**Cannot count:** {exc}"
    return counts_text(settings, spec, est)


def on_start_click(settings: Settings, form: TrainForm, data: dict) -> str:
    try:
        result = service.start_job(settings, read_form(form, data))
    except UserError as exc:
        return f"**Not started.** {exc}"
    if "trials" in result:
        return (
            f"**Started.** Search `{result['job_id']}` queued {len(result['trials'])} trials; "
            "the Jobs tab shows them side by side, and the choice it makes."
        )
    return (
        f"**Started.** Job `{result['job_id']}` is {result['status']}: "
        f"{result['trainable_params']:,} trainable parameters "
        f"({result['trainable_percent']:.3f}%). Follow it in the **Jobs** tab."
    )


TARGET_PRESETS = ("attention (q, k, v, o)", "all linear layers", "custom")


def adapter_start_choices(settings: Settings) -> list[tuple[str, str]]:
    """A new adapter, or any adapter of ours to train further."""
    return [(NEW_ADAPTER, NEW_ADAPTER)] + [
        (f"{a['name']} · {a['method']} · {a['id']}", a["id"])
        for a in service.list_adapters(settings)
    ]


def on_base_model_change(settings: Settings, base_model: str, *current: list[str]) -> list:
    """Every target-module picker offers the chosen model's own linear layers."""
    try:
        names = linear_module_names(resolve_model(base_model, settings.models_dir))
    except UserError:
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
    except UserError:
        return gr.update()
    if preset == TARGET_PRESETS[1]:
        return gr.update(choices=names, value=names)
    attention = [n for n in names if n in ATTENTION_MODULES] or chosen
    return gr.update(choices=names, value=attention)


def method_choices(settings: Settings, base_model: str, current: str):
    """The methods that train the chosen model's task (the registry says which)."""
    try:
        config = load_config(resolve_model(base_model, settings.models_dir))
    except UserError:
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


def _build_choices_section(settings: Settings) -> tuple[gr.Dropdown, ...]:
    """Base model, dataset, method; and the adapter to start from."""
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
    return base_model, dataset, method, from_adapter


@dataclass
class MethodSection:
    md: gr.Markdown
    inputs: dict[str, dict[str, Any]]  # method id -> field name -> component
    groups: dict[str, Any]  # method id -> its group of fields
    presets: dict[str, gr.Radio]  # method id -> its target preset (methods aimed at attention)


def _build_method_section() -> MethodSection:
    """Each method's fields from the registry, in a group shown while it is the one chosen."""
    section = MethodSection(
        md=gr.Markdown(method_description("lora")), inputs={}, groups={}, presets={}
    )
    for key, entry in METHODS.items():
        with gr.Group(visible=key == "lora") as group:
            targets = next((f for f in entry.fields if f.name == "target_modules"), None)
            if targets and tuple(targets.default) == ATTENTION_MODULES:  # not IA3's own mix
                section.presets[key] = gr.Radio(
                    choices=list(TARGET_PRESETS), value=TARGET_PRESETS[0], label="Target preset"
                )
            with gr.Row():
                section.inputs[key] = {f.name: field_component(f) for f in entry.fields}
            if not entry.fields:
                gr.Markdown("No settings: every weight of the model trains.")
        section.groups[key] = group
    return section


def _build_training_section() -> dict[str, Any]:
    """The training fields, four to a row; the advanced ones folded away."""
    inputs = {}
    basic = [f for f in TRAINING_FIELDS if not f.advanced]
    advanced = [f for f in TRAINING_FIELDS if f.advanced]
    for start in range(0, len(basic), 4):
        with gr.Row():
            for f in basic[start : start + 4]:
                inputs[f.name] = field_component(f, form_default(f.name, "lora"))
    with gr.Accordion("More training settings", open=False):
        for start in range(0, len(advanced), 4):
            with gr.Row():
                for f in advanced[start : start + 4]:
                    inputs[f.name] = field_component(f, form_default(f.name, "lora"))
    return inputs


def _wire_method_events(settings: Settings, form: TrainForm) -> None:
    """The model decides the methods and target layers offered; the method, the fields shown."""
    pickers = [
        fields["target_modules"]
        for fields in form.method_inputs.values()
        if "target_modules" in fields
    ]
    form.base_model.change(
        lambda b, *t: on_base_model_change(settings, b, *t),
        inputs=[form.base_model, *pickers],
        outputs=pickers,
        api_visibility="private",
    )
    for key, preset in form.presets.items():
        picker = form.method_inputs[key]["target_modules"]
        preset.input(
            lambda p, b, t: on_preset_change(settings, p, b, t),
            inputs=[preset, form.base_model, picker],
            outputs=[picker],
            api_visibility="private",
        )
    form.base_model.change(
        lambda b, m: method_choices(settings, b, m),
        inputs=[form.base_model, form.method],
        outputs=[form.method],
        api_visibility="private",
    )
    form.method.change(
        lambda m: on_method_change(form, m),
        inputs=[form.method],
        outputs=[form.method_md, *form.method_groups.values()],
        api_visibility="private",
    )
    form.method.input(  # a user's choice (not a clone filling the form): the method's own rate
        lambda m: gr.update(value=get_method(m).learning_rate),
        inputs=[form.method],
        outputs=[form.training_inputs["learning_rate"]],
        api_visibility="private",
    )


def _wire_form_events(settings: Settings, form: TrainForm) -> None:
    """Any change recounts; Start queues the job."""
    gr.on(
        triggers=[
            form.base_model.change,
            form.dataset.change,
            form.method.change,
            form.from_adapter.change,
            *(c.change for fields in form.method_inputs.values() for c in fields.values()),
            *(c.change for c in form.training_inputs.values()),
            form.search.mode.change,
            form.search.space.change,
            form.search.trials.change,
        ],
        fn=lambda data: on_form_change(settings, form, data),
        inputs=form.inputs(),
        outputs=[form.counts_md],
        api_visibility="private",
        trigger_mode="always_last",  # one model change updates several pickers: count once
    )
    form.start_button.click(
        lambda data: on_start_click(settings, form, data),
        inputs=form.inputs(),
        outputs=[form.message_md],
        api_visibility="private",
    )


def build_train_tab(settings: Settings) -> TrainForm:
    base_model, dataset, method, from_adapter = _build_choices_section(settings)
    methods = _build_method_section()
    training_inputs = _build_training_section()
    search = build_search_section()
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
        method_inputs=methods.inputs,
        method_groups=methods.groups,
        presets=methods.presets,
        method_md=methods.md,
        training_inputs=training_inputs,
        search=search,
        counts_md=counts_md,
        start_button=start_button,
        message_md=message_md,
    )
    _wire_method_events(settings, form)
    _wire_form_events(settings, form)
    return form
