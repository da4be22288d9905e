"""Sample answers during training: a few fixed eval prompts, answered greedily as the run goes."""

from __future__ import annotations

import contextlib

from finetune.tasks import SEQ_2_SEQ_LM, SEQ_CLS

SAMPLE_PROMPTS = 3
SAMPLE_TOKENS = 32
TEXT_PROMPT_TOKENS = 24  # plain-text rows: the first tokens of a document, continued


def sample_rows(eval_rows: list[dict], train_rows: list[dict], n: int = SAMPLE_PROMPTS) -> list:
    """The same rows at every sample: held-out ones when there are, so answers are unseen."""
    return (eval_rows or train_rows)[:n]


def prompt_text(row: dict) -> str:
    """What the sample shows as its prompt: the last user turn, or a document's start."""
    if "text" in row:
        return row["text"][:200]
    users = [m["content"] for m in row["messages"] if m["role"] == "user"]
    return users[-1] if users else ""


def every_steps(sample_every: int | None, planned_steps: int) -> int:
    """None: four times a run."""
    if sample_every is None:
        return max(1, planned_steps // 4)
    return sample_every


def answer(model, tokenizer, task: str, rows: list[dict], base: bool = False) -> list[str]:
    """Greedy answers to rows (their last turn left out); base=True with a PEFT model answers
    as the base model, its adapter switched off (a classifier: its head before training)."""
    import torch

    was_training = model.training
    model.eval()
    switch_off = base and task != SEQ_CLS and hasattr(model, "disable_adapter")
    off = model.disable_adapter() if switch_off else None
    try:
        with off or contextlib.nullcontext(), torch.no_grad():
            return [_answer_one(model, tokenizer, task, row) for row in rows]
    finally:
        if was_training:
            model.train()


def _answer_one(model, tokenizer, task: str, row: dict) -> str:
    import torch

    device = next(model.parameters()).device
    if task == SEQ_CLS:
        inputs = tokenizer(prompt_text(row), return_tensors="pt", truncation=True).to(device)
        logits = model(**inputs).logits[0]
        probabilities = torch.softmax(logits.float(), dim=-1)
        best = int(probabilities.argmax())
        label = model.config.id2label.get(best, str(best))
        return f"{label} ({probabilities[best]:.0%})"
    if task == SEQ_2_SEQ_LM:
        inputs = tokenizer(prompt_text(row), return_tensors="pt", truncation=True).to(device)
        prompt_length = 0
    elif "text" in row:
        ids = tokenizer(row["text"], add_special_tokens=False)["input_ids"][:TEXT_PROMPT_TOKENS]
        inputs = {"input_ids": torch.tensor([ids], device=device)}
        inputs["attention_mask"] = torch.ones_like(inputs["input_ids"])
        prompt_length = len(ids)
    else:
        inputs = tokenizer.apply_chat_template(
            row["messages"][:-1], add_generation_prompt=True, return_tensors="pt", return_dict=True
        ).to(device)
        prompt_length = inputs["input_ids"].shape[1]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    output = model.generate(
        **inputs,
        max_new_tokens=SAMPLE_TOKENS,
        do_sample=False,
        temperature=None,
        top_p=None,
        top_k=None,
        pad_token_id=pad,
    )
    return tokenizer.decode(output[0][prompt_length:], skip_special_tokens=True).strip()
