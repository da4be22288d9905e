"""Adapters tab: every adapter with its counts; download, merge, combine, import."""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass

import gradio as gr

import service
from config import Settings
from errors import UserError
from finetune.combine import COMBINATIONS, WITH_DENSITY
from finetune.merge import DTYPES
from webui.forms import base_model_dropdown

COMBINE_WATCH_S = 120.0  # how long the tab follows a combine job before leaving it to the Jobs tab
HEADERS = ["name", "id", "origin", "method", "base model", "trainable", "size on disk"]


@dataclass
class AdaptersTab:
    adapters_table: gr.Dataframe
    adapter_dropdown: gr.Dropdown
    combine_dropdown: gr.Dropdown
    refresh: dict  # the event settings that re-read the tab from storage


def adapters_rows(settings: Settings) -> list[list]:
    return [
        [
            a["name"],
            a["id"],
            a["origin"],
            a["method"],
            a["base_model"],
            f"{a['trainable_params']:,}" if a["trainable_params"] else "",
            f"{(a['size_bytes'] or 0) / 2**20:.2f} MiB",
        ]
        for a in service.list_adapters(settings)
    ]


def on_adapters_refresh(settings: Settings, current: str | None, selected: list[str] | None):
    """The table, the download picker and the combine picker, read from storage."""
    choices = [(f"{a['name']} · {a['id']}", a["id"]) for a in service.list_adapters(settings)]
    ids = [v for _, v in choices]
    return (
        adapters_rows(settings),
        gr.update(choices=choices, value=current if current in ids else (ids[0] if ids else None)),
        gr.update(choices=choices, value=[s for s in selected or [] if s in ids]),
    )


def on_download_click(settings: Settings, adapter_id: str | None):
    return _offer(adapter_id, "Pick an adapter first.", service.download_adapter, settings)


def _offer(value: str | None, missing: str, make, settings: Settings):
    """The file `make(settings, value)` builds, shown for download; a message when it cannot."""
    if not value:
        raise gr.Error(missing)
    try:
        return gr.update(value=str(make(settings, value)), visible=True)
    except UserError as exc:
        raise gr.Error(str(exc)) from None


def on_push_click(settings: Settings, adapter_id: str | None, repo_id: str) -> str:
    if not adapter_id:
        return "**Not pushed.** Pick an adapter first."
    try:
        pushed = service.push_to_hub(settings, adapter_id, repo_id)
    except UserError as exc:
        return f"**Not pushed.** {exc}"
    return f"Pushed to [{pushed['repo_id']}]({pushed['url']}) (private)."


def on_merge_click(settings: Settings, adapter_id: str | None, dtype: str) -> str:
    if not adapter_id:
        return "**Not merged.** Pick an adapter first."
    try:
        started = service.start_merge(settings, adapter_id, dtype)
    except UserError as exc:
        return f"**Not merged.** {exc}"
    return (
        f"Merge job `{started['job_id']}` is queued (Jobs tab); the model appears under "
        "Merged models when it is done."
    )


def merged_update(settings: Settings, current: str | None):
    choices = [
        (
            f"{m['name']} · {m['job_id']} · {(m['bytes'] or 0) / 2**20:.0f} MiB · max logit "
            f"diff {m['max_logit_diff']:.2g}",
            m["job_id"],
        )
        for m in service.merged_models(settings)
    ]
    ids = [v for _, v in choices]
    return gr.update(
        choices=choices, value=current if current in ids else (ids[0] if ids else None)
    )


def on_merged_download_click(settings: Settings, job_id: str | None):
    no_merge = "No merged model yet: merge an adapter first."
    return _offer(job_id, no_merge, service.download_merged, settings)


def on_import_click(settings: Settings, file: str | None, base_model: str, name: str) -> str:
    try:
        made = service.import_adapter(settings, file, base_model, name)
    except UserError as exc:
        return f"**Not imported.** {exc}"
    notes = "".join(f"\n- {w}" for w in made["warnings"])
    if made["ignored_files"]:
        notes += f"\n- Left out (not adapter files): {', '.join(made['ignored_files'][:10])}"
    return (
        f"Imported **{made['name']}** (`{made['id']}`): a {made['peft_type']} adapter with "
        f"{made['trainable_params']:,} parameters that fits {base_model}.{notes}"
    )


def parse_weights(text: str, count: int) -> list[float]:
    """'0.5, 0.5' -> [0.5, 0.5]; empty: equal weights summing to 1."""
    if not text.strip():
        return [round(1 / count, 6)] * count if count else []
    try:
        return [float(w) for w in text.replace(";", ",").split(",") if w.strip()]
    except ValueError:
        raise UserError(f"Weights: give numbers separated by commas, got {text!r}") from None


def on_combine_click(
    settings: Settings,
    adapter_ids: list[str] | None,
    weights: str,
    method: str,
    density: float | None,
    svd_rank: float | None,
    name: str,
):
    """Queue the combination, then say how its job goes until it ends (or COMBINE_WATCH_S)."""
    adapter_ids = adapter_ids or []
    if len(adapter_ids) < 2:
        yield "**Not combined.** Pick two adapters or more."
        return
    try:
        request = {
            "adapter_ids": adapter_ids,
            "weights": parse_weights(weights or "", len(adapter_ids)),
            "method": method,
            "name": name.strip() or None,
            "density": float(density) if density and method in WITH_DENSITY else None,
            "svd_rank": int(svd_rank) if svd_rank else None,
        }
        job_id = service.start_combine(settings, service.CombineRequest.parse(request))["job_id"]
    except UserError as exc:
        yield f"**Not combined.** {exc}"
        return
    deadline = time.monotonic() + COMBINE_WATCH_S
    while (status := service.job_status(settings, job_id)["status"]) in ("queued", "running"):
        yield f"Combining in job `{job_id}` ({status}; it loads the base model)..."
        if time.monotonic() > deadline:
            yield (
                f"Combining in job `{job_id}` ({status}, behind other jobs): the new adapter "
                "appears in this list when the job is done (the Jobs tab shows it)."
            )
            return
        time.sleep(0.5)
    try:
        made = service.combined_adapter(settings, job_id)
    except UserError as exc:
        yield f"**Not combined.** {exc}"
        return
    rank = f", rank {made['r']}" if made["r"] else ""
    yield (
        f"Made **{made['name']}** (`{made['id']}`){rank}, {made['trainable_params']:,} "
        "parameters. Try it in the Playground."
    )


def build_adapters_tab(settings: Settings) -> AdaptersTab:
    adapters_table = gr.Dataframe(headers=HEADERS, label="Adapters", interactive=False)
    with gr.Row():
        adapter_dropdown = gr.Dropdown(label="Adapter", choices=[], scale=2)
        zip_button = gr.Button("Prepare .zip")
        zip_file = gr.File(label="Download", interactive=False, scale=2, visible=False)
    with gr.Row():
        repo_text = gr.Textbox(
            label="Hub repo", placeholder="you/my-adapter", info="Needs HF_TOKEN and the Hub."
        )
        push_button = gr.Button("Push to the Hub")
    push_md = gr.Markdown()
    zip_button.click(
        lambda a: on_download_click(settings, a),
        inputs=[adapter_dropdown],
        outputs=[zip_file],
        api_visibility="private",
    )
    push_button.click(
        lambda a, r: on_push_click(settings, a, r),
        inputs=[adapter_dropdown, repo_text],
        outputs=[push_md],
        api_visibility="private",
    )
    with gr.Accordion("Merge into the base (a queued job)", open=False):
        gr.Markdown(
            "Writes base + the adapter above as one model (sharded safetensors) that loads "
            "without PEFT, and checks its logits against the adapter model's. Soft prompts "
            "cannot be merged."
        )
        with gr.Row():
            dtype_radio = gr.Radio(list(DTYPES), value="float32", label="Precision")
            merge_button = gr.Button("Merge", variant="primary")
        merge_md = gr.Markdown()
        with gr.Row():
            merged_dropdown = gr.Dropdown(label="Merged models", choices=[], scale=4)
            merged_button = gr.Button("Prepare merged .zip")
            merged_file = gr.File(label="Download", interactive=False, scale=2, visible=False)
    with gr.Accordion("Combine adapters of one base", open=False):
        gr.Markdown(
            "LoRA adapters combine by any of PEFT's methods (IA3 by a weighted sum). Soft "
            "prompts, AdaLoRA, LoHa, LoKr and DoRA adapters cannot be combined."
        )
        combine_dropdown = gr.Dropdown(
            label="Adapters to combine", choices=[], multiselect=True, scale=3
        )
        with gr.Row():
            weights_text = gr.Textbox(
                label="Weights", placeholder="0.5, 0.5", info="One per adapter; empty: equal."
            )
            method_dropdown = gr.Dropdown(
                choices=[(f"{k}: {v}", k) for k, v in COMBINATIONS.items()],
                value="cat",
                label="Method",
            )
        with gr.Row():
            density_number = gr.Number(
                value=0.5, label="Density", info="ties, dare, magnitude: share of changes kept"
            )
            rank_number = gr.Number(
                value=0, label="SVD rank", precision=0, info="svd methods (0: the largest rank)"
            )
            combined_name = gr.Textbox(label="Name of the new adapter")
        combine_button = gr.Button("Combine", variant="primary")
        combine_md = gr.Markdown()
    with gr.Accordion("Import an adapter trained elsewhere", open=False):
        gr.Markdown(
            "A PEFT adapter folder as a .zip: `adapter_config.json` and "
            "`adapter_model.safetensors` (pickled `.bin` weights are refused)."
        )
        with gr.Row():
            import_file = gr.File(label=".zip", file_types=[".zip"], type="filepath")
            import_base = base_model_dropdown(settings.models_dir)
            import_name = gr.Textbox(label="Name")
        import_button = gr.Button("Import")
        import_md = gr.Markdown()
    refresh = {
        "fn": lambda current, selected, merged: (
            *on_adapters_refresh(settings, current, selected),
            merged_update(settings, merged),
        ),
        "inputs": [adapter_dropdown, combine_dropdown, merged_dropdown],
        "outputs": [adapters_table, adapter_dropdown, combine_dropdown, merged_dropdown],
        "api_visibility": "private",
    }
    merge_button.click(
        lambda a, d: on_merge_click(settings, a, d),
        inputs=[adapter_dropdown, dtype_radio],
        outputs=[merge_md],
        api_visibility="private",
    ).then(**refresh)
    merged_button.click(
        lambda j: on_merged_download_click(settings, j),
        inputs=[merged_dropdown],
        outputs=[merged_file],
        api_visibility="private",
    )
    combine_button.click(
        functools.partial(on_combine_click, settings),
        inputs=[
            combine_dropdown,
            weights_text,
            method_dropdown,
            density_number,
            rank_number,
            combined_name,
        ],
        outputs=[combine_md],
        api_visibility="private",
    ).then(**refresh)
    import_button.click(
        lambda f, b, n: on_import_click(settings, f, b, n),
        inputs=[import_file, import_base, import_name],
        outputs=[import_md],
        api_visibility="private",
    ).then(**refresh)
    return AdaptersTab(
        adapters_table=adapters_table,
        adapter_dropdown=adapter_dropdown,
        combine_dropdown=combine_dropdown,
        refresh=refresh,
    )
