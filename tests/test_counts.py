"""Parameter counts from a meta-device model match the LoRA formula and PEFT's count on weights."""

from __future__ import annotations

import pytest
import torch
from peft import get_peft_model
from transformers import AutoModelForCausalLM

from finetune.counts import count_parameters, linear_module_names
from finetune.fields import SpecError
from finetune.methods import get_method


@pytest.mark.parametrize("r", [1, 4, 8])
@pytest.mark.parametrize(
    "targets", [["q_proj", "v_proj"], ["q_proj", "k_proj", "v_proj", "o_proj"]]
)
def test_lora_counts_match_formula_and_peft(tiny_model, r, targets):
    params = {**get_method("lora").parse({}), "r": r, "target_modules": targets}
    counts = count_parameters(str(tiny_model), "lora", params)

    base = AutoModelForCausalLM.from_pretrained(tiny_model)
    expected = sum(
        r * (module.in_features + module.out_features)
        for name, module in base.named_modules()
        if isinstance(module, torch.nn.Linear) and name.rsplit(".", 1)[-1] in targets
    )
    total_base = sum(p.numel() for p in base.parameters())
    assert counts.trainable == expected
    assert counts.total == total_base + expected
    peft_model = get_peft_model(base, get_method("lora").build(params, "CAUSAL_LM"))
    assert (counts.trainable, counts.total) == peft_model.get_nb_trainable_parameters()
    assert 0 < counts.percent < 100


def test_linear_module_names(tiny_model):
    names = linear_module_names(str(tiny_model))
    assert names == ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]


def test_unknown_target_module_lists_the_real_ones(tiny_model):
    params = {**get_method("lora").parse({}), "target_modules": ["query"]}
    with pytest.raises(SpecError, match=r"target_modules: query not found.*q_proj"):
        count_parameters(str(tiny_model), "lora", params)
