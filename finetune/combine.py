"""Combining adapters of one base into a new one (PEFT's add_weighted_adapter), or refusing why."""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path

from finetune.fields import SpecError
from finetune.methods import COMBINATIONS, get_method, method_of_type

SAME_RANK = ("linear", "ties", "dare_linear", "dare_ties", "magnitude_prune")
WITH_DENSITY = tuple(c for c in COMBINATIONS if c.startswith(("ties", "dare", "magnitude")))
MAX_ADAPTERS = 8
_COMBINED = "combined"


@dataclass(frozen=True)
class Source:
    """One adapter to combine: a label for messages, its folder, its weight, and the registry
    id of the method it was made with where its record says (else its config's PEFT type)."""

    label: str
    folder: Path
    weight: float
    method: str | None = None


def adapter_config(folder: Path) -> dict:
    path = folder / "adapter_config.json"
    if not folder.is_dir():
        raise SpecError(f"{folder.name}: the adapter's folder is missing from the data dir")
    if not path.is_file():
        raise SpecError(
            f"{folder.name} is not a PEFT adapter (full and selective runs write model weights)"
        )
    return json.loads(path.read_text(encoding="utf-8"))


def check_combination(
    sources: list[Source], combination: str, density: float | None, svd_rank: int | None
) -> str:
    """The adapters' common PEFT type, or a SpecError saying what stops the combination."""
    if combination not in COMBINATIONS:
        raise SpecError(f"method: must be one of {', '.join(COMBINATIONS)}; got {combination!r}")
    if not 1 <= len(sources) <= MAX_ADAPTERS:
        raise SpecError(f"adapter_ids: give 1 to {MAX_ADAPTERS} adapters, got {len(sources)}")
    if len({s.folder for s in sources}) != len(sources):
        raise SpecError("adapter_ids: an adapter is named twice")
    for s in sources:
        if isinstance(s.weight, bool) or not isinstance(s.weight, int | float):
            raise SpecError(f"weights: {s.label}'s weight must be a number, got {s.weight!r}")
        if not -10 <= s.weight <= 10:
            raise SpecError(f"weights: {s.label}'s weight must be from -10 to 10")
    if density is not None and not 0 < density <= 1:
        raise SpecError(f"density: must be above 0 and at most 1, got {density}")
    if svd_rank is not None and not 1 <= svd_rank <= 4096:
        raise SpecError(f"svd_rank: must be from 1 to 4096, got {svd_rank}")
    for s in sources:  # the registry first: a full or selective run has no adapter config
        _check_can_combine(s, get_method(s.method) if s.method else None)
    configs = [adapter_config(s.folder) for s in sources]
    types = {c["peft_type"] for c in configs}
    for s, c in zip(sources, configs, strict=True):
        method = method_of_type(c["peft_type"])
        if method is None:
            raise SpecError(f"{s.label}: PEFT cannot combine {c['peft_type']} adapters.")
        _check_can_combine(s, method)
        if c.get("use_dora"):
            raise SpecError(
                f"{s.label}: DoRA adapters cannot be combined (their magnitude vectors have no "
                "weighted sum in PEFT); merge each into the base instead."
            )
    if len(types) > 1:
        raise SpecError(f"The adapters are of different types ({', '.join(sorted(types))}).")
    peft_type = types.pop()
    method = method_of_type(peft_type)
    if combination not in method.combines:
        raise SpecError(
            f"{method.label} adapters combine by {' or '.join(map(repr, method.combines))} only, "
            f"not {combination!r}."
        )
    ranks = {s.label: _max_rank(c) for s, c in zip(sources, configs, strict=True)}
    if peft_type == "LORA" and combination in SAME_RANK and len(set(ranks.values())) > 1:
        listed = ", ".join(f"{k}: r={v}" for k, v in ranks.items())
        raise SpecError(
            f"'{combination}' needs adapters of one rank ({listed}); use cat or svd instead."
        )
    targets = {json.dumps(_targets(c)) for c in configs}
    if peft_type == "IA3" and len(targets) > 1:
        raise SpecError("IA3 adapters combine only when they target the same modules.")
    return peft_type


def _check_can_combine(source: Source, method) -> None:
    if method is not None and not method.can_combine:
        raise SpecError(
            f"{source.label}: {method.label} adapters cannot be combined: "
            f"{method.why_not_combined}."
        )


def _max_rank(config: dict) -> int:
    return max([config.get("r", 0), *(config.get("rank_pattern") or {}).values()])


def _targets(config: dict):
    targets = config.get("target_modules")
    return sorted(targets) if isinstance(targets, list) else targets


def combine_adapters(
    base_path: str,
    sources: list[Source],
    combination: str,
    out_dir: Path,
    density: float | None = None,
    svd_rank: int | None = None,
    trust_remote_code: bool = False,
) -> dict:
    """Write one adapter to out_dir (created, must not exist) combining `sources` by weight.

    Returns {peft_type, r, trainable_params} of the new adapter.
    """
    peft_type = check_combination(sources, combination, density, svd_rank)
    import torch
    from peft import PeftModel

    from finetune.models import load_model

    base, _ = load_model(base_path, trust_remote_code)
    names = [f"a{i}" for i in range(len(sources))]
    model = PeftModel.from_pretrained(base, str(sources[0].folder), adapter_name=names[0])
    for name, source in zip(names[1:], sources[1:], strict=True):
        model.load_adapter(str(source.folder), adapter_name=name)
    weights = [float(s.weight) for s in sources]
    torch.manual_seed(0)  # DARE drops at random: the same inputs give the same adapter
    try:
        if peft_type == "IA3":
            model.add_weighted_adapter(names, weights, _COMBINED)
        else:
            extra = {"density": density if density is not None else 0.5}
            model.add_weighted_adapter(
                names,
                weights,
                _COMBINED,
                combination_type=combination,
                svd_rank=svd_rank,
                **(extra if combination in WITH_DENSITY else {}),
            )
    except ValueError as exc:  # PEFT's own checks, for what ours did not foresee
        raise SpecError(f"PEFT could not combine these adapters: {exc}") from None
    model.set_adapter(_COMBINED)
    for name in names:
        model.delete_adapter(name)
    staging = out_dir.with_name(out_dir.name + ".saving")
    model.save_pretrained(str(staging), selected_adapters=[_COMBINED])
    # PEFT writes an adapter not named "default" into a subfolder of that name.
    written = staging / _COMBINED if (staging / _COMBINED).is_dir() else staging
    shutil.move(str(written), str(out_dir))
    shutil.rmtree(staging, ignore_errors=True)
    from safetensors import safe_open

    with safe_open(str(out_dir / "adapter_model.safetensors"), "pt") as f:
        params = sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())  # noqa: SIM118
    config = model.peft_config[_COMBINED]
    return {"peft_type": peft_type, "r": getattr(config, "r", None), "trainable_params": params}
