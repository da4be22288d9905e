"""Settings searches through the real queue: trials are jobs, the best wins by eval loss."""

from __future__ import annotations

import pytest

import service
from finetune.fields import SpecError
from finetune.methods import get_method
from finetune.search import best, parse_search, trials, with_values
from finetune.spec import TRAINING_FIELDS, parse_spec
from storage.store import JobState, Store
from tests.test_jobs import spec, wait_finished, wait_until

NAMES = {f.name for f in TRAINING_FIELDS}


def searched(tiny_model, dataset_id, search, **training):
    return {**spec(tiny_model, dataset_id, **training), "search": search}


def test_an_auto_search_tries_rates_and_ranks_then_trains_with_the_best(
    worker_settings, dataset_id, tiny_model
):
    store = Store(worker_settings.data_dir)
    started = service.start_job(
        worker_settings,
        searched(
            tiny_model, dataset_id, {"mode": "auto", "share": 0.5}, max_steps=24, learning_rate=1e-2
        ),
    )
    assert len(started["trials"]) == 6, "3 learning rates x 2 ranks"
    parent = wait_finished(worker_settings, started["job_id"])
    assert parent.state == JobState.SUCCEEDED, parent.error
    children = store.children(parent.id)
    probes = [c for c in children if c.role == "probe"]
    (final,) = [c for c in children if c.role == "final"]
    assert len(probes) == 6 and all(p.state == JobState.SUCCEEDED for p in probes)
    assert all(p.adapter_id is None for p in probes), "a probe keeps no adapter"
    assert {p.spec["training"]["max_steps"] for p in probes} == {2}  # half the budget over six
    rates = sorted({p.spec["training"]["learning_rate"] for p in probes})
    assert rates == [0.00333, 0.01, 0.03] and {p.spec["method_params"]["r"] for p in probes} == {
        4,
        8,
    }
    # the best is the probe whose last eval loss, as recorded, is lowest
    losses = {
        p.id: [m.eval_loss for m in store.list_metrics(p.id) if m.eval_loss][-1] for p in probes
    }
    winner = min(probes, key=lambda p: losses[p.id])
    assert parent.result["best"]["job_id"] == winner.id
    assert parent.result["best"]["eval_loss"] == pytest.approx(losses[winner.id])
    for part in ("training", "method_params"):
        chosen = {k: v for k, v in winner.spec[part].items() if k != "max_steps"}
        assert {k: final.spec[part][k] for k in chosen} == chosen, "the final run uses its values"
    assert final.spec["training"]["max_steps"] == 12 and final.state == JobState.SUCCEEDED
    assert parent.adapter_id == final.adapter_id and parent.result["adapter_id"] == final.adapter_id
    assert [r["job_id"] for r in parent.result["trials"]] == [p.id for p in probes]
    status = service.job_status(worker_settings, parent.id)
    assert status["kind"] == "sweep" and status["result"]["final_job_id"] == final.id
    assert (status["step"], status["total_steps"]) == (7, 7)


def test_a_grid_search_keeps_each_trials_adapter_and_names_the_best(
    worker_settings, dataset_id, tiny_model
):
    search = {"mode": "grid", "space": {"learning_rate": [1e-4, 3e-2]}}
    started = service.start_job(
        worker_settings, searched(tiny_model, dataset_id, search, max_steps=4)
    )
    parent = wait_finished(worker_settings, started["job_id"])
    assert parent.state == JobState.SUCCEEDED, parent.error
    rows = parent.result["trials"]
    assert [r["values"] for r in rows] == [
        {"training.learning_rate": 1e-4},
        {"training.learning_rate": 3e-2},
    ]
    assert all(r["adapter_id"] and r["eval_loss"] for r in rows)
    assert parent.adapter_id == best(rows)["adapter_id"]
    assert all(r["step"] == 4 for r in rows), "a grid trial trains for the whole budget"


def test_cancelling_a_search_cancels_its_trials(worker_settings, dataset_id, tiny_model):
    store = Store(worker_settings.data_dir)
    search = {"mode": "grid", "space": {"learning_rate": [1e-3, 2e-3, 3e-3]}}
    started = service.start_job(
        worker_settings, searched(tiny_model, dataset_id, search, max_steps=100000)
    )
    wait_until(lambda: store.get_job(started["trials"][0]).step >= 1, "the first trial's step")
    assert service.cancel_job(worker_settings, started["job_id"])["status"] == "cancelled"
    for trial in started["trials"]:
        assert wait_finished(worker_settings, trial).state == JobState.CANCELLED
    with pytest.raises(ValueError, match="ended"):
        service.cancel_job(worker_settings, started["job_id"])
    service.delete_job(worker_settings, started["job_id"])
    assert store.children(started["job_id"]) == []


def test_a_search_needs_held_out_rows(worker_settings, dataset_id, tiny_model):
    # the arithmetic sample has its own eval split; a dataset without one and eval_fraction 0
    # cannot rank trials
    import service

    rows = [{"prompt": f"q{i}", "completion": f"a{i}"} for i in range(20)]
    info = service.upload_dataset(worker_settings, _jsonl(worker_settings, rows), "tiny")
    with pytest.raises(SpecError, match="search: trials are compared by their eval loss"):
        service.start_job(
            worker_settings,
            searched(tiny_model, info["id"], {"mode": "auto"}, max_steps=4, eval_fraction=0),
        )


def _jsonl(settings, rows):
    import json

    path = settings.data_dir / "upload.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return [str(path)]


@pytest.mark.parametrize(
    ("search", "field"),
    [
        ("auto", "search"),
        ({"mode": "bayes"}, "search.mode"),
        ({"mode": "auto", "share": 0.9}, "search.share"),
        ({"mode": "auto", "space": {"r": [4]}}, "search.space"),
        ({"mode": "grid"}, "search.space"),
        ({"mode": "grid", "space": {"bogus": [1]}}, "search.space.bogus"),
        ({"mode": "grid", "space": {"max_minutes": [1, 2]}}, "search.space.max_minutes"),
        ({"mode": "grid", "space": {"r": 8}}, "search.space.r"),
        ({"mode": "grid", "space": {"r": {"min": 1, "max": 9}}}, "search.space.r"),
        ({"mode": "random", "space": {"r": [4, 8]}, "trials": 1}, "search.trials"),
        (
            {"mode": "random", "space": {"learning_rate": {"min": 0, "max": 1, "log": True}}},
            "search.space.learning_rate",
        ),
        (
            {"mode": "grid", "space": {"r": [1, 2, 3, 4, 5, 6], "lora_alpha": [1, 2, 3, 4, 5, 6]}},
            "search.space",
        ),
        ({"mode": "grid", "unknown": 1}, "search.unknown"),
    ],
)
def test_bad_searches_name_the_field(search, field):
    with pytest.raises(SpecError) as info:
        parse_search(search, get_method("lora"), NAMES)
    assert str(info.value).startswith(f"{field}:"), str(info.value)


def test_a_trials_bad_value_is_refused_naming_the_field(worker_settings, dataset_id, tiny_model):
    search = {"mode": "grid", "space": {"batch_size": [4, 0]}}
    with pytest.raises(SpecError, match=r"training\.batch_size: must be from 1"):
        service.start_job(worker_settings, searched(tiny_model, dataset_id, search, max_steps=2))


def test_random_trials_are_seeded_draws_within_the_ranges():
    search = parse_search(
        {
            "mode": "random",
            "trials": 12,
            "space": {
                "learning_rate": {"min": 1e-5, "max": 1e-2, "log": True},
                "r": {"min": 2, "max": 64},
                "lora_dropout": [0.0, 0.1],
            },
        },
        get_method("lora"),
        NAMES,
    )
    parsed = parse_spec({"base_model": "m", "dataset_id": "d", "training": {"max_minutes": 6}})
    drawn = trials(search, parsed)
    assert drawn == trials(search, parsed), "the job's seed fixes the draws"
    assert len(drawn) == 12
    assert all(1e-5 <= t["training.learning_rate"] <= 1e-2 for t in drawn)
    assert all(
        isinstance(t["method_params.r"], int) and 2 <= t["method_params.r"] <= 64 for t in drawn
    )
    assert {t["method_params.lora_dropout"] for t in drawn} <= {0.0, 0.1}
    trial = with_values(parsed.__dict__, drawn[0], 0.25)
    assert trial["training"]["max_minutes"] == 1.5 and trial["search"] is None


def test_a_sweep_advanced_before_its_trials_exist_keeps_waiting(settings):
    """CI saw a search fail with "No trial finished" before its trials were queued: a sweep
    with no trials yet is being set up, not finished."""
    from jobs.sweep import advance
    from storage.store import JobKind

    store = Store(settings.data_dir)
    parent = store.add_job("search", {"search": {"mode": "auto"}}, None, kind=JobKind.SWEEP)
    store.claim_job(parent.id)
    advance(settings, parent.id)
    assert store.get_job(parent.id).state == JobState.RUNNING
