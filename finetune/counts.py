"""Exact parameter counts and adapter size for a model + method, from a weightless model."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from finetune.methods import Context, apply_method, get_method, linear_names, trainable_counts
from finetune.models import load_config

FLOAT32_BYTES = 4


@dataclass(frozen=True)
class Counts:
    trainable: int
    total: int
    size_bytes: int  # of what training writes: the adapter, or the changed base weights

    @property
    def percent(self) -> float:
        return 100.0 * self.trainable / max(self.total, 1)


def _meta_model(model: str, trust_remote_code: bool):
    """The model's architecture with no weights: built in a fraction of a second, any size."""
    import torch
    from transformers import AutoModelForCausalLM

    config = load_config(model, trust_remote_code)
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)


def count_parameters(
    model: str, method_id: str, params: dict[str, Any], trust_remote_code: bool = False
) -> Counts:
    method = get_method(method_id)
    base = _meta_model(model, trust_remote_code)
    wrapped = apply_method(base, method, params, Context(model_path=model, for_counting=True))
    for name, param in wrapped.named_parameters():
        if ".ranknum." in name:  # AdaLoRA's rank counter: frozen, but not when moved to meta
            param.requires_grad_(False)
    trainable, total = trainable_counts(wrapped)
    # PEFT keeps adapter weights in float32 (even beside a bf16 base); selective and full
    # training write base weights in the training precision, float32 on a CPU.
    return Counts(trainable, total, trainable * FLOAT32_BYTES)


def linear_module_names(model: str, trust_remote_code: bool = False) -> list[str]:
    """Distinct short names of the model's linear layers (q_proj, ...), read without weights."""
    return linear_names(_meta_model(model, trust_remote_code))
