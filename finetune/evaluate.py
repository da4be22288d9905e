"""Evaluation: the base and adapters answer held-out rows; each answer is scored against the
reference with the metric that fits the task (exact match, accuracy, ROUGE, perplexity)."""

from __future__ import annotations

import functools
import math
import re
import time
from collections.abc import Callable
from pathlib import Path

from finetune.fields import SpecError
from finetune.generate import GenerationParams, ModelCache
from finetune.tasks import CAUSAL_LM, SEQ_2_SEQ_LM, SEQ_CLS

METRICS = {
    "exact_match": "the answer equals the reference (case, spaces and a final period aside)",
    "accuracy": "the predicted label is the reference label",
    "rouge": "ROUGE-1, ROUGE-2 and ROUGE-L F1 of the answer against the reference",
    "perplexity": "exp of the mean loss on the reference answer's tokens (lower is better)",
}
HIGHER_IS_BETTER = {"exact_match": True, "accuracy": True, "rouge": True, "perplexity": False}
MAX_LENGTH = 1024  # tokens of one row for perplexity (longer rows are cut, as in training)

Entry = tuple[str, Path] | None


def default_metric(task: str, dataset_format: str) -> str:
    if task == SEQ_CLS:
        return "accuracy"
    if task == SEQ_2_SEQ_LM:
        return "rouge"
    if dataset_format == "text":
        return "perplexity"
    return "exact_match"


def check_metric(metric: str, task: str, has_answers: bool) -> None:
    if metric not in METRICS:
        raise SpecError(f"metric: must be one of {', '.join(METRICS)} (or auto); got {metric!r}")
    if metric == "accuracy" and task != SEQ_CLS:
        raise SpecError("metric: accuracy is for classification models; use exact_match")
    if task == SEQ_CLS and metric != "accuracy":
        raise SpecError("metric: a classification model is scored by accuracy")
    if metric == "perplexity" and task != CAUSAL_LM:
        raise SpecError("metric: perplexity is computed for decoder (causal LM) models only")
    if not has_answers and metric != "perplexity":
        raise SpecError(f"metric: plain-text rows have no reference answers for {metric}")


def normalize(text: str) -> str:
    return re.sub(r"\s+", " ", text.strip().lower()).rstrip(".").strip()


def exact_match(answer: str, reference: str) -> float:
    return float(normalize(answer) == normalize(reference))


def label_of(answer: str) -> str:
    """The playground's classifier answer, 'label (92%)' -> 'label'."""
    return re.sub(r" \(\d+%\)$", "", answer.strip())


def accuracy(answer: str, reference: str) -> float:
    return float(label_of(answer) == reference.strip())


def rouge(answer: str, reference: str) -> dict[str, float]:
    scores = _scorer().score(reference, answer)
    return {name: scores[name].fmeasure for name in ("rouge1", "rouge2", "rougeL")}


@functools.cache
def _scorer():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)


def answer_losses(model, tokenizer, row: dict) -> tuple[float, int]:
    """Summed cross-entropy over the tokens that carry loss in training (the answer, or all of a
    text row), and their count: perplexity = exp(sum of sums / sum of counts)."""
    import torch

    from finetune.preview import encode_row

    total, count = 0.0, 0
    for example in encode_row(tokenizer, row, MAX_LENGTH):
        ids = example.input_ids[:MAX_LENGTH]
        start = max(example.loss_from, 1)  # the first token has nothing to be predicted from
        if start >= len(ids):
            continue
        with torch.inference_mode():
            logits = model(input_ids=torch.tensor([ids], device=model.device)).logits[0]
        targets = torch.tensor(ids[start:], device=logits.device)
        losses = torch.nn.functional.cross_entropy(
            logits[start - 1 : len(ids) - 1].float(), targets, reduction="sum"
        )
        total += float(losses)
        count += len(ids) - start
    return total, count


def reference_of(row: dict) -> str:
    return row["messages"][-1]["content"] if "messages" in row else ""


def prompt_of(row: dict) -> str:
    if "text" in row:
        return row["text"][:300]
    return row["messages"][-2]["content"] if len(row["messages"]) > 1 else ""


def evaluate(
    cache: ModelCache,
    model_path: str,
    entries: list[Entry],
    rows: list[dict],
    metric: str,
    params: GenerationParams,
    progress: Callable[[int, int], bool] | None = None,
    trust_remote_code: bool = False,
    group_by: str | None = None,
) -> dict:
    """Every entry (None: the base) over every row -> {summary, examples}.

    summary: one dict per entry with its metric value(s) and seconds (and with group_by, a
    column kept beside the rows, the same per value of it: "groups"); examples: per row, the
    prompt, the reference, the group, and each entry's answer and score. progress(done, total)
    is called after each answer and stops the run when it returns False.
    """
    total = len(entries) * len(rows)
    examples = [
        {
            "index": i,
            "prompt": prompt_of(r),
            "reference": reference_of(r),
            "group": group_of(r, group_by),
            "answers": [],
        }
        for i, r in enumerate(rows)
    ]
    summary = []
    done = 0
    for entry in entries:
        name = None if entry is None else entry[0]
        scores: list = []
        nll, tokens, seconds = 0.0, 0, 0.0
        for row, example in zip(rows, examples, strict=True):
            if metric == "perplexity":
                with cache.using(model_path, entry, trust_remote_code) as (model, tokenizer, _):
                    start = time.perf_counter()  # loading the model is not answering
                    row_nll, row_tokens = answer_losses(model, tokenizer, row)
                    seconds += time.perf_counter() - start
                nll, tokens = nll + row_nll, tokens + row_tokens
                score = math.exp(row_nll / row_tokens) if row_tokens else None
                example["answers"].append({"adapter": name, "text": "", "score": score})
            else:
                chat = row["messages"][:-1]
                *_, last = cache.stream(model_path, entry, chat, params, trust_remote_code)
                seconds += last.get("seconds") or 0.0
                score = _score(metric, last["text"], reference_of(row))
                scores.append(score)
                example["answers"].append(
                    {"adapter": name, "text": last["text"], "score": _headline(metric, score)}
                )
            done += 1
            if progress is not None and not progress(done, total):
                return {"summary": summary, "examples": examples, "stopped": True}
        result = {"adapter": name, "rows": len(rows), "seconds": round(seconds, 2)}
        if metric == "perplexity":
            result["perplexity"] = math.exp(nll / tokens) if tokens else None
            result["tokens"] = tokens
        else:
            result.update(_means(metric, scores))
        if group_by:
            result["groups"] = _by_group(metric, examples, len(summary))
        summary.append(result)
    return {"summary": summary, "examples": examples, "stopped": False}


def group_of(row: dict, group_by: str | None):
    """The row's value in the column an evaluation is split by (None: not split)."""
    return row.get("meta", {}).get(group_by) if group_by else None


def _means(metric: str, scores: list) -> dict:
    if metric == "rouge":
        return {
            key: sum(s[key] for s in scores) / len(scores) if scores else None
            for key in ("rouge1", "rouge2", "rougeL")
        }
    return {metric: sum(scores) / len(scores) if scores else None}


def _by_group(metric: str, examples: list[dict], entry: int) -> list[dict]:
    """One entry's headline score per value of the group column (perplexity: the mean of the
    rows' own perplexities), values in order."""
    groups: dict = {}
    for example in examples:
        score = example["answers"][entry]["score"]
        if score is not None:
            groups.setdefault(example["group"], []).append(score)
    key = "rougeL" if metric == "rouge" else metric
    return [
        {"group": value, "rows": len(scores), key: sum(scores) / len(scores)}
        for value, scores in sorted(groups.items(), key=lambda item: str(item[0]))
    ]


def headline(result: dict, metric: str) -> float | None:
    """The one number a summary row is ranked by."""
    return result.get("rougeL" if metric == "rouge" else metric)


def _score(metric: str, answer: str, reference: str):
    if metric == "exact_match":
        return exact_match(answer, reference)
    if metric == "accuracy":
        return accuracy(answer, reference)
    return rouge(answer, reference)


def _headline(metric: str, score) -> float:
    return score["rougeL"] if metric == "rouge" else score
