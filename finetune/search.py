"""Settings searches: which trials a search runs, what each trains for, and which one wins.

A search is part of a job spec (`"search": {...}`), and its trials are ordinary training jobs
(jobs.sweep queues them under one parent job):
  auto     a share of the budget on a few short trials (learning rate x rank around the
           method's defaults), then the rest of the budget trains with the best of them
  grid     every combination of the values given, each trial with the whole budget
  random   `trials` draws from the values or ranges given, each with the whole budget
The best trial is the one with the lowest eval loss at its last step (every run ends with an
eval); its adapter (grid, random) or the final run's (auto) is the search's result.
"""

from __future__ import annotations

import itertools
import math
import random
from typing import Any

from finetune.fields import SpecError

MODES = ("auto", "grid", "random")
MAX_TRIALS = 32
AUTO_SHARE = 0.3  # of the budget, spent on the trials of an auto search
AUTO_RATES = (1 / 3, 1.0, 3.0)  # x the method's learning rate
AUTO_RANKS = (1, 2)  # x its rank, for methods that have one
# What a search may not vary: the budget (the search splits it) and the held-out split (the
# trials must be scored on the same rows).
FIXED = {"max_minutes", "epochs", "max_steps", "eval_fraction", "gpus"}
BUDGET = ("max_minutes", "max_steps", "epochs")


def parse_search(value: Any, method, training_names: set[str]) -> dict[str, Any] | None:
    """A search as given in a spec, checked (each trial's values are checked again as the
    trial's own spec; start_job checks that the dataset has rows to score them on); None: no
    search."""
    if value in (None, {}, ""):
        return None
    if not isinstance(value, dict):
        raise SpecError(f"search: must be an object with a mode ({', '.join(MODES)})")
    known = {"mode", "space", "trials", "share"}
    unknown = sorted(set(value) - known)
    if unknown:
        raise SpecError(f"search.{unknown[0]}: unknown field (known: {', '.join(sorted(known))})")
    mode = value.get("mode")
    if mode not in MODES:
        raise SpecError(f"search.mode: must be one of {', '.join(MODES)}; got {mode!r}")
    if mode == "auto":
        if value.get("space"):
            raise SpecError("search.space: an auto search chooses its own values; use grid")
        share = value.get("share", AUTO_SHARE)
        if isinstance(share, bool) or not isinstance(share, int | float) or not 0.1 <= share <= 0.5:
            raise SpecError(f"search.share: must be from 0.1 to 0.5, got {share!r}")
        return {"mode": mode, "share": float(share)}
    space = _space(value.get("space"), method, training_names, ranges=mode == "random")
    if mode == "grid":
        count = math.prod(len(values) for values in space.values())
        if count > MAX_TRIALS:
            raise SpecError(f"search.space: {count} combinations; at most {MAX_TRIALS}")
        return {"mode": mode, "space": space}
    trials = value.get("trials", 8)
    if isinstance(trials, bool) or not isinstance(trials, int) or not 2 <= trials <= MAX_TRIALS:
        raise SpecError(f"search.trials: must be a whole number from 2 to {MAX_TRIALS}")
    return {"mode": mode, "space": space, "trials": trials}


def _space(value: Any, method, training: set[str], ranges: bool) -> dict[str, Any]:
    if not isinstance(value, dict) or not value:
        raise SpecError(
            'search.space: give the values to try, e.g. {"learning_rate": [1e-4, 1e-3]}'
        )
    methods = {f.name for f in method.fields}
    space = {}
    for name, values in value.items():
        short = name.split(".", 1)[-1]
        if name.startswith("training.") or (name == short and short in training):
            path = f"training.{short}"
            if short not in training:
                raise SpecError(f"search.space.{name}: training has no field {short!r}")
        elif name.startswith("method_params.") or (name == short and short in methods):
            path = f"method_params.{short}"
            if short not in methods:
                raise SpecError(f"search.space.{name}: {method.label} has no field {short!r}")
        else:
            raise SpecError(
                f"search.space.{name}: not a training field nor one of {method.label}'s"
            )
        if short in FIXED:
            raise SpecError(f"search.space.{name}: the search sets it (it splits the budget)")
        if isinstance(values, dict) and ranges:
            space[path] = _range(name, values)
        elif isinstance(values, list) and 1 <= len(values) <= 8:
            space[path] = list(values)
        else:
            what = "a list of 1 to 8 values" + (' or {"min", "max", "log"}' if ranges else "")
            raise SpecError(f"search.space.{name}: must be {what}")
    return space


def _range(name: str, given: dict) -> dict[str, Any]:
    low, high, log = given.get("min"), given.get("max"), given.get("log", False)
    numbers = all(isinstance(v, int | float) and not isinstance(v, bool) for v in (low, high))
    if set(given) - {"min", "max", "log"} or not numbers or not low < high:
        raise SpecError(f'search.space.{name}: a range is {{"min": a, "max": b, "log": false}}')
    if log and low <= 0:
        raise SpecError(f"search.space.{name}: a log range needs min above 0")
    whole = isinstance(low, int) and isinstance(high, int)
    return {"min": low, "max": high, "log": bool(log), "whole": whole}


def trials(search: dict[str, Any], spec) -> list[dict[str, Any]]:
    """Each trial's values, by path ("training.learning_rate", "method_params.r")."""
    if search["mode"] == "auto":
        rate = spec.training["learning_rate"]
        space = {"training.learning_rate": [_round(rate * f) for f in AUTO_RATES]}
        if "r" in spec.method_params:
            space["method_params.r"] = [spec.method_params["r"] * f for f in AUTO_RANKS]
        return _grid(space)
    if search["mode"] == "grid":
        return _grid(search["space"])
    rng = random.Random(spec.training["seed"])
    return [
        {path: _draw(rng, values) for path, values in search["space"].items()}
        for _ in range(search["trials"])
    ]


def _grid(space: dict[str, list]) -> list[dict[str, Any]]:
    paths = list(space)
    return [dict(zip(paths, combo, strict=True)) for combo in itertools.product(*space.values())]


def _draw(rng: random.Random, values):
    if isinstance(values, list):
        return rng.choice(values)
    low, high = values["min"], values["max"]
    if values["log"]:
        x = math.exp(rng.uniform(math.log(low), math.log(high)))
    else:
        x = rng.uniform(low, high)
    return round(x) if values["whole"] else _round(x)


def _round(x: float) -> float:
    return float(f"{x:.3g}")


def trial_fraction(search: dict[str, Any], count: int) -> float:
    """The share of the spec's budget (minutes, steps or epochs) that each trial trains for."""
    return search["share"] / count if search["mode"] == "auto" else 1.0


def with_values(spec: dict[str, Any], values: dict[str, Any], fraction: float) -> dict[str, Any]:
    """A trial's (or the final run's) spec: the search's values set, the budget scaled by
    `fraction`, no search of its own."""
    out = {**spec, "search": None}
    out["training"] = dict(spec.get("training") or {})
    out["method_params"] = dict(spec.get("method_params") or {})
    for path, value in values.items():
        part, name = path.split(".", 1)
        out[part][name] = value
    t = out["training"]
    if t.get("max_minutes"):
        t["max_minutes"] = max(0.05, round(t["max_minutes"] * fraction, 3))
    if t.get("max_steps"):
        t["max_steps"] = max(1, round(t["max_steps"] * fraction))
    if t.get("epochs"):
        t["epochs"] = max(0.01, round(t["epochs"] * fraction, 4))
    return out


def label(values: dict[str, Any]) -> str:
    """'learning_rate 0.001 · r 16'"""
    return " · ".join(
        f"{path.split('.', 1)[-1]} {value:g}"
        if isinstance(value, float)
        else f"{path.split('.', 1)[-1]} {value}"
        for path, value in values.items()
    )


def best(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The trial with the lowest final eval loss among those that succeeded."""
    done = [r for r in rows if r.get("state") == "succeeded" and r.get("eval_loss") is not None]
    return min(done, key=lambda r: r["eval_loss"]) if done else None
