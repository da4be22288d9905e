"""Exact parameter counts and adapter size for a model + method, from a weightless model."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from finetune.methods import (
    Context,
    apply_method,
    fit_to_model,
    get_method,
    linear_names,
    trainable_counts,
)
from finetune.models import ModelError, load_config
from finetune.tasks import auto_class, label_kwargs, model_task

FLOAT32_BYTES = 4


@dataclass(frozen=True)
class Counts:
    trainable: int
    total: int
    size_bytes: int  # of what training writes: the adapter, or the changed base weights

    @property
    def percent(self) -> float:
        return 100.0 * self.trainable / max(self.total, 1)


def _meta_model(model: str, trust_remote_code: bool, labels: list[str] | None = None):
    """The model's architecture with no weights: built in a fraction of a second, any size."""
    import torch

    config = load_config(model, trust_remote_code)
    for key, value in label_kwargs(labels).items():
        setattr(config, key, value)
    try:
        with torch.device("meta"):
            return auto_class(model_task(config)).from_config(
                config, trust_remote_code=trust_remote_code
            )
    except ValueError as exc:  # "Unrecognized configuration class": no text model of this kind
        raise ModelError(f"base_model: {model}: {exc}") from None


def count_parameters(
    model: str,
    method_id: str,
    params: dict[str, Any],
    trust_remote_code: bool = False,
    labels: list[str] | None = None,
) -> Counts:
    """labels: a classifier's labels, which size its head (two when not known yet)."""
    method = get_method(method_id)
    base = _meta_model(model, trust_remote_code, labels)
    task = model_task(base.config)
    context = Context(model_path=model, for_counting=True, task_type=task)
    wrapped = apply_method(base, method, params, context)
    for name, param in wrapped.named_parameters():
        if ".ranknum." in name:  # AdaLoRA's rank counter: frozen, but not when moved to meta
            param.requires_grad_(False)
    trainable, total = trainable_counts(wrapped)
    return Counts(trainable, total, _saved_values(wrapped, trainable) * FLOAT32_BYTES)


def _saved_values(model, trainable: int) -> int:
    """How many values the run writes: PEFT's own selection of what to save (a p-tuning
    encoder saves only the prompt it produces; prefix projection likewise). Selective and full
    runs write what trains. Sizes are float32 (PEFT keeps adapters so; a CPU trains so)."""
    if not hasattr(model, "peft_config"):
        return trainable
    config = model.peft_config["default"]
    if config.is_prompt_learning:  # the virtual tokens' vectors (per layer, for prefixes)
        width = config.token_dim * (
            2 * config.num_layers if config.peft_type == "PREFIX_TUNING" else 1
        )
        return config.num_virtual_tokens * config.num_transformer_submodules * width
    from peft import get_peft_model_state_dict

    return sum(t.numel() for t in get_peft_model_state_dict(model).values())


def linear_module_names(model: str, trust_remote_code: bool = False) -> list[str]:
    """Distinct short names of the model's linear layers (q_proj, ...), read without weights."""
    return linear_names(_meta_model(model, trust_remote_code))


def fitted_params(
    model: str, method_id: str, params: dict[str, Any], trust_remote_code: bool = False
) -> dict[str, Any]:
    """The method's params as they will apply to this model (default targets made to fit)."""
    return fit_to_model(_meta_model(model, trust_remote_code), get_method(method_id), params)
