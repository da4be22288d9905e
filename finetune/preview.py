"""What the model will see: rows turned into token ids exactly as training does, and their stats.

`encode_row` is the one definition of a training example. train.py feeds TRL the same rows and
tests/test_preview.py checks, token for token, that TRL's prepared dataset matches it: chat rows
get the base model's chat template with loss on the last answer only (TRL's conversational
prompt/completion); text rows get an end-of-text token and are cut into max-length chunks, all
tokens carrying loss (continued pretraining).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any

from finetune.sources import no_gc

HISTOGRAM_BINS = 20
STATS_SAMPLE = 5_000  # rows tokenized for the statistics of a bigger dataset
_BATCH = 1_000  # rows rendered and tokenized at a time: bounded memory on any dataset


@dataclass(frozen=True)
class Example:
    input_ids: list[int]
    loss_from: int  # tokens before this index are prompt (no loss); from it on, loss
    dropped: bool  # the prompt alone fills max_length: training skips this row

    def counts(self) -> tuple[int, int]:
        return self.loss_from, len(self.input_ids) - self.loss_from


@functools.lru_cache(maxsize=4)
def load_tokenizer(model_path: str, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_path, trust_remote_code=trust_remote_code)


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def _chat_ids(tokenizer, messages: list[dict], **kwargs) -> list[int]:
    return list(
        tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True, **kwargs)[
            "input_ids"
        ]
    )


def text_ids(tokenizer, text: str) -> list[int]:
    eos = tokenizer.eos_token or ""
    return list(tokenizer(text=text if text.endswith(eos) else text + eos)["input_ids"])


def chunks(ids: list[int], max_length: int) -> list[list[int]]:
    """Max-length pieces; a last piece of one token (often the end-of-text alone) predicts
    nothing, so it is left out."""
    pieces = [ids[i : i + max_length] for i in range(0, len(ids), max_length)]
    return [p for p in pieces if len(p) > 1] or [ids]


def encode_row(tokenizer, row: dict, max_length: int) -> list[Example]:
    """A normalized row as the training example(s) it becomes, before truncation to max_length.

    Chat rows are one example (truncation happens in TRL, keeping the start); text rows are one
    example per max_length chunk.
    """
    if "text" in row:
        return [Example(c, 0, False) for c in chunks(text_ids(tokenizer, row["text"]), max_length)]
    messages = row["messages"]
    prompt = _chat_ids(tokenizer, messages[:-1], add_generation_prompt=True)
    full = _chat_ids(tokenizer, messages)
    loss_from = _common_prefix(prompt, full)  # as TRL: the answer starts where they diverge
    return [Example(full, loss_from, dropped=loss_from >= max_length)]


def encode_rows(tokenizer, rows: list[dict], max_length: int) -> list[list[Example]]:
    """encode_row for many rows at once, the same ids: chat templates rendered to text, then
    tokenized in batches (what apply_chat_template does one row at a time, ~3x slower)."""
    out: list[list[Example]] = []
    for start in range(0, len(rows), _BATCH):
        out += _encode_batch(tokenizer, rows[start : start + _BATCH], max_length)
    return out


def _encode_batch(tokenizer, rows: list[dict], max_length: int) -> list[list[Example]]:
    chats = [r["messages"] for r in rows if "text" not in r]
    texts = [tokenizer.apply_chat_template(m, tokenize=False) for m in chats]
    texts += [
        tokenizer.apply_chat_template(m[:-1], tokenize=False, add_generation_prompt=True)
        for m in chats
    ]
    ids = iter(_ids(tokenizer, texts))
    fulls = [next(ids) for _ in chats]
    prompts = [next(ids) for _ in chats]
    encoded = iter(zip(fulls, prompts, strict=True))
    out = []
    for row in rows:
        if "text" in row:
            out.append(encode_row(tokenizer, row, max_length))
            continue
        full, prompt = next(encoded)
        loss_from = _common_prefix(prompt, full)
        out.append([Example(full, loss_from, dropped=loss_from >= max_length)])
    return out


def _ids(tokenizer, texts: list[str]) -> list[list[int]]:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        return [e.ids for e in backend.encode_batch(texts, add_special_tokens=False)]
    return tokenizer(texts, add_special_tokens=False)["input_ids"]


def render(tokenizer, row: dict, max_length: int) -> list[dict[str, Any]]:
    """Each example of a row as text segments marked prompt / loss / cut (beyond max_length)."""
    out = []
    for ex in encode_row(tokenizer, row, max_length):
        ids, cut = ex.input_ids, min(len(ex.input_ids), max_length)
        spans = [
            ("prompt", ids[: min(ex.loss_from, cut)]),
            ("loss", ids[min(ex.loss_from, cut) : cut]),
            ("cut", ids[cut:]),
        ]
        out.append(
            {
                "segments": [
                    {"kind": kind, "text": tokenizer.decode(part)} for kind, part in spans if part
                ],
                "tokens": len(ids),
                "prompt_tokens": min(ex.loss_from, len(ids)),
                "loss_tokens": max(0, cut - ex.loss_from),
                "cut_tokens": len(ids) - cut,
                "dropped": ex.dropped,
            }
        )
    return out


def token_lengths(tokenizer, rows: list[dict]) -> list[int]:
    """Each row's whole length in tokens (all chunks of a text row), fast: templates rendered to
    text, then batches through the tokenizer, which is what apply_chat_template does."""
    lengths: list[int] = []
    with no_gc():
        for start in range(0, len(rows), _BATCH):
            lengths += _batch_lengths(tokenizer, rows[start : start + _BATCH])
    return lengths


def _batch_lengths(tokenizer, rows: list[dict]) -> list[int]:
    eos = tokenizer.eos_token or ""
    lengths = [0] * len(rows)
    for is_text in (False, True):
        idx = [i for i, r in enumerate(rows) if ("text" in r) == is_text]
        if not idx:
            continue
        if is_text:
            texts = [rows[i]["text"] for i in idx]
            texts = [t if t.endswith(eos) else t + eos for t in texts]
        else:
            texts = [
                tokenizer.apply_chat_template(rows[i]["messages"], tokenize=False) for i in idx
            ]
        for i, n in zip(idx, _count(tokenizer, texts, add_special_tokens=is_text), strict=True):
            lengths[i] = n
    return lengths


def _count(tokenizer, texts: list[str], add_special_tokens: bool) -> list[int]:
    backend = getattr(tokenizer, "backend_tokenizer", None)  # fast tokenizers: no id lists made
    if backend is not None:
        return [len(e) for e in backend.encode_batch(texts, add_special_tokens=add_special_tokens)]
    ids = tokenizer(texts, add_special_tokens=add_special_tokens)["input_ids"]
    return [len(x) for x in ids]


def histogram(lengths: list[int], bins: int = HISTOGRAM_BINS) -> dict[str, list[int]]:
    """Equal-width bins from the shortest row to the longest; one more edge than counts."""
    low, top = min(lengths, default=0), max(lengths, default=0)
    width = max(1, math.ceil((top - low + 1) / bins))
    counts = [0] * min(bins, math.ceil((top - low + 1) / width))
    for n in lengths:
        counts[(n - low) // width] += 1
    return {"edges": [low + i * width for i in range(len(counts) + 1)], "counts": counts}


def token_stats(
    tokenizer, rows: list[dict], max_length: int, total: int | None = None
) -> dict[str, Any]:
    """Length histogram, truncation and tokens per epoch of rows, a sample of `total` rows."""
    picked, total = rows, len(rows) if total is None else total
    lengths = token_lengths(tokenizer, picked)
    scale = total / max(len(picked), 1)
    is_text = bool(rows) and "text" in rows[0]
    over = sum(n > max_length for n in lengths)
    ordered = sorted(lengths) or [0]
    return {
        "rows_measured": len(picked),
        "sampled": len(picked) < total,
        "max_length": max_length,
        "tokens_mean": round(sum(lengths) / max(len(lengths), 1), 1),
        "tokens_p50": ordered[len(ordered) // 2],
        "tokens_p95": ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))],
        "tokens_max": ordered[-1],
        # Chat rows past max_length lose the end of their answer; text rows are chunked instead.
        "truncated_rows": 0 if is_text else round(over * scale),
        "chunked_rows": round(over * scale) if is_text else 0,
        "tokens_per_epoch": round(
            sum(n if is_text else min(n, max_length) for n in lengths) * scale
        ),
        "histogram": histogram(lengths),
    }
