"""The playground: the base and up to four adapters answer the same chat, side by side.

One loaded copy of a base serves all its adapters (PEFT's load_adapter / set_adapter /
disable_adapter), so switching between them never reloads it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from config import Settings
from errors import UserError
from finetune.data import common_system_prompt, read_rows
from finetune.generate import GenerationParams, ModelCache, Turn
from finetune.models import resolve_model
from storage.store import ROWS_FILE, NotFound, Store

PLAYGROUND = ModelCache(capacity=1)  # the web process's one model cache
MAX_ADAPTERS = 4  # beside the base model
Entry = tuple[str, Path] | None  # None: the base model


def entries(
    settings: Settings, adapter_ids: list[str | None], base_model: str | None = None
) -> tuple[str, list[Entry]]:
    """The base to load and what answers: the base model (None) and adapters, all of that base."""
    if not isinstance(adapter_ids, list) or not adapter_ids:
        adapter_ids = [None]
    chosen = [a for a in adapter_ids if a is not None]
    if len(chosen) > MAX_ADAPTERS:
        raise UserError(f"adapter_ids: at most {MAX_ADAPTERS} adapters beside the base model")
    if len(set(chosen)) != len(chosen):
        raise UserError("adapter_ids: an adapter is named twice")
    store = Store(settings.data_dir)
    adapters = [store.get_adapter(a) for a in chosen]
    if base_model:
        model = resolve_model(base_model, settings.models_dir)
    elif adapters:
        model = resolve_model(adapters[0].base_model, settings.models_dir)
    else:
        raise UserError("base_model: name the base model when no adapter is chosen")
    for adapter in adapters:
        if resolve_model(adapter.base_model, settings.models_dir) != model:
            raise UserError(
                f"Adapter {adapter.id} was trained on {adapter.base_model}, not on "
                f"{base_model or adapters[0].base_model}: compare adapters of one base."
            )
    by_id = {a.id: (a.id, store.adapter_dir(a.id)) for a in adapters}
    return model, [None if a is None else by_id[a] for a in adapter_ids]


def playground(settings: Settings) -> ModelCache:
    """The web process's cache, bounded as the settings say (read at each answer)."""
    PLAYGROUND.max_bytes = memory_bound(settings)
    return PLAYGROUND


def memory_bound(settings: Settings) -> int:
    """Bytes of models the playground may keep loaded (ADAPTERLAB_PLAYGROUND_MEMORY_MB)."""
    if settings.playground_memory_mb > 0:
        return settings.playground_memory_mb * 2**20
    import psutil

    return psutil.virtual_memory().total // 2


def generation_params(params: dict[str, Any] | None) -> GenerationParams:
    """The sampling settings from plain values, each checked (a lone stop string is a list)."""
    if isinstance(params, dict) and isinstance(params.get("stop"), str):
        params = {**params, "stop": [params["stop"]] if params["stop"] else []}
    return GenerationParams.parse(params, "params")


def _chat(prompt: str, history: list[Turn] | None = None) -> list[Turn]:
    if not isinstance(prompt, str) or not prompt.strip():
        raise UserError("Type a prompt first.")
    return [*(history or []), {"role": "user", "content": prompt}]


def compare(
    settings: Settings,
    prompt: str,
    adapter_ids: list[str | None],
    params: dict[str, Any] | None = None,
    base_model: str | None = None,
) -> dict[str, Any]:
    """Each of the base (None) and the adapters answers the prompt with the same settings and
    seed -> {outputs: [{adapter, text, seconds, tokens, tokens_per_s}]}."""
    chat = _chat(prompt)
    gen = generation_params(params)
    model, chosen = entries(settings, adapter_ids, base_model)
    outputs = []
    for entry in chosen:
        *_, last = playground(settings).stream(model, entry, chat, gen, settings.allow_remote_code)
        outputs.append({k: v for k, v in last.items() if k != "done"})
    return {"outputs": outputs}


def stream_answer(
    settings: Settings,
    model: str,
    entry: Entry,
    prompt: str,
    history: list[Turn],
    gen: GenerationParams,
) -> Iterator[dict]:
    """One column's answer as it grows (the playground tab streams each column in turn)."""
    yield from playground(settings).stream(
        model, entry, _chat(prompt, history), gen, settings.allow_remote_code
    )


def generate(
    settings: Settings,
    base_model: str,
    adapter_ids: list[str | None],
    prompt: str,
    params: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """compare() with the base model named first (the older endpoint's argument order)."""
    return compare(settings, prompt, adapter_ids, params, base_model)


def unload() -> dict[str, Any]:
    return {"unloaded": PLAYGROUND.unload(), "loaded": PLAYGROUND.loaded()}


def training_system_prompt(settings: Settings, adapter_id: str) -> str:
    """The system message every training row of the adapter had, or ""."""
    store = Store(settings.data_dir)
    adapter = store.get_adapter(adapter_id)
    if adapter.job_id is None:
        return ""
    dataset_id = store.get_job(adapter.job_id).spec["dataset_id"]
    try:
        folder = store.dataset_dir(store.get_dataset(dataset_id).id)
    except NotFound:
        return ""
    return common_system_prompt(read_rows(folder / ROWS_FILE))
