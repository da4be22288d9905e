"""The learning-rate schedule and the time budget's step fitting, on their own (no training)."""

from __future__ import annotations

import pytest
import torch

from finetune.schedule import OVERRUN, Budget, Plan, fit_steps, fitted_scheduler, schedule_factor
from finetune.spec import SCHEDULES

DECAYING = ("linear", "cosine", "warmup_stable_decay", "polynomial")


@pytest.mark.parametrize("name", SCHEDULES)
def test_every_schedule_warms_up_and_decaying_ones_end_near_zero(name):
    factor = schedule_factor(name, 0.1, 100)
    assert factor(0) == 0.0 or name == "constant", "warm-up starts from zero"
    assert factor(10) == pytest.approx(1.0, abs=0.02) or name == "inverse_sqrt"
    if name in DECAYING:
        assert factor(99) < 0.05 < factor(50), name
    if name == "cosine_with_min_lr":
        assert factor(99) == pytest.approx(0.1, abs=0.01)
    if name in ("constant", "constant_with_warmup"):
        assert factor(99) == pytest.approx(1.0)


def test_a_plan_follows_its_total_as_it_changes():
    plan = Plan("linear", 0.0, 100)
    param = torch.nn.Parameter(torch.zeros(2))
    optimizer = torch.optim.AdamW([{"params": [param], "lr": 1.0}, {"params": [], "lr": 16.0}])
    scheduler = fitted_scheduler(optimizer, plan)
    for _ in range(10):
        optimizer.step()
        scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.9)
    plan.total = 20  # a time budget found the run must end at step 20
    optimizer.step()
    scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(9 / 20)
    # LoRA+: the second group keeps its ratio to the first
    assert optimizer.param_groups[1]["lr"] == pytest.approx(16 * optimizer.param_groups[0]["lr"])


@pytest.mark.parametrize(
    ("seconds", "elapsed", "done", "per_step", "cap", "expected"),
    [
        (600, 60, 10, 6.0, 10_000, 100),  # 540 s left at 6 s a step
        (600, 60, 10, 6.0, 50, 50),  # epochs end it first
        (600, 599, 10, 6.0, 10_000, 11),  # never below one more step
        (600, 700, 10, 6.0, 10_000, 11),
    ],
)
def test_fit_steps(seconds, elapsed, done, per_step, cap, expected):
    assert fit_steps(seconds, elapsed, done, per_step, cap) == expected


class Clock:
    """Time that moves only when told: the budget's arithmetic without a real wait."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def run_steps(budget: Budget, clock: Clock, step_s: float, eval_every: int, eval_s: float):
    """Drive the budget as the trainer would until it or the plan ends the run."""
    fits = []
    budget.on_fit = fits.append
    budget.begin()
    step = 0
    while step < budget.plan.total:
        budget.step_begin()
        clock.now += step_s * (3 if step == 0 else 1)  # the first step warms up
        step += 1
        if budget.step_end(step):
            break
        if step % eval_every == 0:
            clock.now += eval_s
    return step, fits


def test_the_budget_fits_the_steps_to_the_minutes_and_ends_on_the_last_step():
    clock = Clock()
    budget = Budget(60.0, Plan("linear", 0.05, 10), cap=10_000, clock=clock)
    steps, fits = run_steps(budget, clock, step_s=0.5, eval_every=25, eval_s=2.0)
    assert steps == budget.plan.total == fits[-1]
    # 60 s of 0.5 s steps with a 2 s eval every 25: about 108 steps fit, the first step's warm-up
    # and the evals taken out
    assert 100 <= steps <= 112
    assert 55.0 <= clock.now <= 60.0
    assert budget.plan.factor(steps - 1) < 0.05, "the decaying schedule ends at the last step"
    assert budget.plan.factor(steps // 2) > 0.4


def test_without_evals_the_fitted_total_ends_the_run_not_the_guard():
    clock = Clock()
    budget = Budget(60.0, Plan("cosine", 0.05, 10), cap=10_000, clock=clock)
    steps, _ = run_steps(budget, clock, step_s=0.5, eval_every=10**9, eval_s=0.0)
    assert not budget.ended_by_time
    assert steps == budget.plan.total == 118  # (60 - 1.5) / 0.5 + 1


def test_epochs_cap_the_budget():
    clock = Clock()
    budget = Budget(60.0, Plan("linear", 0.05, 30), cap=30, clock=clock)
    steps, _ = run_steps(budget, clock, step_s=0.5, eval_every=25, eval_s=2.0)
    assert steps == 30 and clock.now < 30


def test_a_run_slower_over_its_last_steps_finishes_its_schedule_a_little_late():
    clock = Clock()
    budget = Budget(60.0, Plan("linear", 0.0, 10), cap=10_000, clock=clock)
    budget.begin()
    for step in range(1, 1000):
        used = budget.plan.factor(step - 1)  # the rate this step trains at
        budget.step_begin()
        clock.now += 0.8 if step >= 112 else 0.5  # the machine got busier near the end
        if budget.step_end(step) or step >= budget.plan.total:
            break
    assert not budget.ended_by_time and step == budget.plan.total
    assert used < 0.02, "the last step trains at the schedule's last rate"
    assert 60.0 < clock.now <= 60.0 * (1 + OVERRUN)


def test_a_run_that_slows_down_is_stopped_by_the_guard_in_time():
    clock = Clock()
    budget = Budget(30.0, Plan("linear", 0.0, 10), cap=10_000, clock=clock)
    budget.begin()
    for step in range(1, 1000):
        budget.step_begin()
        clock.now += 0.1 if step < 20 else 5.0  # the machine got busy
        if budget.step_end(step):
            break
    assert budget.ended_by_time and budget.plan.total == step
    assert clock.now <= 30.0 + 5.0
