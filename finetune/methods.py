"""The PEFT method registry: one entry per method (fields, defaults, the config it builds)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from finetune.fields import Field, SpecError, parse_fields

ATTENTION_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj")


@dataclass(frozen=True)
class Method:
    id: str
    label: str
    family: str  # selective, reparameterization, additive, full
    description: str
    fields: tuple[Field, ...]
    build: Callable[[dict[str, Any], str], Any]  # (params, task_type) -> a peft config
    can_merge: bool
    can_combine: bool

    def parse(self, params: Any) -> dict[str, Any]:
        return parse_fields(self.fields, params, "method_params")


def _lora_config(params: dict[str, Any], task_type: str):
    from peft import LoraConfig

    return LoraConfig(
        r=params["r"],
        lora_alpha=params["lora_alpha"],
        lora_dropout=params["lora_dropout"],
        target_modules=list(params["target_modules"]),
        bias="none",
        task_type=task_type,
    )


LORA = Method(
    id="lora",
    label="LoRA",
    family="reparameterization",
    description="Low-rank update matrices beside the chosen linear layers; small, mergeable.",
    fields=(
        Field("r", "Rank (r)", int, 16, "Rank of the update matrices.", 1, 1024),
        Field("lora_alpha", "Alpha", int, 32, "Scale of the update: alpha / r.", 1, 4096),
        Field(
            "lora_dropout",
            "Dropout",
            float,
            0.05,
            "Dropout on the adapter input.",
            0.0,
            0.9,
        ),
        Field(
            "target_modules",
            "Target modules",
            list,
            list(ATTENTION_MODULES),
            "Names of the linear layers to adapt (default: the attention projections).",
        ),
    ),
    build=_lora_config,
    can_merge=True,
    can_combine=True,
)

METHODS: dict[str, Method] = {m.id: m for m in (LORA,)}


def get_method(method_id: Any) -> Method:
    if method_id not in METHODS:
        raise SpecError(f"method: unknown method {method_id!r} (known: {', '.join(METHODS)})")
    return METHODS[method_id]
