"""Training on a tiny model through finetune.train: weights move where they should, and reload."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from finetune.data import DataError
from finetune.examples import split_rows, to_prompt_completion
from finetune.samples import arithmetic
from finetune.spec import parse_spec
from finetune.train import Reporter, train


class Recorder(Reporter):
    def __init__(self, stop_after: int | None = None):
        self.stop_after = stop_after
        self.started_with = None
        self.logs: list[tuple[int, dict]] = []
        self.checks = 0
        self.checkpoints: list[tuple[int, Path]] = []
        self.samples: list[tuple[int, list[str], list[str]]] = []

    def saved(self, step, checkpoint):
        self.checkpoints.append((step, checkpoint))

    def sampled(self, step, prompts, texts):
        self.samples.append((step, prompts, texts))

    def started(self, total_steps, trainable_params, total_params):
        self.started_with = (total_steps, trainable_params, total_params)

    def logged(self, step, values):
        self.logs.append((step, values))

    def should_stop(self):
        self.checks += 1
        return self.stop_after is not None and self.checks >= self.stop_after


def spec_for(model, **training):
    return parse_spec(
        {
            "base_model": str(model),
            "dataset_id": "ds-0123456789ab",
            "method_params": {"r": 4},
            "training": {"max_steps": 4, "batch_size": 4, "max_length": 64, **training},
        }
    )


def test_lora_trains_saves_and_reloads(tiny_model, tmp_path):
    spec = spec_for(tiny_model, learning_rate=1e-2)
    recorder = Recorder()
    out = tmp_path / "adapter"
    result = train(spec, arithmetic(64, 0)[0], str(tiny_model), tmp_path / "work", out, recorder)

    assert (result.step, result.total_steps, result.stopped) == (4, 4, False)
    assert recorder.started_with == (4, result.trainable_params, result.total_params)
    losses = [v["loss"] for _, v in recorder.logs if "loss" in v]
    assert len(losses) == 4 and all(torch.isfinite(torch.tensor(losses)))
    assert any("eval_loss" in v for _, v in recorder.logs)
    assert all(v["tokens_per_s"] > 0 for _, v in recorder.logs if "loss" in v)

    config = json.loads((out / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 4
    saved = load_file(out / "adapter_model.safetensors")
    assert saved and all("lora_" in k for k in saved)
    assert any(v.abs().sum() > 0 for k, v in saved.items() if "lora_B" in k), "B moved off zero"

    base = AutoModelForCausalLM.from_pretrained(tiny_model)
    reference = {k: v.clone() for k, v in base.state_dict().items()}
    model = PeftModel.from_pretrained(base, out)
    for name, param in model.base_model.model.named_parameters():
        if "lora_" not in name:
            key = name.replace(".base_layer", "")
            assert torch.equal(param, reference[key]), f"frozen weight {key} changed"
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    with torch.no_grad():
        first = model(ids).logits
        again = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model), out)
        assert torch.equal(first, again(ids).logits), "reloading gives identical logits"
        with model.disable_adapter():
            assert not torch.allclose(first, model(ids).logits), "the adapter changes the output"


def test_stop_request_ends_the_run_early_with_a_checkpoint(tiny_model, tmp_path):
    spec = spec_for(tiny_model, max_steps=50, eval_fraction=0.0)
    recorder = Recorder(2)
    result = train(
        spec, arithmetic(64, 0)[0], str(tiny_model), tmp_path / "w", tmp_path / "o", recorder
    )
    assert result.stopped and result.step == 2 and result.total_steps == 50
    assert recorder.checkpoints == [(2, tmp_path / "w" / "checkpoint-2")]
    names = {p.name for p in (tmp_path / "w" / "checkpoint-2").iterdir()}
    assert {"adapter_model.safetensors", "optimizer.pt", "scheduler.pt", "rng_state.pth"} <= names
    assert not (tmp_path / "o").exists(), "a stopped run's weights live in its checkpoint"


def _lora_weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "adapter_model.safetensors")


def test_a_resumed_run_ends_where_an_unbroken_one_does(tiny_model, tmp_path):
    """Checkpoints every 2 steps, the newest 2 kept; a run stopped at step 3 and resumed from
    its checkpoint reaches step 6 with the weights of a run that never stopped."""
    spec = spec_for(
        tiny_model, max_steps=6, save_steps=2, keep_checkpoints=2, eval_fraction=0.0,
        learning_rate=1e-2, sample_prompts=0,
    )  # fmt: skip
    rows = arithmetic(64, 0)[0]
    whole = Recorder()
    train(spec, rows, str(tiny_model), tmp_path / "w1", tmp_path / "o1", whole)
    assert [s for s, _ in whole.checkpoints] == [2, 4, 6]
    kept = sorted(p.name for p in (tmp_path / "w1").glob("checkpoint-*"))
    assert kept == ["checkpoint-4", "checkpoint-6"], "only the newest two stay"

    first = Recorder(stop_after=3)
    stopped = train(spec, rows, str(tiny_model), tmp_path / "w2", tmp_path / "o2", first)
    assert stopped.stopped and stopped.step == 3
    second = Recorder()
    resumed = train(
        spec, rows, str(tiny_model), tmp_path / "w2", tmp_path / "o2", second,
        resume_from=first.checkpoints[-1][1],
    )  # fmt: skip
    assert (resumed.step, resumed.total_steps, resumed.stopped) == (6, 6, False)
    assert [s for s, v in second.logs if "loss" in v] == [4, 5, 6], "the curve goes on"
    a, b = _lora_weights(tmp_path / "o1"), _lora_weights(tmp_path / "o2")
    assert a.keys() == b.keys()
    for name in a:
        assert torch.allclose(a[name], b[name], atol=1e-6), name


def test_samples_tensorboard_and_training_an_adapter_further(tiny_model, tmp_path):
    spec = spec_for(tiny_model, max_steps=4, sample_every=2, learning_rate=1e-2)
    rows = arithmetic(64, 0)[0]
    recorder = Recorder()
    train(
        spec, rows, str(tiny_model), tmp_path / "w", tmp_path / "o", recorder,
        report_to=("tensorboard",), log_dir=tmp_path / "tb",
    )  # fmt: skip
    assert [s for s, _, _ in recorder.samples] == [0, 2, 4]
    prompts = {tuple(p) for _, p, _ in recorder.samples}
    assert len(prompts) == 1 and len(next(iter(prompts))) == 3, "the same three prompts"
    assert all(isinstance(t, str) for _, _, texts in recorder.samples for t in texts)
    assert list((tmp_path / "tb").glob("events.out.tfevents.*")), "TensorBoard events written"

    # Trained further at a learning rate too small to move it: it starts from the adapter.
    further = spec_for(tiny_model, max_steps=1, learning_rate=1e-7, sample_prompts=0)
    train(
        further, rows, str(tiny_model), tmp_path / "w2", tmp_path / "o2", Recorder(),
        start_from=tmp_path / "o",
    )  # fmt: skip
    before, after = _lora_weights(tmp_path / "o"), _lora_weights(tmp_path / "o2")
    assert before.keys() == after.keys()
    for name in before:
        assert torch.allclose(before[name], after[name], atol=1e-4), name
    assert any(t.abs().sum() > 0 for n, t in after.items() if "lora_B" in n)


def test_rows_with_no_answer_left_get_a_plain_error(tiny_model, tmp_path):
    spec = spec_for(tiny_model, max_length=16)
    with pytest.raises(DataError, match=r"raise training\.max_length"):
        train(
            spec, arithmetic(8, 0)[0], str(tiny_model), tmp_path / "w", tmp_path / "o", Recorder()
        )


def test_split_is_seeded_and_keeps_a_training_row():
    rows = [{"i": i} for i in range(100)]
    train_a, eval_a = split_rows(rows, 0.1, seed=1)
    assert (len(train_a), len(eval_a)) == (90, 10)
    assert split_rows(rows, 0.1, seed=1) == (train_a, eval_a)
    assert split_rows(rows, 0.1, seed=2)[1] != eval_a
    assert not set(map(str, train_a)) & set(map(str, eval_a))
    assert split_rows(rows[:3], 0.1, seed=0) == (split_rows(rows[:3], 0.1, seed=0)[0], [])
    assert len(split_rows(rows[:3], 0.1, seed=0)[0]) == 3


def test_prompt_completion_puts_loss_on_the_last_answer():
    row = arithmetic(1, 0)[0][0]
    pc = to_prompt_completion(row)
    assert [t["role"] for t in pc["prompt"]] == ["system", "user"]
    assert pc["completion"] == [row["messages"][-1]]


def test_text_rows_and_a_separate_eval_split_train(tiny_model, tmp_path):
    """Continued pretraining rows train; the dataset's own eval rows replace eval_fraction."""
    spec = spec_for(tiny_model, max_steps=2, batch_size=2, max_length=32, eval_fraction=0.5)
    rows = [{"text": f"What is {a} + 10? {a + 10} " * 4} for a in range(10, 20)]
    recorder = Recorder()
    result = train(
        spec,
        rows,
        str(tiny_model),
        tmp_path / "w",
        tmp_path / "o",
        recorder,
        eval_rows=[{"text": "What is 30 + 10? 40"}],
    )
    assert result.step == 2 and (tmp_path / "o" / "adapter_model.safetensors").is_file()
    assert all(v["loss"] > 0 for _, v in recorder.logs if "loss" in v)
    assert any("eval_loss" in v for _, v in recorder.logs)


def test_activation_checkpointing_trains_an_adapter(tiny_model, tmp_path):
    spec = spec_for(tiny_model, max_steps=2, activation_checkpointing=True, eval_fraction=0.0)
    result = train(
        spec, arithmetic(16, 0)[0], str(tiny_model), tmp_path / "w", tmp_path / "o", Recorder()
    )
    assert result.step == 2 and (tmp_path / "o" / "adapter_model.safetensors").is_file()
