"""The job spec: the one validated mapping from form or API values to a training run."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from finetune.fields import Field, SpecError, parse_fields
from finetune.methods import Method, get_method
from finetune.search import parse_search

# transformers' learning-rate schedules that a time budget can refit (see finetune.schedule)
SCHEDULES = (
    "linear",
    "cosine",
    "cosine_with_min_lr",
    "warmup_stable_decay",
    "constant_with_warmup",
    "constant",
    "polynomial",
    "inverse_sqrt",
)
TRAINING_FIELDS: tuple[Field, ...] = (
    Field(
        "max_minutes",
        "Time budget (minutes)",
        float,
        None,
        "Train for this long; the learning-rate schedule is fitted to it. With epochs or max "
        "steps, whichever ends first.",
        0.05,
        10080,
        optional=True,
    ),
    Field(
        "epochs",
        "Epochs",
        float,
        None,
        "Passes over the data; or set max steps. With neither (and no time budget): 1 epoch.",
        0.01,
        1000,
        optional=True,
    ),
    Field(
        "max_steps",
        "Max steps",
        int,
        None,
        "Optimizer steps; overrides epochs.",
        1,
        1_000_000,
        optional=True,
    ),
    Field("batch_size", "Batch size", int, 8, "Examples per forward pass.", 1, 1024),
    Field(
        "learning_rate",
        "Learning rate",
        float,
        None,
        "Peak learning rate; not set: the method's own default (methods differ by orders of "
        "magnitude).",
        1e-7,
        1.0,
        optional=True,
    ),
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
        "lr_scheduler_type",
        "Schedule",
        str,
        "linear",
        "How the learning rate moves over the run (transformers' schedules); decaying ones end "
        "at the last step, also with a time budget.",
        choices=SCHEDULES,
        advanced=True,
    ),
    Field(
        "warmup_ratio",
        "Warm-up share",
        float,
        0.05,
        "Share of the steps over which the learning rate rises from 0.",
        0.0,
        0.5,
        advanced=True,
    ),
    Field(
        "gradient_accumulation_steps",
        "Gradient accumulation",
        int,
        1,
        "Batches summed into one optimizer step: the effective batch is batch size x this x GPUs.",
        1,
        1024,
        advanced=True,
    ),
    Field(
        "weight_decay",
        "Weight decay",
        float,
        0.0,
        "AdamW's decoupled weight decay.",
        0.0,
        1.0,
        advanced=True,
    ),
    Field(
        "max_grad_norm",
        "Max gradient norm",
        float,
        1.0,
        "Gradients are clipped to this norm (0: no clipping).",
        0.0,
        1000.0,
        advanced=True,
    ),
    Field(
        "neftune_noise_alpha",
        "NEFTune noise",
        float,
        None,
        "Noise added to the input embeddings while training (NEFTune; 5 is usual); not set: none.",
        0.01,
        100.0,
        optional=True,
        advanced=True,
    ),
    Field(
        "loraplus_lr_ratio",
        "LoRA+ ratio",
        float,
        None,
        "LoRA+: the B matrices learn this many times faster than A (16 is usual; LoRA and "
        "QLoRA only); not set: plain AdamW.",
        1.0,
        1000.0,
        optional=True,
        advanced=True,
    ),
    Field(
        "eval_steps",
        "Eval every N steps",
        int,
        None,
        "How often the eval loss is measured; not set: four times a run.",
        1,
        1_000_000,
        optional=True,
        advanced=True,
    ),
    Field(
        "early_stopping_patience",
        "Early stopping patience",
        int,
        None,
        "Stop when the eval loss has not improved for this many evaluations; not set: never.",
        1,
        1000,
        optional=True,
        advanced=True,
    ),
    Field(
        "load_best_model_at_end",
        "Keep the best checkpoint",
        bool,
        False,
        "The adapter written is the one with the lowest eval loss, not the last one.",
        advanced=True,
    ),
    Field(
        "group_by_length",
        "Group by length",
        bool,
        False,
        "Batches of rows of similar length: less padding, a little less random.",
        advanced=True,
    ),
    Field(
        "packing",
        "Packing",
        bool,
        False,
        "Chat and text rows packed into max-length sequences with no padding (TRL's best-fit "
        "packing; attention stays within each row).",
        advanced=True,
    ),
    Field(
        "padding_free",
        "Padding-free",
        bool,
        False,
        "A batch's rows in one sequence without padding, not packed across batches.",
        advanced=True,
    ),
    Field(
        "share_prefix",
        "Share prompt prefix",
        bool,
        True,
        "Tokens every row of a batch opens with (a common system prompt) are computed once; "
        "the loss and gradients are the same.",
        advanced=True,
    ),
    Field(
        "activation_checkpointing",
        "Activation checkpointing",
        bool,
        False,
        "Recompute activations in the backward pass: much less memory, about 20-30% slower.",
        advanced=True,
    ),
    Field(
        "logging_steps",
        "Log every N steps",
        int,
        1,
        "How often metrics are recorded.",
        1,
        10000,
        advanced=True,
    ),
    Field(
        "save_steps",
        "Checkpoint every N steps",
        int,
        50,
        "A checkpoint (weights, optimizer, scheduler, random state) to resume from.",
        1,
        1_000_000,
        advanced=True,
    ),
    Field(
        "keep_checkpoints",
        "Checkpoints kept",
        int,
        2,
        "The newest N checkpoints stay on disk; older ones are deleted.",
        1,
        100,
        advanced=True,
    ),
    Field(
        "sample_prompts",
        "Sample prompts",
        int,
        3,
        "Fixed eval prompts answered during training, beside the base model's answers (0: none).",
        0,
        8,
        advanced=True,
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
        advanced=True,
    ),
    Field(
        "gpus",
        "GPUs",
        int,
        1,
        "More than one trains data-parallel (accelerate launch) on a worker that has them.",
        1,
        64,
        advanced=True,
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
    "search",
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
    search: dict[str, Any] | None = None  # a settings search (finetune.search): trials first

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
    if training["max_steps"] is not None:
        training["epochs"] = None  # max_steps overrides epochs, as in transformers
    if training["epochs"] is None and training["max_steps"] is None and not training["max_minutes"]:
        training["epochs"] = 1.0
    from_adapter = _adapter_id(data.get("from_adapter"))
    if training["learning_rate"] is None and from_adapter is None:
        # (training an adapter further: its own method's, once the adapter is looked up)
        training["learning_rate"] = method.learning_rate
    check_training(method, training)
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
        from_adapter=from_adapter,
        search=parse_search(data.get("search"), method, {f.name for f in TRAINING_FIELDS}),
    )


def check_training(method: Method, training: dict[str, Any]) -> None:
    """Rules across training fields and the method; the task's own rules wait for the model."""
    if training["loraplus_lr_ratio"] is not None and not method.loraplus:
        raise SpecError(
            f"training.loraplus_lr_ratio: LoRA+ sets the learning rate of LoRA's B matrices; "
            f"{method.label} has none (use it with LoRA or QLoRA)"
        )
    for name in ("packing", "padding_free"):
        if training[name] and method.prompt_learning:
            raise SpecError(
                f"training.{name}: {method.label} puts its virtual tokens before each "
                "sequence; rows packed into one sequence would share them. Turn it off."
            )


def _adapter_id(value: Any) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str) or not value.startswith("ad-"):
        raise SpecError(f"from_adapter: must be an adapter id (ad-...), got {value!r}")
    return value
