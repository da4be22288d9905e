"""Exact parameter counts for a model + method, from a weightless (meta device) model."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from finetune.fields import SpecError
from finetune.methods import get_method
from finetune.models import load_config


@dataclass(frozen=True)
class Counts:
    trainable: int
    total: int

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
    from peft import get_peft_model

    base = _meta_model(model, trust_remote_code)
    method = get_method(method_id)
    try:
        peft_model = get_peft_model(base, method.build(params, "CAUSAL_LM"))
    except ValueError as exc:
        if "target_modules" in str(exc) or "Target modules" in str(exc):
            names = linear_module_names(model, trust_remote_code)
            raise SpecError(
                f"method_params.target_modules: {', '.join(params.get('target_modules', []))} "
                f"not found in the model; its linear layers are: {', '.join(names)}"
            ) from None
        raise SpecError(f"method_params: {exc}") from None
    trainable, total = peft_model.get_nb_trainable_parameters()
    return Counts(trainable=trainable, total=total)


def linear_module_names(model: str, trust_remote_code: bool = False) -> list[str]:
    """Distinct short names of the model's linear layers (q_proj, ...), read without weights."""
    import torch

    base = _meta_model(model, trust_remote_code)
    output = base.get_output_embeddings()
    return sorted(
        {
            name.rsplit(".", 1)[-1]
            for name, module in base.named_modules()
            if isinstance(module, torch.nn.Linear) and module is not output
        }
    )
