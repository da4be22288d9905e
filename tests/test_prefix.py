"""Shared-prefix batches give the plain forward's loss and gradients, for less compute."""

from __future__ import annotations

import pytest
import torch
from peft import IA3Config, LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

from finetune.prefix import MIN_PREFIX, agrees, plain_loss, prefix_loss, shared_length
from finetune.preview import encode_row
from finetune.samples import arithmetic
from finetune.spec import parse_spec
from finetune.train import Reporter, train


def batch(tokenizer, rows, max_length=128):
    """Rows as TRL's collator pads them: input_ids, attention_mask, labels (-100 on prompts)."""
    examples = []
    for row in rows:
        (ex,) = encode_row(tokenizer, row, max_length)
        ids = ex.input_ids[:max_length]
        examples.append({"input_ids": ids, "labels": [-100] * ex.loss_from + ids[ex.loss_from :]})
    return DataCollatorForLanguageModeling(pad_token_id=tokenizer.pad_token_id)(examples)


def wrapped(tiny_model, kind: str):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    if kind == "full":
        return model
    config = (
        LoraConfig(r=4, lora_dropout=0.0, target_modules="all-linear", init_lora_weights="gaussian")
        if kind == "lora"
        else IA3Config(target_modules=["k_proj", "v_proj", "down_proj"])
    )
    return get_peft_model(model, config)


def test_the_shared_length_stops_before_the_first_predicted_token(tiny_model):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    rows = arithmetic(6, 0)[0]
    inputs = batch(tokenizer, rows)
    length = shared_length(inputs)
    ids = inputs["input_ids"]
    assert length >= MIN_PREFIX
    assert (ids[:, :length] == ids[:1, :length]).all()
    assert not (ids[:, : length + 1] == ids[:1, : length + 1]).all() or (
        (inputs["labels"][:, length + 1] != -100).any()
    )
    assert (inputs["labels"][:, : length + 1] == -100).all(), "no loss inside the shared part"
    assert shared_length({**inputs, "input_ids": ids[:1], "labels": inputs["labels"][:1]}) == 0
    assert shared_length({k: v for k, v in inputs.items() if k != "attention_mask"}) == 0


@pytest.mark.parametrize("kind", ["lora", "ia3", "full"])
def test_loss_and_gradients_equal_the_plain_forward(tiny_model, kind):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    model = wrapped(tiny_model, kind)
    inputs = batch(tokenizer, arithmetic(8, 0)[0])
    length = shared_length(inputs)
    assert length

    def gradients(loss_fn):
        model.zero_grad()
        loss = loss_fn()
        loss.backward()
        return float(loss.detach()), {
            n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad
        }

    plain, plain_grads = gradients(lambda: plain_loss(model, inputs))
    shared, shared_grads = gradients(lambda: prefix_loss(model, inputs, length)[0])
    assert shared == pytest.approx(plain, rel=1e-5)
    assert plain_grads.keys() == shared_grads.keys() and plain_grads
    for name, grad in plain_grads.items():
        torch.testing.assert_close(shared_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)
    assert agrees(model, inputs, length)


class Losses(Reporter):
    def __init__(self):
        self.losses, self.evals = [], []

    def logged(self, step, values):
        if "loss" in values:
            self.losses.append(values["loss"])
        if "eval_loss" in values:
            self.evals.append(values["eval_loss"])


def test_a_run_that_shares_its_prefix_learns_the_same_as_one_that_does_not(tiny_model, tmp_path):
    """The trainer's own loop, with and without sharing: the same losses step by step."""
    runs = {}
    for share in (True, False):
        spec = parse_spec(
            {
                "base_model": str(tiny_model),
                "dataset_id": "ds-0123456789ab",
                "method_params": {"r": 4, "lora_dropout": 0.0},
                "training": {
                    "max_steps": 4,
                    "batch_size": 4,
                    "max_length": 128,
                    "learning_rate": 1e-2,
                    "share_prefix": share,
                    "sample_prompts": 0,
                },
            }
        )
        runs[share] = Losses()
        out = tmp_path / f"share-{share}"
        train(spec, arithmetic(40, 0)[0], str(tiny_model), out / "work", out / "ad", runs[share])
    assert len(runs[True].losses) == 4 and runs[True].evals
    assert runs[True].losses == pytest.approx(runs[False].losses, rel=1e-4)
    assert runs[True].evals == pytest.approx(runs[False].evals, rel=1e-4)
