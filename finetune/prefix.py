"""Shared-prefix batches: the tokens every row of a batch opens with are computed once.

Chat rows of one dataset often open alike: the chat template's header and a system prompt (the
arithmetic sample's rows share 23 of their 41 tokens; SmolLM2 adds a default system prompt to
rows that have none). The batch's common prefix runs once, as a batch of one, into a key/value
cache that every row then attends to; only the rows' own tokens run per row, and only the
positions that carry loss go through the output layer. The loss and the gradients are those of
the plain forward (tests/test_prefix.py checks it): the same step for less compute.
"""

from __future__ import annotations

MIN_PREFIX = 8  # tokens: below this, sharing saves too little to matter
TOLERANCE = 1e-3  # relative difference of the two losses the first batch's check accepts


def shared_length(inputs: dict) -> int:
    """How many leading tokens every row of the batch shares, ending before the first position
    whose next token carries loss (0: sharing does not apply)."""
    import torch

    ids = inputs.get("input_ids")
    labels = inputs.get("labels")
    if ids is None or labels is None or ids.dim() != 2 or ids.shape[0] < 2:
        return 0
    mask = inputs.get("attention_mask")
    if mask is None:  # padding-free or packed rows: one sequence, nothing to share
        return 0
    same = (ids == ids[:1]).all(0) & mask.bool().all(0)
    length = int(torch.cumprod(same.long(), 0).sum())
    predicted = (labels != -100).any(0).nonzero()
    if len(predicted):  # a label at position t is predicted from position t - 1
        length = min(length, int(predicted[0]) - 1)
    return length if length >= MIN_PREFIX else 0


def prefix_loss(model, inputs: dict, length: int, num_items_in_batch=None):
    """(loss, per-token hits, loss tokens) of a causal LM on a batch whose first `length`
    tokens are the same in every row, computing those once. `model`: the (PEFT) model."""
    import torch
    from transformers import DynamicCache

    causal_lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    backbone = causal_lm.base_model  # the decoder stack under the output layer
    head = causal_lm.get_output_embeddings()
    ids, mask, labels = inputs["input_ids"], inputs["attention_mask"], inputs["labels"]
    cache = DynamicCache(config=causal_lm.config)
    backbone(input_ids=ids[:1, :length], past_key_values=cache, use_cache=True)
    cache.batch_repeat_interleave(ids.shape[0])
    extra = {}
    if "position_ids" in inputs:
        extra["position_ids"] = inputs["position_ids"][:, length:]
    hidden = backbone(
        input_ids=ids[:, length:],
        attention_mask=mask,
        past_key_values=cache,
        use_cache=True,
        **extra,
    ).last_hidden_state[:, :-1]
    targets = labels[:, length + 1 :]
    keep = targets != -100
    logits = head(hidden[keep]).float()
    wanted = targets[keep]
    loss = torch.nn.functional.cross_entropy(logits, wanted, reduction="sum")
    count = keep.sum()
    divisor = num_items_in_batch if num_items_in_batch is not None else count.clamp(min=1)
    hits = (logits.detach().argmax(-1) == wanted).sum()
    return loss / divisor, hits, count


def plain_loss(model, inputs: dict):
    """The plain forward's mean loss over the tokens that carry it (the check's reference)."""
    import torch

    logits = model(
        input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], use_cache=False
    ).logits[:, :-1]
    targets = inputs["labels"][:, 1:]
    return torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1), ignore_index=-100
    )


def agrees(model, inputs: dict, length: int) -> bool:
    """Whether sharing gives this model the plain forward's loss on this batch (dropout off):
    a model whose attention or output layer works otherwise (softcapped or scaled logits, a
    cache of another kind) falls back to the plain forward."""
    import torch

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            shared, _, _ = prefix_loss(model, inputs, length)
            plain = plain_loss(model, inputs)
    except Exception:  # a model whose forward does not take a cache this way
        return False
    finally:
        model.train(was_training)
    return bool(abs(float(shared) - float(plain)) <= TOLERANCE * max(1.0, abs(float(plain))))


class SharedPrefixLoss:
    """A mixin for TRL's SFTTrainer: the loss of batches whose rows share a prefix, computed
    with it once; any other batch (or a model that fails the first batch's check) goes the
    plain way."""

    share_prefix = True
    _prefix_agrees: bool | None = None  # decided on the first batch that could share

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        length = shared_length(inputs) if self.share_prefix and not return_outputs else 0
        if length and self._prefix_agrees is None:
            self._prefix_agrees = agrees(model, inputs, length)
            if not self._prefix_agrees:
                print("shared prefix: this model's losses differ; training the plain way")
        if not length or not self._prefix_agrees:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        loss, hits, count = prefix_loss(model, inputs, length, num_items_in_batch)
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * self.accelerator.num_processes
        mode = "train" if model.training else "eval"
        self._metrics[mode]["mean_token_accuracy"].append(float(hits) / max(int(count), 1))
        if mode == "train":
            self._total_train_tokens += int(inputs["attention_mask"].sum())
            self._metrics[mode]["num_tokens"] = [self._total_train_tokens]
        return loss
