"""The learning-rate schedule and the time budget: a run's step count can be fitted to minutes.

A decaying schedule (linear, cosine, ...) is a function of the step and of the run's total
steps. With a time budget the total is not known when training starts: the pace is measured over
the first steps, the total set so that the run ends on time, and refitted as the run goes (the
evaluations and checkpoints take their share). The schedule reads the total each step, so it
ends at the last step whatever the total became.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

FIRST_FIT_STEPS = 3  # steps timed (after the first, which warms up) before the first fit
REFITS = 10  # the total is refitted about this many times over the run
WSD_DECAY = 0.2  # warmup_stable_decay: the share of the steps the rate decays over
MIN_LR_RATE = 0.1  # cosine_with_min_lr: the rate ends at this share of the peak
# A run a few steps short of its fitted total when the time is up (the machine got a little
# slower) finishes them, running over by at most this share of the budget: its schedule then
# ends where it decays to its last rate, not a few steps before.
OVERRUN = 0.03


@dataclass
class Plan:
    """The run's total steps, which a time budget may change while it runs."""

    schedule: str
    warmup_ratio: float
    total: int
    _factors: dict[int, Callable[[int], float]] = field(default_factory=dict, repr=False)

    def factor(self, step: int) -> float:
        """The learning rate at `step` as a share of the peak."""
        total = max(self.total, 1)
        if total not in self._factors:
            self._factors = {total: schedule_factor(self.schedule, self.warmup_ratio, total)}
        return self._factors[total](step)


def schedule_factor(name: str, warmup_ratio: float, total: int) -> Callable[[int], float]:
    """transformers' schedule `name` over `total` steps as a function of the step."""
    import torch
    from transformers import get_scheduler

    warmup = math.ceil(total * warmup_ratio)
    extra = {}
    if name == "warmup_stable_decay":
        extra = {"num_decay_steps": max(1, int(total * WSD_DECAY))}
    elif name == "cosine_with_min_lr":
        extra = {"min_lr_rate": MIN_LR_RATE}
    # A scheduler built on a throwaway optimizer, so the real one's rates are not touched.
    dummy = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    scheduler = get_scheduler(
        name,
        dummy,
        num_warmup_steps=warmup,
        num_training_steps=total,
        scheduler_specific_kwargs=extra,
    )
    return scheduler.lr_lambdas[0]


def fitted_scheduler(optimizer, plan: Plan):
    """A LambdaLR that follows `plan`, whatever its total becomes (one factor for all groups:
    LoRA+'s groups keep their ratio)."""
    from torch.optim.lr_scheduler import LambdaLR

    return LambdaLR(optimizer, [plan.factor] * len(optimizer.param_groups))


def fit_steps(seconds: float, elapsed: float, done: int, per_step: float, cap: int) -> int:
    """The total steps that end a run at `seconds`, when `done` steps took `elapsed` seconds
    and each further one takes `per_step`: never below done + 1 nor above `cap`."""
    remaining = max(seconds - elapsed, 0.0)
    return int(max(done + 1, min(cap, done + remaining // max(per_step, 1e-9))))


class Budget:
    """Times the steps of a run and fits plan.total to `seconds` of training (steps, evaluations,
    sample answers and checkpoints all count). `cap`: the steps that epochs or max_steps allow.
    `on_fit(total)` hears each new total."""

    def __init__(
        self,
        seconds: float,
        plan: Plan,
        cap: int,
        on_fit: Callable[[int], None] = lambda total: None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.seconds, self.plan, self.cap, self.on_fit = seconds, plan, cap, on_fit
        self.clock = clock
        self.started = self.step_began = 0.0
        self.first_step = 0.0  # the first step warms up: timed apart, counted once
        self.step_seconds = 0.0  # the later steps' own time
        self.timed = 0
        self.next_fit = FIRST_FIT_STEPS + 1
        self.ended_by_time = False

    def begin(self, step: int = 0) -> None:
        """Training starts (at `step` when resumed)."""
        self.started = self.step_began = self.clock()
        self.next_fit = step + FIRST_FIT_STEPS + 1

    def step_begin(self) -> None:
        self.step_began = self.clock()

    def step_end(self, step: int) -> bool:
        """After optimizer step `step`; True: stop now, the time is up."""
        now = self.clock()
        if self.first_step == 0.0:
            self.first_step = now - self.step_began
        else:
            self.step_seconds += now - self.step_began
            self.timed += 1
        elapsed = now - self.started
        per_step = self.per_step(elapsed)
        if step >= self.plan.total:  # the last step: the plan ends the run
            return False
        if elapsed + (per_step or 0.0) > self.seconds:  # another step would overrun
            left = self.plan.total - step
            if per_step and elapsed + left * per_step <= self.seconds * (1 + OVERRUN):
                return False  # nearly done: the schedule ends on its last step
            self.ended_by_time = True
            self._set(step)
            return True
        if step >= self.next_fit and per_step:
            total = fit_steps(self.seconds, elapsed, step, per_step, self.cap)
            self._set(total)
            self.next_fit = step + max(1, (total - step) // REFITS)
        return False

    def per_step(self, elapsed: float) -> float | None:
        """A step's own time, plus its share of what is not a step (evaluations, sample
        answers, checkpoints), which come at a steady rate per step."""
        if not self.timed:
            return None
        pace = self.step_seconds / self.timed
        steps = self.timed + 1
        other = max(elapsed - self.first_step - self.step_seconds, 0.0)
        return pace + other / steps

    def _set(self, total: int) -> None:
        if total != self.plan.total:
            self.plan.total = total
            self.on_fit(total)


def budget_callback(budget: Budget):
    """The Budget as a TrainerCallback: it sets the trainer's max_steps to the fitted total."""
    from transformers import TrainerCallback

    class TimeBudget(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            budget.begin(state.global_step)

        def on_step_begin(self, args, state, control, **kwargs):
            budget.step_begin()

        def on_step_end(self, args, state, control, **kwargs):
            if budget.step_end(state.global_step):
                control.should_training_stop = True
            state.max_steps = budget.plan.total

    return TimeBudget()
