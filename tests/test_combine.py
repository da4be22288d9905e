"""Combining adapters: exact combinations add the weighted deltas; refusals say why."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from peft import (
    AdaLoraConfig,
    IA3Config,
    LoHaConfig,
    LoraConfig,
    PeftModel,
    PromptTuningConfig,
    get_peft_model,
)
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from finetune.combine import COMBINATIONS, Source, combine_adapters
from finetune.fields import SpecError

TARGETS = ["q_proj", "v_proj"]


def make_adapter(base: Path, out: Path, config, seed: int) -> Path:
    """A PEFT adapter with random (non-zero) weights: no training needed to test arithmetic."""
    torch.manual_seed(seed)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base), config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_" in name or "ia3_" in name:
                param.normal_(0, 0.05) if "lora_" in name else param.uniform_(0.5, 1.5)
    model.save_pretrained(out)
    return out


def lora(r: int, **extra) -> LoraConfig:
    return LoraConfig(r=r, lora_alpha=2 * r, target_modules=TARGETS, task_type="CAUSAL_LM", **extra)


def merged_state(base: Path, folder: Path) -> dict[str, torch.Tensor]:
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), str(folder))
    return {k: v.clone() for k, v in model.merge_and_unload().state_dict().items()}


@pytest.fixture(scope="module")
def adapters(tiny_model, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("adapters")
    configs = {
        "r4": lora(4),
        "r8": lora(8),
        "r4b": lora(4),
        "dora": lora(4, use_dora=True),
        "ia3": IA3Config(target_modules=["k_proj", "down_proj"], feedforward_modules=["down_proj"]),
        "ia3b": IA3Config(
            target_modules=["k_proj", "down_proj"], feedforward_modules=["down_proj"]
        ),
        "loha": LoHaConfig(r=4, target_modules=TARGETS),
        "adalora": AdaLoraConfig(r=4, target_modules=TARGETS, total_step=10),
        "prompt": PromptTuningConfig(num_virtual_tokens=4, task_type="CAUSAL_LM"),
    }
    return {
        name: make_adapter(tiny_model, root / name, config, seed)
        for seed, (name, config) in enumerate(configs.items())
    }


@pytest.mark.parametrize("combination", ["cat", "svd"])
def test_exact_combinations_add_the_weighted_deltas(tiny_model, adapters, tmp_path, combination):
    """cat is exact at any ranks; svd is exact when its rank holds the sum (4 + 8)."""
    weights = (0.7, -0.3)
    sources = [Source("r4", adapters["r4"], weights[0]), Source("r8", adapters["r8"], weights[1])]
    out = tmp_path / "combined"
    info = combine_adapters(
        str(tiny_model), sources, combination, out, svd_rank=12 if combination == "svd" else None
    )
    assert info["peft_type"] == "LORA" and info["r"] == 12
    assert {p.name for p in out.iterdir()} == {"adapter_config.json", "adapter_model.safetensors"}
    assert info["trainable_params"] == sum(
        t.numel() for t in load_file(out / "adapter_model.safetensors").values()
    )

    base = AutoModelForCausalLM.from_pretrained(tiny_model).state_dict()
    one, two = merged_state(tiny_model, adapters["r4"]), merged_state(tiny_model, adapters["r8"])
    combined = merged_state(tiny_model, out)  # loaded by a plain PEFT script
    changed = 0
    for name, weight in base.items():
        expected = weight + weights[0] * (one[name] - weight) + weights[1] * (two[name] - weight)
        assert torch.allclose(combined[name], expected, atol=1e-5), name
        changed += not torch.equal(combined[name], weight)
    assert changed == 4, "q and v of both layers changed, nothing else"


def test_ia3_combines_linearly(tiny_model, adapters, tmp_path):
    sources = [Source("ia3", adapters["ia3"], 0.25), Source("ia3b", adapters["ia3b"], 0.75)]
    combine_adapters(str(tiny_model), sources, "linear", tmp_path / "c")
    a, b = (load_file(adapters[n] / "adapter_model.safetensors") for n in ("ia3", "ia3b"))
    c = load_file(tmp_path / "c" / "adapter_model.safetensors")
    assert a.keys() == c.keys()
    for name in a:
        assert torch.allclose(c[name], 0.25 * a[name] + 0.75 * b[name]), name


def test_every_listed_combination_runs_on_same_rank_adapters(tiny_model, adapters, tmp_path):
    sources = [Source("r4", adapters["r4"], 0.5), Source("r4b", adapters["r4b"], 0.5)]
    sums = {}
    for combination in COMBINATIONS:
        out = tmp_path / combination
        combine_adapters(str(tiny_model), sources, combination, out, density=0.5)
        sums[combination] = sum(
            t.abs().sum().item() for t in load_file(out / "adapter_model.safetensors").values()
        )
    assert all(s > 0 for s in sums.values())
    assert len({round(s, 4) for s in sums.values()}) > 5, "the combinations differ"


REFUSALS = [
    (["r4", "r8"], "linear", "needs adapters of one rank (r4: r=4, r8: r=8); use cat or svd"),
    (["r4", "prompt"], "cat", "soft prompts"),
    (["r4", "adalora"], "svd", "AdaLoRA adapters cannot be combined"),
    (["r4", "loha"], "cat", "not LoHa"),
    (["r4", "dora"], "cat", "DoRA adapters cannot be combined"),
    (["r4", "ia3"], "linear", "different types (IA3, LORA)"),
    (["ia3", "ia3b"], "ties", "IA3 adapters combine by 'linear' only"),
    (["r4", "r4b"], "average", "method: must be one of linear, cat"),
    (["r4", "r4"], "cat", "an adapter is named twice"),
]


@pytest.mark.parametrize(("names", "combination", "message"), REFUSALS)
def test_refusals_name_the_reason(tiny_model, adapters, tmp_path, names, combination, message):
    sources = [Source(n, adapters[n], 0.5) for n in names]
    out = tmp_path / "never"
    with pytest.raises(SpecError, match=message.replace("(", r"\(").replace(")", r"\)")):
        combine_adapters(str(tiny_model), sources, combination, out)
    assert not out.exists()


def test_bad_weights_and_density_are_refused(tiny_model, adapters, tmp_path):
    two = [adapters["r4"], adapters["r4b"]]
    with pytest.raises(SpecError, match="r4's weight must be a number"):
        combine_adapters(
            str(tiny_model),
            [Source("r4", two[0], "x"), Source("b", two[1], 1)],
            "cat",
            tmp_path / "o",
        )
    with pytest.raises(SpecError, match="density: must be above 0"):
        combine_adapters(
            str(tiny_model),
            [Source("a", two[0], 1), Source("b", two[1], 1)],
            "ties",
            tmp_path / "o",
            density=0,
        )
