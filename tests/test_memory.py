"""The pre-flight memory estimate: each part follows the settings; advice when it will not fit."""

from __future__ import annotations

from dataclasses import replace

import pytest

from finetune.counts import count_parameters
from finetune.memory import GIB, Device, estimate_memory
from finetune.methods import get_method
from finetune.models import load_config
from finetune.spec import TRAINING_FIELDS

ROOMY = Device("cpu", "test CPU", 64 * GIB, 64 * GIB)
TRAINING = {f.name: f.default for f in TRAINING_FIELDS}


def estimate(model, method_id, device=ROOMY, params=None, **training):
    method = get_method(method_id)
    params = method.parse(params or {})
    counts = count_parameters(str(model), method_id, params)
    return estimate_memory(
        load_config(str(model)),
        counts.trainable,
        counts.total,
        method,
        params,
        {**TRAINING, **training},
        device,
    ), counts


def test_parts_follow_the_counts_and_settings(tiny_model):
    lora, counts = estimate(tiny_model, "lora", batch_size=4, max_length=64)
    config = load_config(str(tiny_model))
    assert lora.weights == (counts.total - counts.trainable) * 4 + counts.trainable * 4
    assert lora.gradients == counts.trainable * 4 and lora.optimizer == counts.trainable * 8
    assert lora.logits == 4 * 64 * config.vocab_size * 8
    double, _ = estimate(tiny_model, "lora", batch_size=8, max_length=64)
    assert double.activations == 2 * lora.activations and double.logits == 2 * lora.logits
    checkpointed, _ = estimate(
        tiny_model, "lora", batch_size=4, max_length=64, activation_checkpointing=True
    )
    assert checkpointed.activations < lora.activations  # two layers: one kept whole

    full, full_counts = estimate(tiny_model, "full", batch_size=4, max_length=64)
    assert full_counts.trainable == full_counts.total
    assert full.gradients + full.optimizer == full_counts.total * 12, "float32 grads + AdamW"
    assert full.total > lora.total

    qlora, _ = estimate(tiny_model, "qlora", batch_size=4, max_length=64)
    assert qlora.weights < lora.weights, "a 4-bit base is smaller"
    eight_bit, _ = estimate(tiny_model, "qlora", params={"bits": 8}, batch_size=4, max_length=64)
    assert qlora.weights < eight_bit.weights < lora.weights


def test_too_big_for_the_device_says_what_to_change(tiny_model):
    fine, _ = estimate(tiny_model, "lora")
    assert fine.fits and fine.advice == []
    small = replace(ROOMY, available_bytes=fine.total - 1)
    tight, _ = estimate(tiny_model, "lora", device=small)
    assert not tight.fits
    assert {a.split(" saves")[0] for a in tight.advice} == {
        "QLoRA (the base in 4-bit)",
        "batch size 4",
        "max length 128",
        "activation checkpointing",
    }
    savings = [float(a.split("about ")[1].split(" GiB")[0]) for a in tight.advice]
    assert savings == sorted(savings, reverse=True)
    as_dict = tight.to_dict()
    assert as_dict["fits"] is False and as_dict["total"] == tight.total


@pytest.mark.parametrize("method_id", ["prompt_tuning", "prefix_tuning"])
def test_virtual_tokens_lengthen_the_sequence(tiny_model, method_id):
    few, _ = estimate(tiny_model, method_id, params={"num_virtual_tokens": 1}, max_length=64)
    many, _ = estimate(tiny_model, method_id, params={"num_virtual_tokens": 64}, max_length=64)
    assert many.activations > few.activations and many.logits > few.logits


def test_batches_are_padded_to_their_longest_row_not_to_max_length(tiny_model):
    method = get_method("lora")
    params = method.parse({})
    counts = count_parameters(str(tiny_model), "lora", params)
    config = load_config(str(tiny_model))
    training = {**TRAINING, "max_length": 256}

    def with_longest(longest):
        return estimate_memory(
            config, counts.trainable, counts.total, method, params, training, ROOMY, longest
        )

    short, unknown, long = with_longest(40), with_longest(None), with_longest(10_000)
    assert short.activations < unknown.activations == long.activations
    assert short.logits == TRAINING["batch_size"] * 40 * config.vocab_size * 8
