"""The preview is what training sees: the same token ids and loss mask as TRL's prepared dataset."""

from __future__ import annotations

import json

import pytest

import service
from finetune.examples import to_examples, to_prompt_completion
from finetune.preview import (
    encode_row,
    encode_rows,
    histogram,
    load_tokenizer,
    render,
    token_lengths,
)
from storage.store import JobState
from tests.conftest import bundled_models_dir

SYSTEM = {"role": "system", "content": "Answer with a number."}


def chat(*turns: str, system: bool = False) -> dict:
    roles = ["user", "assistant"] * len(turns)
    messages = [{"role": r, "content": t} for r, t in zip(roles, turns, strict=False)]
    return {"messages": ([SYSTEM] if system else []) + messages}


CHAT_ROWS = [
    chat("What is 12 + 13?", "25"),
    chat("hello how are you", "fine thanks", system=True),
    chat("what is", "the", "answer to", "a b c d e f g h i j k l"),  # multi-turn: last answer
    chat("what is the answer " * 30, "fine"),  # the prompt alone fills max_length: dropped
    chat("how are you", "fine thanks " * 20),  # the answer is cut by max_length
]
TEXT_ROWS = [{"text": "What is 10 + 20? 30 " * 12}, {"text": "hello"}]
MAX_LENGTH = 48


def trl_prepared(tokenizer, model_path, examples, tmp_path):
    """input_ids and labels of TRL's SFTTrainer train dataset for these entries."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    config = SFTConfig(
        output_dir=str(tmp_path / "trl"),
        max_length=MAX_LENGTH,
        report_to=[],
        use_cpu=True,
        dataset_num_proc=None,
    )
    trainer = SFTTrainer(
        model=AutoModelForCausalLM.from_pretrained(model_path),
        args=config,
        train_dataset=Dataset.from_list(examples),
        processing_class=tokenizer,
    )
    return [(ex["input_ids"], ex["labels"]) for ex in trainer.train_dataset]


def ours(tokenizer, rows):
    out = []
    for row in rows:
        for ex in encode_row(tokenizer, row, MAX_LENGTH):
            if ex.dropped:
                continue
            ids = ex.input_ids[:MAX_LENGTH]
            out.append((ids, [-100] * min(ex.loss_from, len(ids)) + ids[ex.loss_from :]))
    return out


@pytest.mark.parametrize("rows", [CHAT_ROWS, TEXT_ROWS], ids=["chat", "text"])
def test_preview_tokens_and_loss_match_trl(tiny_model, tmp_path, rows):
    """Our examples (the preview's, and what training feeds TRL, tokenized in batches) are the
    ids and loss mask TRL makes itself from prompt/completion rows."""
    tokenizer = load_tokenizer(str(tiny_model))
    expected = ours(tokenizer, rows)
    trained = trl_prepared(
        tokenizer, str(tiny_model), to_examples(rows, tokenizer, MAX_LENGTH), tmp_path
    )
    assert trained == expected
    assert encode_rows(tokenizer, rows, MAX_LENGTH) == [
        encode_row(tokenizer, r, MAX_LENGTH) for r in rows
    ]
    if rows is CHAT_ROWS:
        assert len(expected) == len(rows) - 1, "the row whose prompt fills max_length is dropped"
        own = [to_prompt_completion(r) for r in rows]  # TRL tokenizes these itself
        assert trl_prepared(tokenizer, str(tiny_model), own, tmp_path) == expected
    else:
        assert len(expected) > len(rows), "a long text is split into chunks, not cut"


def test_render_marks_prompt_loss_and_cut(tiny_model):
    tokenizer = load_tokenizer(str(tiny_model))
    (short,) = render(tokenizer, CHAT_ROWS[1], MAX_LENGTH)
    kinds = [s["kind"] for s in short["segments"]]
    assert kinds == ["prompt", "loss"]
    assert short["segments"][1]["text"] == "fine thanks<|im_end|>\n"
    assert short["segments"][0]["text"].startswith("<|im_start|>system\nAnswer with a number.")
    (cut,) = render(tokenizer, CHAT_ROWS[4], MAX_LENGTH)
    assert [s["kind"] for s in cut["segments"]] == ["prompt", "loss", "cut"]
    assert cut["prompt_tokens"] + cut["loss_tokens"] == MAX_LENGTH
    assert cut["cut_tokens"] == cut["tokens"] - MAX_LENGTH > 0
    (dropped,) = render(tokenizer, CHAT_ROWS[3], MAX_LENGTH)
    assert dropped["dropped"] and dropped["loss_tokens"] == 0


def test_fast_lengths_equal_exact_ones(tiny_model):
    models = [str(tiny_model)]
    bundled = bundled_models_dir() / "SmolLM2-135M-Instruct"
    if bundled.is_dir():
        models.append(str(bundled))
    for model in models:
        tokenizer = load_tokenizer(model)
        rows = CHAT_ROWS + TEXT_ROWS
        exact = [sum(len(e.input_ids) for e in encode_row(tokenizer, r, 10**6)) for r in rows]
        assert token_lengths(tokenizer, rows) == exact, model


def test_histogram_bins():
    hist = histogram([10, 12, 30, 50, 50], bins=4)
    assert hist == {"edges": [10, 21, 32, 43, 54], "counts": [2, 1, 0, 2]}
    assert histogram([7]) == {"edges": [7, 8], "counts": [1]}


def test_preview_action_with_stats_and_epoch_time_from_history(
    settings, store, tiny_model, tmp_path
):
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in CHAT_ROWS))
    info = service.upload_dataset(settings, path, "p")
    preview = service.preview_dataset(settings, info["id"], str(tiny_model), MAX_LENGTH, 2)
    assert len(preview["examples"]) == 2 and len(preview["rows"]) == 2
    stats = preview["token_stats"]
    lengths = token_lengths(load_tokenizer(str(tiny_model)), CHAT_ROWS)
    assert stats["tokens_max"] == max(lengths) and stats["rows_measured"] == 5
    assert stats["truncated_rows"] == sum(n > MAX_LENGTH for n in lengths) >= 2
    assert stats["tokens_per_epoch"] == sum(min(n, MAX_LENGTH) for n in lengths)
    assert sum(stats["histogram"]["counts"]) == 5
    assert stats["seconds_per_epoch"] is None, "no job history yet"

    job = store.add_job("past", {"base_model": str(tiny_model)}, info["id"])
    store.claim_job(job.id)
    store.add_metric(job.id, step=1, tokens_per_s=100.0)
    store.finish_job(job.id, JobState.SUCCEEDED)
    again = service.preview_dataset(settings, info["id"], str(tiny_model), MAX_LENGTH)
    timed = again["token_stats"]
    assert timed["tokens_per_s_history"] == 100.0
    assert timed["seconds_per_epoch"] == round(timed["tokens_per_epoch"] / 100.0, 1)


def test_text_chunks_never_end_in_a_lone_token():
    from finetune.preview import chunks

    assert chunks(list(range(9)), 4) == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert chunks(list(range(10)), 4) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert chunks([7], 4) == [[7]]
