"""A dataset's rows as a trainer's examples: the split, chat rows as TRL's prompt/completion,
tokenized as finetune.preview defines a training example, and an encoder's inputs and labels."""

from __future__ import annotations

from finetune.data import MAX_LABELS, DataError
from finetune.tasks import SEQ_2_SEQ_LM


def to_prompt_completion(row: dict) -> dict:
    """Chat turns -> TRL's conversational prompt/completion: loss on the last answer only."""
    messages = row["messages"]
    return {"prompt": messages[:-1], "completion": messages[-1:]}


def to_examples(rows: list[dict], tokenizer, max_length: int, cut: bool = False) -> list:
    """Rows as TRL dataset entries, tokenized as finetune.preview defines a training example
    (its tests check it against TRL's own tokenization): chat rows with labels on the last
    answer only (TRL truncates them to max_length, keeping the start), text rows in max-length
    chunks so that no document is cut short. cut: chat rows cut to max_length here (padding-free
    batches, which TRL leaves uncut); a row whose prompt fills max_length is left out, as TRL
    does."""
    from finetune.preview import encode_rows

    out: list[dict] = []
    for row, encoded in zip(rows, encode_rows(tokenizer, rows, max_length), strict=True):
        if "text" in row:
            out.extend({"input_ids": ex.input_ids} for ex in encoded)
            continue
        (ex,) = encoded
        if cut and ex.dropped:
            continue
        ids = ex.input_ids[:max_length] if cut else ex.input_ids
        out.append({"input_ids": ids, "labels": [-100] * ex.loss_from + ids[ex.loss_from :]})
    return out


def split_rows(rows: list[dict], eval_fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """A seeded shuffle-split; tiny sets get no eval rows."""
    import random

    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    n_eval = int(len(rows) * eval_fraction)  # eval_fraction <= 0.5 leaves most rows to train
    return [rows[i] for i in order[n_eval:]], [rows[i] for i in order[:n_eval]]


def class_labels(rows: list[dict]) -> list[str]:
    """The labels of classification rows (their answers), sorted: the head's output order."""
    labels = sorted({r["messages"][-1]["content"] for r in rows if "messages" in r})
    if not labels or len(labels) > MAX_LABELS or any("text" in r for r in rows):
        raise DataError(
            "A classification model (an encoder) trains on a text + label dataset; this one has "
            f"{len(labels)} different answers. Upload it with the classification schema."
        )
    return labels


def encoder_examples(
    rows: list[dict], tokenizer, max_length: int, labels: list[str] | None
) -> list[dict]:
    """Chat rows as an encoder sees them: the user's text in; the answer as a label id
    (classification) or as target tokens (seq2seq)."""
    out = []
    for row in rows:
        if "messages" not in row:
            raise DataError("A seq2seq or classification model trains on input -> target rows.")
        text = "\n\n".join(m["content"] for m in row["messages"][:-1] if m["role"] == "user")
        answer = row["messages"][-1]["content"]
        example = dict(tokenizer(text, truncation=True, max_length=max_length))
        if labels is not None:
            example["labels"] = labels.index(answer)
        else:
            target = tokenizer(text_target=answer, truncation=True, max_length=max_length)
            ids = list(target["input_ids"])
            if tokenizer.eos_token_id is not None and (
                not ids or ids[-1] != tokenizer.eos_token_id
            ):
                ids = [*ids[: max_length - 1], tokenizer.eos_token_id]  # the target's end
            example["labels"] = ids
        out.append(example)
    return out


def collator(task: str, tokenizer):
    from transformers import DataCollatorForSeq2Seq, DataCollatorWithPadding

    if task == SEQ_2_SEQ_LM:
        return DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100)
    return DataCollatorWithPadding(tokenizer)
