"""Train tab: base model, dataset, method fields (from the registry), parameter count, Start."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import gradio as gr

import service
from config import Settings
from errors import UserError
from finetune.counts import linear_module_names
from finetune.fields import SpecError
from finetune.methods import ATTENTION_MODULES, METHODS, get_method
from finetune.models import load_config, resolve_model
from finetune.search import trials
from finetune.spec import TRAINING_FIELDS, parse_spec
from finetune.tasks import TASKS, model_task
from webui.data_tab import dataset_choices
from webui.forms import base_model_dropdown, field_component, read_values

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


def read_search(form: TrainForm, data: dict) -> dict[str, Any] | None:
    """The form's settings search as the spec takes it (its values are JSON text)."""
    mode = data[form.search.mode]
    if mode in (None, NO_SEARCH):
        return None
    if mode == "auto":
        return {"mode": mode}
    text = (data[form.search.space] or "").strip()
    try:
        space = json.loads(text) if text else None
    except json.JSONDecodeError as exc:
        raise SpecError(f"search.space: not valid JSON ({exc.msg}); e.g. {SPACE_EXAMPLE}") from None
    search = {"mode": mode, "space": space}
    if mode == "random":
        search["trials"] = int(data[form.search.trials] or 0)
    return search


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
        "search": read_search(form, data),
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
    search = spec.get("search") or {}
    updates[form.search.mode] = gr.update(value=search.get("mode") or NO_SEARCH)
    if search.get("space"):
        space = {
            path.split(".", 1)[-1]: {k: v for k, v in values.items() if k != "whole"}
            if isinstance(values, dict)
            else values
            for path, values in search["space"].items()
        }
        updates[form.search.space] = gr.update(value=json.dumps(space))
    if search.get("trials"):
        updates[form.search.trials] = gr.update(value=search["trials"])
    return updates


def on_form_change(settings: Settings, form: TrainForm, data: dict) -> str:
    try:
        spec = read_form(form, data)
        spec["dataset_id"] = spec["dataset_id"] or "(none yet)"  # counts need no dataset
        est = service.estimate(settings, spec)
    except UserError as exc:
        return f"**Cannot count:** {exc}"
    return (
        f"Task: {TASKS[est['task']]}.\n\n"
        f"**Trainable parameters: {est['trainable_params']:,}** of {est['total_params']:,} "
        f"(**{est['trainable_percent']:.3f}%**); what it writes: "
        f"**{_megabytes(est['adapter_bytes'])}**"
        + memory_note(est["memory"])
        + dataset_note(settings, spec)
        + plan_note(spec["training"])
        + search_note(spec)
    )


def search_note(spec: dict) -> str:
    """What a settings search will queue."""
    search = spec.get("search")
    if not search:
        return ""
    parsed = parse_spec(spec)
    count = len(trials(parsed.search, parsed))
    if search["mode"] == "auto":
        share = parsed.search["share"]
        return (
            f"\n\nAuto settings: **{count} trials** share {share:.0%} of that; the rest trains "
            "with the one whose eval loss ends lowest."
        )
    return f"\n\n{search['mode'].title()} search: **{count} trials**, each for all of that."


def plan_note(training: dict) -> str:
    """How long the run goes and the batch each optimizer step sees."""
    minutes, epochs, steps = (training.get(k) for k in ("max_minutes", "epochs", "max_steps"))
    ends = [f"{minutes:g} minutes" if minutes else ""]
    if steps:  # max steps override epochs
        ends.append(f"{steps:,} steps")
    elif epochs:
        ends.append(f"{epochs:g} epoch{'s' if epochs != 1 else ''}")
    ends = [e for e in ends if e] or ["1 epoch"]
    until = ends[0] if len(ends) == 1 else f"{' or '.join(ends)}, whichever comes first"
    batch = training.get("batch_size") or 0
    accumulation = training.get("gradient_accumulation_steps") or 1
    gpus = training.get("gpus") or 1
    effective = f"{batch} x {accumulation} accumulated" if accumulation > 1 else f"{batch}"
    if gpus > 1:
        effective += f" x {gpus} GPUs"
    schedule = training.get("lr_scheduler_type") or "linear"
    return (
        f"\n\nRuns for **{until}**; the {schedule.replace('_', ' ')} learning-rate schedule "
        f"ends with it. Effective batch: **{batch * accumulation * gpus}** ({effective})."
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
        dataset = service.get_dataset(settings, spec["dataset_id"])
    except UserError:
        return ""
    rows, eval_rows = dataset["rows"], dataset["eval_rows"]
    if eval_rows:
        return (
            f"\n\nDataset: {rows:,} training rows and its own eval split of "
            f"{eval_rows:,} rows (the eval fraction is not used)."
        )
    held = int(rows * (spec["training"].get("eval_fraction") or 0))
    return f"\n\nDataset: {rows:,} rows; the eval fraction holds out {held:,} of them."


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
    basic = [f for f in TRAINING_FIELDS if not f.advanced]
    advanced = [f for f in TRAINING_FIELDS if f.advanced]
    for start in range(0, len(basic), 4):
        with gr.Row():
            for f in basic[start : start + 4]:
                training_inputs[f.name] = field_component(f, form_default(f.name, "lora"))
    with gr.Accordion("More training settings", open=False):
        for start in range(0, len(advanced), 4):
            with gr.Row():
                for f in advanced[start : start + 4]:
                    training_inputs[f.name] = field_component(f, form_default(f.name, "lora"))
    with gr.Accordion("Settings search", open=False), gr.Row():
        search = SearchInputs(
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
        search=search,
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
    method.input(  # a user's choice (not a clone filling the form): the method's own rate
        lambda m: gr.update(value=get_method(m).learning_rate),
        inputs=[method],
        outputs=[training_inputs["learning_rate"]],
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
            search.mode.change,
            search.space.change,
            search.trials.change,
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
