"""Parameter counts from a meta-device model match the LoRA formula and PEFT's count on weights."""

from __future__ import annotations

import pytest
import torch
from peft import get_peft_model
from transformers import AutoModelForCausalLM

from finetune.counts import count_parameters, linear_module_names
from finetune.fields import SpecError
from finetune.methods import METHODS, Context, apply_method, get_method
from finetune.models import load_config


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
    peft_model = get_peft_model(base, get_method("lora").peft_config(params, Context()))
    assert (counts.trainable, counts.total) == peft_model.get_nb_trainable_parameters()
    assert 0 < counts.percent < 100


def test_linear_module_names(tiny_model):
    names = linear_module_names(str(tiny_model))
    assert names == ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]


def test_unknown_target_module_lists_the_real_ones(tiny_model):
    params = {**get_method("lora").parse({}), "target_modules": ["query"]}
    with pytest.raises(SpecError, match=r"target_modules: query not found.*q_proj"):
        count_parameters(str(tiny_model), "lora", params)


@pytest.mark.parametrize("method_id", list(METHODS))
def test_meta_counts_equal_counts_on_real_weights(tiny_model, tmp_path, method_id):
    """The weightless count (shown before Start) is the count of the model that trains, and
    the size is that of the files the run writes."""
    from safetensors.torch import load_file

    from finetune.train import save_trained

    method = get_method(method_id)
    params = method.parse({"target_modules": ["q_proj", "v_proj"]} if "r" in _names(method) else {})
    counts = count_parameters(str(tiny_model), method_id, params)
    model = apply_method(
        AutoModelForCausalLM.from_pretrained(tiny_model), method, params, Context(str(tiny_model))
    )
    real = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert counts.trainable == real > 0
    save_trained(model, None, method, params, tmp_path / "out")
    (weights,) = tmp_path.joinpath("out").glob("*.safetensors")
    saved = sum(t.numel() for t in load_file(weights).values())
    assert counts.size_bytes == 4 * saved


def _names(method):
    return {f.name for f in method.fields}


def test_counts_match_the_formulas(tiny_model):
    base = AutoModelForCausalLM.from_pretrained(tiny_model)
    config, base_total = base.config, sum(p.numel() for p in base.parameters())
    modules = dict(base.named_modules())

    params = get_method("prompt_tuning").parse({"num_virtual_tokens": 7})
    prompt = count_parameters(str(tiny_model), "prompt_tuning", params)
    assert prompt.trainable == 7 * config.hidden_size, "virtual tokens x hidden size"

    ia3 = count_parameters(str(tiny_model), "ia3", get_method("ia3").parse({}))
    expected = sum(
        m.in_features if name.endswith("down_proj") else m.out_features  # feed-forward: input
        for name, m in modules.items()
        if name.rsplit(".", 1)[-1] in ("k_proj", "v_proj", "down_proj")
    )
    assert ia3.trainable == expected, "one vector per adapted module"

    params = get_method("selective").parse({"train": "top_layers", "top_layers": 1})
    top = count_parameters(str(tiny_model), "selective", params)
    last = config.num_hidden_layers - 1
    assert top.trainable == sum(
        p.numel() for n, p in base.named_parameters() if n.startswith(f"model.layers.{last}.")
    )
    full = count_parameters(str(tiny_model), "full", {})
    assert full.trainable == full.total == base_total and full.percent == 100


def test_selective_refusals_name_the_problem(tiny_model):
    with pytest.raises(SpecError, match="no parameters that are biases"):
        count_parameters(
            str(tiny_model), "selective", get_method("selective").parse({"train": "bias"})
        )
    with pytest.raises(SpecError, match="the model has 2 layers, got 5"):
        params = get_method("selective").parse({"top_layers": 5})
        count_parameters(str(tiny_model), "selective", params)
    with pytest.raises(SpecError, match="feedforward_modules: up_proj must also be in"):
        get_method("ia3").parse({"feedforward_modules": ["up_proj"]})


def test_selective_names_find_tied_weights():
    """SmolLM2 ties lm_head to embed_tokens: naming either trains that one tensor."""
    from tests.conftest import bundled_models_dir

    model = bundled_models_dir() / "SmolLM2-135M-Instruct"
    if not model.is_dir():
        pytest.skip("the bundled model is prepared by `make test`")
    params = get_method("selective").parse({"train": "names", "module_names": ["lm_head"]})
    counts = count_parameters(str(model), "selective", params)
    config = load_config(str(model))
    assert config.tie_word_embeddings and counts.trainable == config.vocab_size * config.hidden_size
