"""Every method in the registry trains on a tiny model, writes files that reload, and answers."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from finetune.generate import GenerationParams, ModelCache, load_trained
from finetune.merge import merge_into_base
from finetune.methods import METHODS, get_method
from finetune.samples import arithmetic
from finetune.spec import parse_spec
from finetune.train import SELECTED_WEIGHTS, train
from tests.test_train import Recorder

IDS = torch.tensor([[5, 6, 7, 8, 9, 10]])
# Small settings that still move every method in 3 steps.
PARAMS = {
    "lora": {"r": 4},
    "lora-dora-rslora": {"r": 4, "use_dora": True, "use_rslora": True},
    "lora-pissa": {"r": 4, "init_lora_weights": "pissa"},
    "lora-olora": {"r": 4, "init_lora_weights": "olora"},
    "lora-gaussian": {"r": 4, "init_lora_weights": "gaussian"},
    "qlora-8bit": {"r": 4, "bits": 8},
    "qlora-fp4": {"r": 4, "quant_type": "fp4", "double_quant": False},
    "qlora": {"r": 4},
    "adalora": {"init_r": 4, "target_r": 2},
    "loha": {"r": 2},
    "lokr": {"r": 2},
    "prompt_tuning": {
        "num_virtual_tokens": 4,
        "prompt_tuning_init": "text",
        "prompt_tuning_init_text": "what is the answer",
    },
    "prefix_tuning": {"num_virtual_tokens": 4},
    "p_tuning": {"num_virtual_tokens": 4, "encoder_hidden_size": 16},
    "selective": {"train": "top_layers", "top_layers": 1},
}


def test_every_method_has_a_case():
    assert {key.split("-")[0] for key in PARAMS} | {"ia3", "full"} == set(METHODS)


def last_logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(IDS).logits[:, -1].float()  # soft prompts add positions before the input


@pytest.mark.parametrize("case", sorted(set(METHODS) | set(PARAMS)))
def test_method_trains_reloads_and_answers(tiny_model, tmp_path, case):
    method_id = case.split("-")[0]
    spec = parse_spec(
        {
            "base_model": str(tiny_model),
            "dataset_id": "ds-0123456789ab",
            "method": method_id,
            "method_params": PARAMS.get(case, {}),
            "training": {
                "max_steps": 3,
                "batch_size": 4,
                "max_length": 128,
                "learning_rate": 1e-2,
                "eval_fraction": 0.0,
            },
        }
    )
    out = tmp_path / "out"
    recorder = Recorder()
    result = train(spec, arithmetic(24, 0)[0], str(tiny_model), tmp_path / "w", out, recorder)
    losses = [v["loss"] for _, v in recorder.logs if "loss" in v]
    assert result.step == 3 and len(losses) == 3 and all(math.isfinite(x) for x in losses)
    assert 0 < result.trainable_params <= result.total_params

    base = AutoModelForCausalLM.from_pretrained(tiny_model)
    reference = {k: v.clone() for k, v in base.state_dict().items()}
    trained = load_trained(str(tiny_model), out).eval()
    again = load_trained(str(tiny_model), out).eval()
    logits = last_logits(trained)
    assert torch.equal(logits, last_logits(again)), "reloading gives identical logits"
    assert not torch.allclose(logits, last_logits(base)), "the trained weights change the output"
    assert_frozen_weights_unchanged(method_id, trained, reference, out)

    method = get_method(method_id)
    if method.can_merge:
        merged_dir = tmp_path / "merged"
        check = merge_into_base(str(tiny_model), out, method_id, merged_dir)
        merged = AutoModelForCausalLM.from_pretrained(merged_dir)
        assert not (merged_dir / "adapter_config.json").exists(), "a plain model folder"
        assert torch.allclose(last_logits(merged), logits, atol=1e-4), "merging keeps the output"
        assert check["max_logit_diff"] < 1e-4 and "model.safetensors" in check["files"]
    else:
        with pytest.raises(ValueError, match="cannot be merged into the base: "):
            merge_into_base(str(tiny_model), out, method_id, tmp_path / "merged")
        assert not (tmp_path / "merged").exists()

    cache = ModelCache()
    (answer,) = cache.generate(
        str(tiny_model), [("a", out)], "What is 12 + 13?", GenerationParams(max_new_tokens=3)
    )
    assert answer["adapter"] == "a" and isinstance(answer["text"], str)


def assert_frozen_weights_unchanged(method_id, trained, reference, out):
    if method_id == "full":
        config = json.loads((out / "config.json").read_text())
        assert config["model_type"] == "llama", "a full model folder"
        return
    if method_id == "selective":
        changed = set(load_file(out / SELECTED_WEIGHTS))
        assert changed and all(name.startswith("model.layers.1.") for name in changed)
        weights = trained.state_dict()
    else:
        changed = set()
        weights = {
            k.replace(".base_layer", ""): v
            for k, v in trained.get_base_model().state_dict().items()
        }
    for name, value in reference.items():
        if name not in changed:
            assert torch.equal(weights[name], value), f"frozen weight {name} changed"


def chat(user: str, answer: str, system: str = "") -> dict:
    turns = [{"role": "system", "content": system}] if system else []
    return {
        "messages": [
            *turns,
            {"role": "user", "content": user},
            {"role": "assistant", "content": answer},
        ]
    }


SEQ2SEQ_ROWS = [chat(f"What is {a} + {b}?", str(a + b)) for a in range(10, 18) for b in (10, 11)]
LABELS = ["answer", "greeting"]
CLASSIFICATION_ROWS = [
    chat(text, label, "Classify the text. Reply with one label: answer, greeting.")
    for text, label in [("hello how are you", "greeting"), ("what is the answer", "answer")] * 8
]


@pytest.mark.parametrize("task", ["seq2seq", "classification"])
@pytest.mark.parametrize("method_id", list(METHODS))
def test_method_trains_for_encoder_tasks(request, tmp_path, method_id, task):
    method = get_method(method_id)
    task_type = {"seq2seq": "SEQ_2_SEQ_LM", "classification": "SEQ_CLS"}[task]
    if task_type not in method.tasks:
        pytest.skip(f"{method_id} does not support {task} (the registry says so)")
    model = request.getfixturevalue("tiny_t5" if task == "seq2seq" else "tiny_bert")
    params = {k: v for k, v in PARAMS.get(method_id, {}).items() if k != "prompt_tuning_init"}
    params.pop("prompt_tuning_init_text", None)
    spec = parse_spec(
        {
            "base_model": str(model),
            "dataset_id": "ds-0123456789ab",
            "method": method_id,
            "method_params": params,
            "training": {
                "max_steps": 3,
                "batch_size": 4,
                "max_length": 32,
                "learning_rate": 1e-2,
                "eval_fraction": 0.0,
            },
        }
    )
    rows = SEQ2SEQ_ROWS if task == "seq2seq" else CLASSIFICATION_ROWS
    out = tmp_path / "out"
    recorder = Recorder()
    result = train(spec, rows, str(model), tmp_path / "w", out, recorder)
    losses = [v["loss"] for _, v in recorder.logs if "loss" in v]
    assert result.step == 3 and all(math.isfinite(x) for x in losses)

    trained = load_trained(str(model), out).eval()
    again = load_trained(str(model), out).eval()
    inputs = {"input_ids": IDS, "attention_mask": torch.ones_like(IDS)}
    if task == "seq2seq":
        inputs["decoder_input_ids"] = IDS[:, :2]
    with torch.no_grad():
        assert torch.equal(trained(**inputs).logits, again(**inputs).logits)
    cache = ModelCache()
    (answer,) = cache.generate(
        str(model), [("a", out)], "What is 12 + 10?", GenerationParams(max_new_tokens=3)
    )
    if task == "classification":
        assert answer["text"].split(" (")[0] in LABELS
    else:
        assert isinstance(answer["text"], str)


@pytest.mark.parametrize("init", ["pissa", "olora"])
def test_converted_inits_apply_to_the_original_base(tiny_model, tmp_path, init):
    """PiSSA / OLoRA change the base while training; what is saved must not need that."""
    from finetune.methods import Context, apply_method
    from finetune.train import keep_initial_adapter, save_trained

    method = get_method("lora")
    params = method.parse({"r": 4, "init_lora_weights": init})
    base = AutoModelForCausalLM.from_pretrained(tiny_model)
    model = apply_method(base, method, params, Context(str(tiny_model)))
    initial = keep_initial_adapter(model, params, tmp_path)
    with torch.no_grad():  # as training would: the adapter moves
        for name, param in model.named_parameters():
            if "lora_" in name:
                param.add_(0.05 * torch.randn_like(param))
    save_trained(model, None, method, params, tmp_path / "out", initial)
    reloaded = load_trained(str(tiny_model), tmp_path / "out")
    assert torch.allclose(last_logits(reloaded), last_logits(model), atol=1e-4)


def test_models_of_their_own_are_bounded_and_each_answers(tiny_model, tmp_path):
    """Three full fine-tunes in one call: each answers with its own weights, two stay loaded."""
    from transformers import AutoTokenizer

    from finetune.generate import OWN_MODELS
    from finetune.methods import Context, apply_method
    from finetune.train import save_trained

    method = get_method("full")
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    folders = []
    for i in range(3):
        base = AutoModelForCausalLM.from_pretrained(tiny_model)
        model = apply_method(base, method, {}, Context())
        with torch.no_grad():  # three different "fine-tunes": three different heads
            head = model.lm_head.weight
            head.copy_(torch.randn(head.shape, generator=torch.Generator().manual_seed(i)))
        save_trained(model, tokenizer, method, {}, tmp_path / f"full-{i}")
        folders.append((f"f{i}", tmp_path / f"full-{i}"))
    cache = ModelCache()
    answers = cache.generate(
        str(tiny_model), folders, "What is 12 + 10?", GenerationParams(max_new_tokens=4)
    )
    assert [a["adapter"] for a in answers] == ["f0", "f1", "f2"]
    for answer, folder in zip(answers, folders, strict=True):
        (alone,) = ModelCache().generate(
            str(tiny_model), [folder], "What is 12 + 10?", GenerationParams(max_new_tokens=4)
        )
        assert answer["text"] == alone["text"], "each answered with its own weights"
    assert len({a["text"] for a in answers}) == 3
    assert len(cache._models[str(tiny_model)].own) == OWN_MODELS


@pytest.mark.parametrize("method_id", ["p_tuning", "lora"])
def test_same_seed_same_adapter(tiny_model, tmp_path, method_id):
    """The method's new weights (a p-tuning encoder too) start from the spec's seed."""
    spec = parse_spec(
        {
            "base_model": str(tiny_model),
            "dataset_id": "ds-0123456789ab",
            "method": method_id,
            "method_params": PARAMS[method_id],
            "training": {"max_steps": 2, "batch_size": 4, "max_length": 128, "eval_fraction": 0},
        }
    )
    saved = []
    for run in ("a", "b"):
        train(
            spec,
            arithmetic(16, 0)[0],
            str(tiny_model),
            tmp_path / run,
            tmp_path / f"o{run}",
            Recorder(),
        )
        saved.append(load_file(tmp_path / f"o{run}" / "adapter_model.safetensors"))
    assert saved[0].keys() == saved[1].keys()
    assert all(torch.equal(saved[0][k], saved[1][k]) for k in saved[0])
