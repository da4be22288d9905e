"""How a dataset looks in the Data tab: its summary, the rows that cannot be used, examples with
the tokens that carry loss marked, and the histogram of tokens per row."""

from __future__ import annotations

import html
from typing import Any

import gradio as gr

BAD_ROW_HEADERS = ["file", "row", "column", "problem"]


def bad_rows_table(problems: list[dict], stored: bool = False) -> Any:
    """The problem rows; a file column only when the upload had several files."""
    import pandas as pd

    if not problems:
        return gr.update(value=None, visible=False)
    several = any(p.get("source") for p in problems)
    rows = [
        ([p["source"]] if several else []) + [p["row"], p["column"] or "(whole row)", p["problem"]]
        for p in problems
    ]
    headers = BAD_ROW_HEADERS if several else BAD_ROW_HEADERS[1:]
    label = f"Rows dropped ({len(problems):,})" if stored else "Rows that cannot be used"
    return gr.update(value=pd.DataFrame(rows, columns=headers), visible=True, label=label)


def examples_html(examples: list[dict]) -> str:
    blocks = []
    for i, ex in enumerate(examples, start=1):
        body = "".join(
            f'<span class="al-{s["kind"]}">{html.escape(s["text"])}</span>' for s in ex["segments"]
        )
        note = " · <b>dropped by training: the prompt fills max length</b>" if ex["dropped"] else ""
        blocks.append(
            f"<div><small>Example {i}: {ex['tokens']} tokens = {ex['prompt_tokens']} prompt + "
            f"{ex['loss_tokens']} with loss"
            + (f" + {ex['cut_tokens']} cut by max length" if ex["cut_tokens"] else "")
            + f"{note}</small><div class='al-example'>{body}</div></div>"
        )
    legend = (
        "<small>Legend: <span class='al-prompt'>prompt (no loss)</span> · "
        "<span class='al-loss'>trained on (loss)</span> · "
        "<span class='al-cut'>cut by max length</span></small>"
    )
    return legend + "".join(blocks)


def histogram_html(stats: dict) -> str:
    hist, limit = stats["histogram"], stats["max_length"]
    top = max(hist["counts"]) or 1
    bars = "".join(
        f'<div class="al-bar{" over" if hist["edges"][i + 1] - 1 > limit else ""}" '
        f'title="{hist["edges"][i]}-{hist["edges"][i + 1] - 1} tokens: {c} rows" '
        f'style="height:{100 * c / top:.1f}%"></div>'
        for i, c in enumerate(hist["counts"])
    )
    edges = hist["edges"]
    over = stats["truncated_rows"] + stats["chunked_rows"]
    return (
        f"<div><small>Tokens per row: {edges[0]} to {edges[-1] - 1}"
        + (f"; red: past max length {limit} ({over:,} rows)" if over else "")
        + f"</small><div class='al-hist'>{bars}</div>"
        f"<div class='al-axis'><span>{edges[0]}</span>"
        f"<span>{(edges[0] + edges[-1]) // 2}</span><span>{edges[-1]} tokens</span></div></div>"
    )


def describe(preview: dict) -> str:
    info = preview["dataset"]
    lines = [
        f"**{info['name']}** (`{info['id']}`): {info['rows']:,} training rows"
        + (f", {info['eval_rows']:,} eval rows (its own split)" if info["eval_rows"] else "")
        + f"; schema `{info['format']}`"
        + (f", {info['dropped_rows']:,} bad rows dropped" if info["dropped_rows"] else "")
        + ".",
        "Mapping: " + ", ".join(f"{k} ← `{v}`" for k, v in info["mapping"].items()) + ".",
    ]
    content = info["stats"]
    if content.get("turns_mean"):
        lines.append(
            f"Turns per row: {content['turns_mean']} (max {content['turns_max']}); "
            f"characters per row: {content['chars_mean']:,} (max {content['chars_max']:,})."
        )
    if content.get("labels"):
        lines.append(f"Labels: {', '.join(content['labels'])}.")
    stats = preview.get("token_stats")
    if stats:
        sample = f" (from a sample of {stats['rows_measured']:,})" if stats["sampled"] else ""
        lines.append(
            f"Tokens per row{sample}: mean {stats['tokens_mean']}, median {stats['tokens_p50']}, "
            f"95% {stats['tokens_p95']}, max {stats['tokens_max']}. "
            f"Max length {stats['max_length']} truncates **{stats['truncated_rows']:,}** rows"
            + (f" and splits {stats['chunked_rows']:,} long texts" if stats["chunked_rows"] else "")
            + f"; {stats['tokens_per_epoch']:,} tokens per epoch"
            + (
                f", about {_duration(stats['seconds_per_epoch'])} per epoch at the "
                f"{stats['tokens_per_s_history']:,} tokens/s of past jobs on this model."
                if stats["seconds_per_epoch"]
                else " (no past job on this model to time an epoch by)."
            )
        )
    lines += [f"- Warning: {w}" for w in info["warnings"]]
    return "\n\n".join(lines)


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"
