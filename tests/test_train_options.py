"""Each training option reaches the trainer: its arguments, or what it observably does."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

import service
from finetune.data import write_rows
from finetune.fields import SpecError
from finetune.samples import arithmetic
from finetune.schedule import schedule_factor
from finetune.spec import parse_spec
from finetune.train import UNBOUNDED_STEPS, build_run, train
from tests.test_train import Recorder


def spec_for(model, method="lora", **training):
    return parse_spec(
        {
            "base_model": str(model),
            "dataset_id": "ds-0123456789ab",
            "method": method,
            "method_params": {"r": 4} if method == "lora" else {},
            "training": {"batch_size": 4, "max_length": 128, "sample_prompts": 0, **training},
        }
    )


def rows(n=32):
    return arithmetic(n, 0)[0]


def test_the_schedule_sets_the_learning_rate_of_every_step(tiny_model, tmp_path):
    spec = spec_for(
        tiny_model,
        max_steps=8,
        learning_rate=1e-2,
        lr_scheduler_type="cosine",
        warmup_ratio=0.25,
        eval_fraction=0.0,
    )
    recorder = Recorder()
    train(spec, rows(), str(tiny_model), tmp_path / "w", tmp_path / "a", recorder)
    logged = [v["learning_rate"] for _, v in recorder.logs if "learning_rate" in v]
    factor = schedule_factor("cosine", 0.25, 8)
    assert logged == pytest.approx([1e-2 * factor(step) for step in range(8)])
    assert logged[0] == 0.0 and logged[2] == pytest.approx(1e-2) and logged[-1] < 1e-3


def test_accumulation_makes_fewer_optimizer_steps_of_a_larger_batch(tiny_model, tmp_path):
    spec = spec_for(tiny_model, epochs=1, gradient_accumulation_steps=2, eval_fraction=0.0)
    recorder = Recorder()
    result = train(spec, rows(32), str(tiny_model), tmp_path / "w", tmp_path / "a", recorder)
    # 32 rows in batches of 4: 8 batches, 2 to a step
    assert (result.step, result.total_steps, recorder.started_with[0]) == (4, 4, 4)
    assert len([v for _, v in recorder.logs if "loss" in v]) == 4


def test_trainer_arguments_follow_the_spec(tiny_model, tmp_path):
    spec = spec_for(
        tiny_model,
        max_steps=6,
        learning_rate=1e-3,
        weight_decay=0.1,
        max_grad_norm=0.5,
        neftune_noise_alpha=5,
        group_by_length=True,
        eval_steps=2,
        load_best_model_at_end=True,
        loraplus_lr_ratio=16,
    )
    run = build_run(spec, rows(40), str(tiny_model), tmp_path / "w", Recorder())
    args = run.trainer.args
    assert (args.max_steps, args.weight_decay, args.max_grad_norm) == (6, 0.1, 0.5)
    assert args.neftune_noise_alpha == 5 and args.train_sampling_strategy == "group_by_length"
    assert (args.eval_steps, args.save_steps, args.load_best_model_at_end) == (2, 2, True)
    assert args.metric_for_best_model == "eval_loss" and args.greater_is_better is False
    groups = run.trainer.optimizer.param_groups  # LoRA+: B matrices learn 16x faster
    rates = sorted({g["lr"] for g in groups if g["params"]})
    assert rates == [1e-3, 1.6e-2]
    assert {g["weight_decay"] for g in groups if g["lr"] == 1e-3} == {0.1}
    sampler = run.trainer._get_train_sampler(run.trainer.train_dataset)
    assert type(sampler).__name__ == "LengthGroupedSampler"


def test_early_stopping_ends_the_run_when_the_eval_loss_stops_improving(tiny_model, tmp_path):
    # A learning rate this large makes the eval loss climb after the first steps.
    spec = spec_for(
        tiny_model,
        max_steps=40,
        learning_rate=0.5,
        eval_steps=1,
        early_stopping_patience=2,
        load_best_model_at_end=True,
    )
    recorder = Recorder()
    result = train(spec, rows(64), str(tiny_model), tmp_path / "w", tmp_path / "a", recorder)
    evals = [v["eval_loss"] for _, v in recorder.logs if "eval_loss" in v]
    assert result.step < 40 and not result.stopped
    best = min(range(len(evals)), key=evals.__getitem__)
    assert len(evals) == best + 1 + 2, "it stops two evaluations after the best one"
    assert (tmp_path / "a" / "adapter_model.safetensors").is_file()


def test_packed_batches_restart_positions_and_lose_the_same_as_unpacked(tiny_model, tmp_path):
    spec = spec_for(tiny_model, max_steps=2, packing=True, eval_fraction=0.0)
    run = build_run(spec, rows(24), str(tiny_model), tmp_path / "w", Recorder())
    batch = next(iter(run.trainer.get_train_dataloader()))
    assert "attention_mask" not in batch and batch["input_ids"].shape[0] == 1
    starts = (batch["position_ids"][0] == 0).nonzero().flatten()
    assert len(starts) > 1, "several rows in one sequence, positions restarting at each"
    model = run.trainer.model
    model.eval()
    with torch.no_grad():
        packed = _loss_sum(model, batch["input_ids"], batch["labels"], batch["position_ids"])
        ends = [*starts.tolist()[1:], batch["input_ids"].shape[1]]
        unpacked = sum(
            _loss_sum(model, batch["input_ids"][:, a:b], batch["labels"][:, a:b], None)
            for a, b in zip(starts.tolist(), ends, strict=True)
        )
    assert packed == pytest.approx(unpacked, rel=1e-4)
    assert 0 < run.trainer.args.max_steps <= 2


def _loss_sum(model, ids, labels, positions):
    extra = {"position_ids": positions} if positions is not None else {}
    logits = model(input_ids=ids, use_cache=False, **extra).logits[0, :-1]
    targets = labels[0, 1:].clone()
    if positions is not None:
        targets[positions[0, 1:] == 0] = -100  # a row's first token is not predicted
    return float(
        torch.nn.functional.cross_entropy(logits, targets, ignore_index=-100, reduction="sum")
    )


def test_padding_free_batches_are_one_row_cut_to_max_length(tiny_model, tmp_path):
    spec = spec_for(tiny_model, max_steps=2, padding_free=True, max_length=70, eval_fraction=0.0)
    run = build_run(spec, rows(24), str(tiny_model), tmp_path / "w", Recorder())
    batch = next(iter(run.trainer.get_train_dataloader()))
    starts = (batch["position_ids"][0] == 0).nonzero().flatten().tolist()
    lengths = [
        b - a for a, b in zip(starts, [*starts[1:], batch["input_ids"].shape[1]], strict=True)
    ]
    assert batch["input_ids"].shape[0] == 1 and len(starts) == 4, "the batch's 4 rows in one"
    assert max(lengths) <= 70
    assert (batch["labels"] != -100).any()


def test_a_time_budget_fits_the_steps_and_ends_the_schedule_on_the_last_one(tiny_model, tmp_path):
    spec = spec_for(tiny_model, max_minutes=0.1, learning_rate=1e-2, eval_fraction=0.0)
    assert spec.training["epochs"] is None
    recorder = Recorder()
    fitted = []
    recorder.planned = fitted.append
    result = train(spec, rows(64), str(tiny_model), tmp_path / "w", tmp_path / "a", recorder)
    assert fitted, "the budget set the total as it measured the pace"
    assert result.step == result.total_steps < UNBOUNDED_STEPS
    assert result.step > 16, "more than one epoch of 16 batches fits in 6 s on a tiny model"
    rates = [v["learning_rate"] for _, v in recorder.logs if "learning_rate" in v]
    assert len(rates) == result.step
    assert rates[-1] <= 1e-2 * 2 / max(result.step - math.ceil(0.05 * result.step), 1)
    assert max(rates) == pytest.approx(1e-2, rel=0.2)
    assert (tmp_path / "a" / "adapter_model.safetensors").is_file()


def test_a_resumed_budgeted_run_keeps_the_total_it_was_fitted_to(tiny_model, tmp_path):
    spec = spec_for(tiny_model, max_minutes=5)
    run = build_run(spec, rows(), str(tiny_model), tmp_path / "w", Recorder(), total_steps=17)
    assert run.budget is None and run.trainer.args.max_steps == 17
    assert run.trainer.plan.total == 17


@pytest.mark.parametrize(
    ("training", "method", "field"),
    [
        ({"loraplus_lr_ratio": 16}, "ia3", "training.loraplus_lr_ratio"),
        ({"packing": True}, "prompt_tuning", "training.packing"),
        ({"padding_free": True}, "prefix_tuning", "training.padding_free"),
        ({"lr_scheduler_type": "triangle"}, "lora", "training.lr_scheduler_type"),
        ({"warmup_ratio": 0.9}, "lora", "training.warmup_ratio"),
        ({"gradient_accumulation_steps": 0}, "lora", "training.gradient_accumulation_steps"),
        ({"max_minutes": 0}, "lora", "training.max_minutes"),
        ({"max_grad_norm": -1}, "lora", "training.max_grad_norm"),
        ({"early_stopping_patience": 0}, "lora", "training.early_stopping_patience"),
        ({"neftune_noise_alpha": "5"}, "lora", "training.neftune_noise_alpha"),
    ],
)
def test_bad_options_name_the_field(training, method, field):
    with pytest.raises(SpecError) as info:
        parse_spec({"base_model": "m", "dataset_id": "d", "method": method, "training": training})
    assert str(info.value).startswith(f"{field}:"), str(info.value)


def test_options_the_model_or_data_cannot_take_are_refused_at_start(
    settings, tiny_bert, tiny_model
):
    path = Path(settings.data_dir) / "few.jsonl"
    write_rows([{"text": f"a text {i}", "label": "ab"[i % 2]} for i in range(8)], path)
    labelled = service.upload_dataset(settings, [str(path)], "few")["id"]
    with pytest.raises(SpecError, match=r"^training\.packing: packs the rows of a decoder"):
        service.start_job(
            settings,
            {"base_model": str(tiny_bert), "dataset_id": labelled, "training": {"packing": True}},
        )
    no_eval = {"eval_fraction": 0.0, "early_stopping_patience": 2}
    with pytest.raises(SpecError, match=r"^training\.early_stopping_patience: .* holds out no"):
        service.start_job(
            settings, {"base_model": str(tiny_model), "dataset_id": labelled, "training": no_eval}
        )
