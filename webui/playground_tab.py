"""Playground tab: the base model and up to four adapters answer the same prompt, in columns."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import gradio as gr

import service
from config import Settings
from errors import UserError
from service.playground import MAX_ADAPTERS
from webui.choices import adapter_choices
from webui.forms import base_model_dropdown

COLUMNS = 1 + MAX_ADAPTERS  # the base, then the adapters
BASE = "Base model"


@dataclass
class PlaygroundTab:
    adapter_dropdown: gr.Dropdown  # the adapters to compare (multiselect)


def on_playground_select(settings: Settings, current: list[str] | None):
    """The adapter picker re-read from storage, keeping what is still there."""
    choices = adapter_choices(settings)
    ids = {v for _, v in choices}
    kept = [c for c in current or [] if c in ids]
    if not kept and not current and choices:
        kept = [choices[0][1]]
    return gr.update(choices=choices, value=kept)


def column_ids(adapter_ids: list[str] | None, include_base: bool) -> list[str | None]:
    """What answers, column by column: None is the base model."""
    return ([None] if include_base else []) + list(adapter_ids or [])[:MAX_ADAPTERS]


def stop_list(text: str) -> list[str]:
    """'###, User:' -> ['###', 'User:']; a backslash-n stands for a newline."""
    return [s.strip().replace("\\n", "\n") for s in (text or "").split(",") if s.strip()]


@dataclass(frozen=True)
class SendRequest:
    """What Generate sends: the Playground's values, by name (a field per input component)."""

    base_model: str
    adapter_ids: list[str] | None
    include_base: bool
    prompt: str
    system_prompt: str = ""
    max_new_tokens: float = 64
    temperature: float = 0
    top_p: float = 1
    seed: float = 0
    stop: str = ""
    chat_mode: bool = False
    histories: dict = dataclasses.field(default_factory=dict)

    @classmethod
    def read(cls, components: dict[str, Any], data: dict) -> SendRequest:
        """From a handler's {component: value} input; `components` maps each field's name."""
        return cls(**{f.name: data[components[f.name]] for f in dataclasses.fields(cls)})


def on_send_click(settings: Settings, request: SendRequest) -> Iterator[tuple]:
    """Streams each column's answer in turn; yields (status, histories, *chatbots)."""
    names = {a["id"]: a["name"] for a in service.list_adapters(settings)}
    ids = column_ids(request.adapter_ids, request.include_base)
    prompt, histories = request.prompt, request.histories
    key = "|".join(str(i) for i in ids)
    if not request.chat_mode or (histories or {}).get("key") != key:
        histories = {"key": key, "turns": [[] for _ in ids]}
    try:
        if not ids:
            raise UserError("Pick adapters to compare, or keep the base model.")
        gen = service.generation_params(
            {
                "max_new_tokens": int(request.max_new_tokens or 64),
                "temperature": float(request.temperature or 0),
                "top_p": float(request.top_p or 1),
                "seed": int(request.seed or 0),
                "system_prompt": request.system_prompt or "",
                "stop": stop_list(request.stop),
            }
        )
        model, entries = service.entries(settings, ids, request.base_model)
    except UserError as exc:
        yield (f"**Not sent.** {exc}", histories, *_chatbots(ids, names, histories, {}))
        return
    answers: dict[int, dict] = {}
    for column, entry in enumerate(entries):
        turns = histories["turns"][column]
        try:
            for answer in service.stream_answer(settings, model, entry, prompt, turns, gen):
                answers[column] = answer
                yield ("Generating…", histories, *_chatbots(ids, names, histories, answers, prompt))
        except UserError as exc:
            yield (f"**Stopped.** {exc}", histories, *_chatbots(ids, names, histories, answers))
            return
    for column in range(len(ids)):
        histories["turns"][column] += [
            {"role": "user", "content": prompt},
            {"role": "assistant", "content": answers[column]["text"]},
        ]
    done = _chatbots(ids, names, histories, answers)
    yield (_summary(ids, names, answers), histories, *done)


def _label(adapter_id: str | None, names: dict[str, str]) -> str:
    return BASE if adapter_id is None else f"{names.get(adapter_id, adapter_id)} · {adapter_id}"


def _chatbots(ids, names, histories, answers, pending: str | None = None) -> list:
    """Each column's chat; a column answering now shows the prompt and the answer so far."""
    updates = []
    for column in range(COLUMNS):
        if column >= len(ids):
            updates.append(gr.update(visible=False, value=[]))
            continue
        shown = list(histories["turns"][column])
        answer = answers.get(column)
        if pending is not None and answer is not None:
            shown += [
                {"role": "user", "content": pending},
                {"role": "assistant", "content": answer["text"]},
            ]
        # The column says whose answer it is and how fast, briefly; the table below has the ids.
        adapter_id = ids[column]
        label = BASE if adapter_id is None else names.get(adapter_id, adapter_id)[:32]
        if answer is not None and answer.get("done") and answer.get("seconds") is not None:
            speed = f" · {answer['tokens_per_s']} tok/s" if answer.get("tokens_per_s") else ""
            label += f" · {answer['seconds']} s{speed}"
        updates.append(gr.update(visible=True, value=shown, label=label))
    return updates


def _summary(ids, names, answers) -> str:
    rows = "\n".join(
        f"| {_label(i, names)} | {a.get('seconds', '')} | {a.get('tokens', '')} | "
        f"{a.get('tokens_per_s') or ''} |"
        for i, a in ((ids[c], answers[c]) for c in range(len(ids)))
    )
    return f"| model | seconds | tokens | tokens/s |\n|---|---|---|---|\n{rows}"


def on_adapters_change(settings: Settings, adapter_ids: list[str] | None) -> str:
    """The system message the first adapter was trained with: answers depend on it."""
    for adapter_id in adapter_ids or []:
        try:
            return service.training_system_prompt(settings, adapter_id)
        except UserError:
            return ""
    return ""


def on_unload_click() -> str:
    result = service.unload()
    return f"Unloaded {result['unloaded']} base model(s); their memory is free again."


def loaded_text() -> str:
    held = service.playground.PLAYGROUND.loaded()
    if not held:
        return "No model is loaded; the first answer loads one."
    parts = []
    for item in held:
        extra = ", ".join(item["adapters"] + item["own_models"]) or "no adapters"
        parts.append(f"{item['base_model'].rsplit('/', 1)[-1]} ({item['megabytes']} MB; {extra})")
    return "Loaded: " + "; ".join(parts)


@dataclass
class PromptSection:
    """Who answers, the prompt and how to generate."""

    inputs: dict[str, Any]  # by SendRequest's field names
    adapter_dropdown: gr.Dropdown
    system_text: gr.Textbox


@dataclass
class AnswerSection:
    """The buttons and the answers, column by column."""

    chat_checkbox: gr.Checkbox
    histories: gr.State  # each column's chat so far
    send_button: gr.Button
    clear_button: gr.Button
    unload_button: gr.Button
    status_md: gr.Markdown
    loaded_md: gr.Markdown
    chatbots: list[gr.Chatbot]  # the base model's column, then one per adapter


def _build_prompt_section(settings: Settings) -> PromptSection:
    with gr.Row():
        base_model = base_model_dropdown(settings.models_dir)
        choices = adapter_choices(settings)
        adapter_dropdown = gr.Dropdown(
            choices=choices,
            value=[choices[0][1]] if choices else [],
            multiselect=True,
            max_choices=MAX_ADAPTERS,
            label=f"Adapters (up to {MAX_ADAPTERS}, of one base)",
            scale=2,
        )
        include_base = gr.Checkbox(value=True, label="Base model too")
    prompt_text = gr.Textbox(label="Prompt", value="What is 47 + 85?", lines=3)
    system_text = gr.Textbox(
        label="System prompt (optional)",
        info="Filled in with the one the first adapter was trained with; empty uses the model's.",
    )
    with gr.Row():
        inputs = {
            "base_model": base_model,
            "adapter_ids": adapter_dropdown,
            "include_base": include_base,
            "prompt": prompt_text,
            "system_prompt": system_text,
            "max_new_tokens": gr.Number(
                value=48, label="Max new tokens", minimum=1, maximum=2048, precision=0
            ),
            "temperature": gr.Number(
                value=0.0, label="Temperature (0 = greedy)", minimum=0, maximum=5
            ),
            "top_p": gr.Number(value=1.0, label="Top p", minimum=0.01, maximum=1),
            "seed": gr.Number(value=0, label="Seed", precision=0),
            "stop": gr.Textbox(label="Stop sequences", placeholder="###, User:"),
        }
    return PromptSection(inputs=inputs, adapter_dropdown=adapter_dropdown, system_text=system_text)


def _build_answer_section() -> AnswerSection:
    with gr.Row():
        chat_checkbox = gr.Checkbox(value=False, label="Chat (each column keeps its history)")
        send_button = gr.Button("Generate", variant="primary")
        clear_button = gr.Button("Clear the chats")
        unload_button = gr.Button("Unload models")
    status_md = gr.Markdown()
    loaded_md = gr.Markdown(loaded_text())
    histories = gr.State({})
    with gr.Row():
        chatbots = [
            gr.Chatbot(label=BASE if i == 0 else f"Adapter {i}", visible=i < 2, height=320)
            for i in range(COLUMNS)
        ]
    return AnswerSection(
        chat_checkbox=chat_checkbox,
        histories=histories,
        send_button=send_button,
        clear_button=clear_button,
        unload_button=unload_button,
        status_md=status_md,
        loaded_md=loaded_md,
        chatbots=chatbots,
    )


def _wire_playground_events(
    settings: Settings, prompt: PromptSection, answer: AnswerSection
) -> None:
    private = {"api_visibility": "private"}
    histories = answer.histories
    send_inputs = {**prompt.inputs, "chat_mode": answer.chat_checkbox, "histories": histories}
    prompt.adapter_dropdown.change(
        lambda a: on_adapters_change(settings, a),
        inputs=[prompt.adapter_dropdown],
        outputs=[prompt.system_text],
        **private,
    )

    def on_send(data: dict) -> Iterator[tuple]:  # a generator, so Gradio streams it
        yield from on_send_click(settings, SendRequest.read(send_inputs, data))

    answer.send_button.click(
        on_send,
        inputs=set(send_inputs.values()),
        outputs=[answer.status_md, histories, *answer.chatbots],
        **private,
    ).then(loaded_text, outputs=[answer.loaded_md], **private)
    answer.clear_button.click(
        lambda: ({}, *[gr.update(value=[]) for _ in answer.chatbots]),
        outputs=[histories, *answer.chatbots],
        **private,
    )
    answer.unload_button.click(on_unload_click, outputs=[answer.status_md], **private).then(
        loaded_text, outputs=[answer.loaded_md], **private
    )


def build_playground_tab(settings: Settings) -> PlaygroundTab:
    prompt = _build_prompt_section(settings)
    answer = _build_answer_section()
    _wire_playground_events(settings, prompt, answer)
    return PlaygroundTab(adapter_dropdown=prompt.adapter_dropdown)
