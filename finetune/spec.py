"""The job spec: the one validated mapping from form or API values to a training run."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from finetune.fields import Field, SpecError, parse_fields
from finetune.methods import get_method

TRAINING_FIELDS: tuple[Field, ...] = (
    Field(
        "epochs",
        "Epochs",
        float,
        None,
        "Passes over the data; or set max steps.",
        0.01,
        1000,
        optional=True,
    ),
    Field(
        "max_steps",
        "Max steps",
        int,
        None,
        "Optimizer steps; or set epochs.",
        1,
        1_000_000,
        optional=True,
    ),
    Field("batch_size", "Batch size", int, 8, "Examples per optimizer step.", 1, 1024),
    Field("learning_rate", "Learning rate", float, 2e-4, "Peak learning rate.", 1e-7, 1.0),
    Field(
        "max_length",
        "Max length (tokens)",
        int,
        256,
        "Longer examples are truncated.",
        16,
        32768,
    ),
    Field(
        "eval_fraction",
        "Eval split",
        float,
        0.1,
        "Share of rows held out to measure eval loss (0 for none).",
        0.0,
        0.5,
    ),
    Field(
        "seed",
        "Seed",
        int,
        42,
        "Seed for the split, shuffling and initialisation.",
        0,
        2**31 - 1,
    ),
    Field(
        "activation_checkpointing",
        "Activation checkpointing",
        bool,
        False,
        "Recompute activations in the backward pass: much less memory, about 20-30% slower.",
    ),
    Field(
        "logging_steps",
        "Log every N steps",
        int,
        1,
        "How often metrics are recorded.",
        1,
        10000,
    ),
    Field(
        "save_steps",
        "Checkpoint every N steps",
        int,
        50,
        "A checkpoint (weights, optimizer, scheduler, random state) to resume from.",
        1,
        1_000_000,
    ),
    Field(
        "keep_checkpoints",
        "Checkpoints kept",
        int,
        2,
        "The newest N checkpoints stay on disk; older ones are deleted.",
        1,
        100,
    ),
    Field(
        "sample_prompts",
        "Sample prompts",
        int,
        3,
        "Fixed eval prompts answered during training, beside the base model's answers (0: none).",
        0,
        8,
    ),
    Field(
        "sample_every",
        "Sample every N steps",
        int,
        None,
        "How often the sample prompts are answered; not set: four times a run.",
        1,
        1_000_000,
        optional=True,
    ),
    Field(
        "gpus",
        "GPUs",
        int,
        1,
        "More than one trains data-parallel (accelerate launch) on a worker that has them.",
        1,
        64,
    ),
)
_SPEC_KEYS = (
    "base_model",
    "dataset_id",
    "method",
    "method_params",
    "training",
    "name",
    "from_adapter",
)


@dataclass(frozen=True)
class JobSpec:
    base_model: str
    dataset_id: str
    method: str
    method_params: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    name: str | None = None
    from_adapter: str | None = None  # an adapter id: train it further instead of a new one

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)


def parse_spec(data: Any) -> JobSpec:
    """Validate a spec mapping; raise SpecError naming the first bad field."""
    if isinstance(data, str):
        try:
            data = json.loads(data)
        except json.JSONDecodeError as exc:
            raise SpecError(f"spec: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(data, dict):
        raise SpecError("spec: must be a JSON object")
    unknown = sorted(set(data) - set(_SPEC_KEYS))
    if unknown:
        raise SpecError(f"{unknown[0]}: unknown field (known: {', '.join(_SPEC_KEYS)})")
    for key in ("base_model", "dataset_id"):
        if not isinstance(data.get(key), str) or not data[key].strip():
            raise SpecError(f"{key}: a value is required")
    method = get_method(data.get("method", "lora"))
    training = parse_fields(TRAINING_FIELDS, data.get("training"), "training")
    if training["epochs"] is not None and training["max_steps"] is not None:
        raise SpecError("training.max_steps: give epochs or max_steps, not both")
    if training["epochs"] is None and training["max_steps"] is None:
        training["epochs"] = 1.0
    name = data.get("name")
    if name is not None and (not isinstance(name, str) or len(name) > 200):
        raise SpecError("name: must be text of at most 200 characters")
    return JobSpec(
        base_model=data["base_model"].strip(),
        dataset_id=data["dataset_id"].strip(),
        method=method.id,
        method_params=method.parse(data.get("method_params")),
        training=training,
        name=(name or "").strip() or None,
        from_adapter=_adapter_id(data.get("from_adapter")),
    )


def _adapter_id(value: Any) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str) or not value.startswith("ad-"):
        raise SpecError(f"from_adapter: must be an adapter id (ad-...), got {value!r}")
    return value
