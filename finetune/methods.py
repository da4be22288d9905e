"""The method registry: one entry per fine-tuning method, and the one way a method is applied.

An entry holds what a user picks from (label, family, one-line description), its fields (PEFT's
own parameter names, with defaults, ranges and help), and what it does to a model: a PEFT config
to wrap it in, or the base weights it unfreezes (selective, full). The Train tab's form, the spec
validation, the API's /list_methods and the tests all read this registry: a method is one entry.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from finetune.fields import Field, SpecError, parse_fields

ATTENTION_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj")
# LoRA inits that change the base weights: the adapter is saved converted to apply to the
# original base (PEFT's path_initial_model_for_weight_conversion).
CONVERTED_INITS = ("pissa", "olora")
CAUSAL_LM = "CAUSAL_LM"
# Default peak learning rates, measured on the bundled model (bench/learning_rates.py sweeps
# them; its printout is in the README). Adapters that start at zero or from scratch want
# larger rates than weights that were pretrained.
LEARNING_RATES = {
    "lora": 2e-3,
    "qlora": 2e-3,
    "adalora": 2e-3,
    "loha": 2e-3,
    "lokr": 2e-3,
    "ia3": 5e-3,
    "prompt_tuning": 3e-2,
    "prefix_tuning": 1e-2,
    "p_tuning": 1e-2,
    "selective": 1e-4,
    "full": 3e-5,
}
ALL_TASKS = (CAUSAL_LM, "SEQ_2_SEQ_LM", "SEQ_CLS")  # finetune.tasks names them


@dataclass(frozen=True)
class Context:
    """What building a method needs beyond its fields."""

    model_path: str = ""  # prompt tuning from a text reads the model's tokenizer
    total_steps: int = 1000  # AdaLoRA schedules its rank budget over the run
    for_counting: bool = False  # a weightless (meta) model: skip data-dependent initialisation
    task_type: str = CAUSAL_LM


@dataclass(frozen=True)
class Method:
    id: str
    label: str
    family: str  # reparameterization, additive, selective, full
    description: str
    fields: tuple[Field, ...]
    peft_config: Callable[[dict[str, Any], Context], Any] | None = None
    select: Callable[[Any, dict[str, Any]], list[str]] | None = None  # unfreezes base weights
    quantization: Callable[[dict[str, Any]], dict[str, Any]] | None = None  # bitsandbytes kwargs
    check: Callable[[dict[str, Any]], None] | None = None  # rules across fields
    writes: str = "adapter"  # "adapter" (PEFT's folder), "tensors" (by name) or "model"
    rank_budget: bool = False  # AdaLoRA: ranks move during training (callback + penalty)
    peft_type: str | None = None  # PEFT's type of the adapter it writes (None: not an adapter)
    can_merge: bool = True
    why_not_merged: str = ""  # what the refusal to merge says
    combines: tuple[str, ...] = ()  # PEFT's add_weighted_adapter combinations it allows
    why_not_combined: str = ""  # what the refusal to combine says
    shares_base: bool = False  # the playground switches it on one loaded base among others
    tasks: tuple[str, ...] = field(default=ALL_TASKS)
    learning_rate: float = 2e-4  # the default peak rate: methods differ by orders of magnitude
    loraplus: bool = False  # has LoRA's A and B matrices (LoRA+ can set B's rate apart)
    prompt_learning: bool = False  # virtual tokens before the input (no packing)

    @property
    def can_combine(self) -> bool:
        return bool(self.combines)

    def parse(self, params: Any) -> dict[str, Any]:
        values = parse_fields(self.fields, params, "method_params")
        if self.check is not None:
            self.check(values)
        return values

    def describe(self) -> dict[str, Any]:
        """The entry as /list_methods returns it."""
        return {
            "id": self.id,
            "label": self.label,
            "family": self.family,
            "description": self.description,
            "peft_type": self.peft_type,
            "can_merge": self.can_merge,
            "can_combine": self.can_combine,
            "combinations": list(self.combines),
            "shares_base": self.shares_base,
            # a PEFT adapter folder of its type imports (as the first method of that type)
            "can_import": self.peft_type is not None,
            "imports_as": self.peft_type and method_of_type(self.peft_type).id,
            "tasks": list(self.tasks),
            "learning_rate": self.learning_rate,
            "fields": [
                {
                    "name": f.name,
                    "label": f.label,
                    "type": f.kind.__name__,
                    "default": f.default,
                    "help": f.help,
                    "minimum": f.minimum,
                    "maximum": f.maximum,
                    "choices": list(f.choices) if f.choices else None,
                }
                for f in self.fields
            ],
        }


# ---- fields shared by several methods ----


def _targets(default: tuple[str, ...] = ATTENTION_MODULES) -> Field:
    return Field(
        "target_modules",
        "Target modules",
        list,
        list(default),
        "Names of the linear layers to adapt (default: the attention projections).",
    )


_RANK = Field("r", "Rank (r)", int, 16, "Rank of the update matrices.", 1, 1024)
_ALPHA = Field("lora_alpha", "Alpha", int, 32, "Scale of the update: alpha / r.", 1, 4096)
_DROPOUT = Field("lora_dropout", "Dropout", float, 0.05, "Dropout on the adapter input.", 0, 0.9)
_VIRTUAL = Field(
    "num_virtual_tokens",
    "Virtual tokens",
    int,
    20,
    "Trainable token vectors put before every input.",
    1,
    512,
)
_LORA_FIELDS = (
    _RANK,
    _ALPHA,
    _DROPOUT,
    _targets(),
    Field("use_dora", "DoRA", bool, False, "Split each update into magnitude and direction."),
    Field("use_rslora", "rsLoRA", bool, False, "Scale by alpha / sqrt(r): steadier at high ranks."),
    Field(
        "init_lora_weights",
        "Initialisation",
        str,
        "default",
        "default (B = 0), gaussian, or PiSSA / OLoRA (from the weights' SVD / QR; saved as a "
        "plain LoRA of twice the rank that applies to the original base).",
        choices=("default", "gaussian", "pissa", "olora"),
    ),
)
_LYCORIS_FIELDS = (
    Field("r", "Rank (r)", int, 8, "Rank of the factors.", 1, 1024),
    Field("alpha", "Alpha", int, 8, "Scale of the update: alpha / r.", 1, 4096),
    Field("rank_dropout", "Rank dropout", float, 0.0, "Dropout of whole ranks.", 0, 0.9),
    Field("module_dropout", "Module dropout", float, 0.0, "Dropout of the whole update.", 0, 0.9),
    _targets(),
)


# ---- PEFT configs ----


def _lora(params: dict[str, Any], ctx: Context):
    from peft import LoraConfig

    init = params["init_lora_weights"]
    if ctx.for_counting and init in CONVERTED_INITS:
        init = "default"  # same shapes and counts; these read real weights
    return LoraConfig(
        r=params["r"],
        lora_alpha=params["lora_alpha"],
        lora_dropout=params["lora_dropout"],
        target_modules=list(params["target_modules"]),
        use_dora=params["use_dora"],
        use_rslora=params["use_rslora"],
        init_lora_weights=True if init == "default" else init,
        bias="none",
        task_type=ctx.task_type,
    )


def _adalora(params: dict[str, Any], ctx: Context):
    from peft import AdaLoraConfig

    steps = max(ctx.total_steps, 3)
    return AdaLoraConfig(
        init_r=params["init_r"],
        target_r=params["target_r"],
        lora_alpha=params["lora_alpha"],
        lora_dropout=params["lora_dropout"],
        target_modules=list(params["target_modules"]),
        total_step=steps,
        # The budget schedule: warm up, prune ranks, then hold (fractions of the run).
        tinit=int(steps * params["warmup_fraction"]),
        tfinal=int(steps * params["final_fraction"]),
        deltaT=params["deltaT"],
        task_type=ctx.task_type,
    )


def _feedforward_within_targets(values: dict[str, Any]) -> None:
    extra = sorted(set(values["feedforward_modules"]) - set(values["target_modules"]))
    if extra:
        raise SpecError(
            f"method_params.feedforward_modules: {', '.join(extra)} must also be in target_modules"
        )


def _direct(config_name: str) -> Callable[[dict[str, Any], Context], Any]:
    """A PEFT config made from the fields as they are: their names are PEFT's own."""

    def build(params: dict[str, Any], ctx: Context):
        import peft

        values = {k: list(v) if isinstance(v, list | tuple) else v for k, v in params.items()}
        if values.get("target_modules") is None:  # PEFT's own default for the model type
            values = {k: v for k, v in values.items() if v is not None}
        return getattr(peft, config_name)(**values, task_type=ctx.task_type)

    return build


def _prompt_tuning(params: dict[str, Any], ctx: Context):
    from peft import PromptTuningConfig

    from_text = params["prompt_tuning_init"] == "text" and not ctx.for_counting
    if params["prompt_tuning_init"] == "text" and not params["prompt_tuning_init_text"].strip():
        raise SpecError("method_params.prompt_tuning_init_text: give the text to start from")
    return PromptTuningConfig(
        num_virtual_tokens=params["num_virtual_tokens"],
        prompt_tuning_init="TEXT" if from_text else "RANDOM",
        prompt_tuning_init_text=params["prompt_tuning_init_text"] if from_text else None,
        tokenizer_name_or_path=ctx.model_path if from_text else None,
        task_type=ctx.task_type,
    )


def _qlora_quantization(params: dict[str, Any]) -> dict[str, Any]:
    if params["bits"] == 8:
        return {"load_in_8bit": True}
    return {
        "load_in_4bit": True,
        "bnb_4bit_quant_type": params["quant_type"],
        "bnb_4bit_use_double_quant": params["double_quant"],
    }


# ---- selective and full: which base weights train ----


def _select(model, params: dict[str, Any]) -> list[str]:
    """Freeze the base, unfreeze the chosen part; returns the names of what trains."""
    import torch

    names: list[str]
    mode = params["train"]
    named = dict(model.named_parameters())
    # Tied weights (lm_head and embed_tokens) are one tensor listed under its first name.
    canonical = {id(p): n for n, p in named.items()}
    aliases = {n: canonical[id(p)] for n, p in model.named_parameters(remove_duplicate=False)}
    if mode == "top_layers":
        blocks = _layer_stack(model)
        if blocks is None:
            raise SpecError("method_params.train: top_layers needs a model with a stack of layers")
        prefix, count = blocks
        if params["top_layers"] > count:
            raise SpecError(
                f"method_params.top_layers: the model has {count} layers, "
                f"got {params['top_layers']}"
            )
        keep = {f"{prefix}.{i}." for i in range(count - params["top_layers"], count)}
        names = [n for n in named if any(n.startswith(k) for k in keep)]
    elif mode == "names":
        wanted = params["module_names"]
        names = list(
            dict.fromkeys(aliases[n] for n in aliases if any(w in n.split(".") for w in wanted))
        )
    elif mode == "bias":
        names = [n for n in named if n.endswith(".bias")]
    else:  # norm
        norms = [
            m
            for m in model.modules()
            if isinstance(m, torch.nn.LayerNorm) or type(m).__name__.endswith("RMSNorm")
        ]
        ids = {id(p) for m in norms for p in m.parameters(recurse=False)}
        names = [n for n, p in named.items() if id(p) in ids]
    if not names:
        what = {
            "names": f"named {', '.join(params['module_names'])}",
            "bias": "that are biases (this model has none: BitFit needs one that does)",
        }.get(mode, "to train")
        raise SpecError(f"method_params.train: the model has no parameters {what}")
    chosen = set(names)
    for name, param in named.items():
        param.requires_grad_(name in chosen)
    return names


def _layer_stack(model) -> tuple[str, int] | None:
    """The model's main stack of repeated blocks: (its name, its length), the longest list."""
    import torch

    stacks = [
        (name, len(module))
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.ModuleList) and len(module) > 0
    ]
    return max(stacks, key=lambda s: s[1]) if stacks else None


def _full(model, params: dict[str, Any]) -> list[str]:
    for param in model.parameters():
        param.requires_grad_(True)
    return [n for n, _ in model.named_parameters()]


# PEFT's combination types for LoRA, in the words the UI shows. "cat" and "svd" are exact (cat
# grows the rank to the sum, svd cuts it back); the rest work on the A and B matrices directly,
# which PEFT itself calls a rough approximation for "linear".
COMBINATIONS: dict[str, str] = {
    "linear": "weighted sum of A and B (same rank; fast, approximate)",
    "cat": "concatenated ranks (exact weighted sum; rank = sum of ranks)",
    "svd": "exact weighted sum, cut back to a rank by SVD",
    "ties": "TIES: trim small changes, elect a sign, merge (same rank)",
    "ties_svd": "TIES on the full deltas, then SVD",
    "dare_linear": "DARE: drop changes at random, rescale, sum (same rank)",
    "dare_ties": "DARE, then TIES sign election (same rank)",
    "dare_linear_svd": "DARE on the full deltas, then SVD",
    "dare_ties_svd": "DARE + TIES on the full deltas, then SVD",
    "magnitude_prune": "keep the largest changes, sum (same rank)",
    "magnitude_prune_svd": "magnitude pruning on the full deltas, then SVD",
}
_VIRTUAL_INPUTS = "their virtual tokens are extra inputs, not changes to weights"
_SOFT_PROMPTS = (
    "soft prompts (prompt, prefix, p-tuning) add virtual tokens, not weight changes, so there is "
    "nothing to add up"
)

METHODS: dict[str, Method] = {
    m.id: m
    for m in (
        Method(
            "lora",
            "LoRA",
            "reparameterization",
            "Low-rank update matrices beside the chosen linear layers; small, mergeable. "
            "DoRA, rsLoRA and PiSSA / OLoRA initialisation are options.",
            _LORA_FIELDS,
            peft_config=_lora,
            learning_rate=LEARNING_RATES["lora"],
            loraplus=True,
            peft_type="LORA",
            combines=tuple(COMBINATIONS),
            shares_base=True,
        ),
        Method(
            "qlora",
            "QLoRA",
            "reparameterization",
            "LoRA on a base loaded in 4-bit (NF4 / FP4) or 8-bit: a fraction of the memory.",
            (
                *_LORA_FIELDS[:4],
                Field("bits", "Base precision (bits)", int, 4, "4 or 8.", 4, 8, choices=(4, 8)),
                Field(
                    "quant_type", "4-bit type", str, "nf4", "NF4 or FP4.", choices=("nf4", "fp4")
                ),
                Field("double_quant", "Double quantisation", bool, True, "Quantize the scales."),
            ),
            peft_config=lambda p, ctx: _lora(
                {**p, "use_dora": False, "use_rslora": False, "init_lora_weights": "default"}, ctx
            ),
            quantization=_qlora_quantization,  # merged into a full-precision copy of the base
            learning_rate=LEARNING_RATES["qlora"],
            loraplus=True,
            peft_type="LORA",
            combines=tuple(COMBINATIONS),
            shares_base=True,
        ),
        Method(
            "adalora",
            "AdaLoRA",
            "reparameterization",
            "LoRA whose rank budget moves during training to the layers that need it.",
            (
                Field(
                    "init_r", "Starting rank", int, 12, "Rank of each layer at the start.", 1, 512
                ),
                Field("target_r", "Average final rank", int, 8, "Budget after pruning.", 1, 512),
                _ALPHA,
                _DROPOUT,
                _targets(),
                Field(
                    "warmup_fraction",
                    "Warm-up",
                    float,
                    0.1,
                    "Share of steps before pruning.",
                    0,
                    0.9,
                ),
                Field(
                    "final_fraction",
                    "Hold",
                    float,
                    0.3,
                    "Share of steps at the final budget.",
                    0,
                    0.9,
                ),
                Field("deltaT", "Reallocate every", int, 1, "Steps between budget moves.", 1, 1000),
            ),
            peft_config=_adalora,
            rank_budget=True,
            learning_rate=LEARNING_RATES["adalora"],
            peft_type="ADALORA",  # not shared: PEFT 0.21 loads a pruned one as "default" only
            why_not_combined=(
                "PEFT has no weighted combination for AdaLoRA adapters: each layer kept its "
                "own rank"
            ),
        ),
        Method(
            "loha",
            "LoHa",
            "reparameterization",
            "Low-rank Hadamard product of two factor pairs: more expressive per parameter.",
            _LYCORIS_FIELDS,
            peft_config=_direct("LoHaConfig"),
            learning_rate=LEARNING_RATES["loha"],
            peft_type="LOHA",
            why_not_combined="PEFT combines LoRA and IA3 adapters only, not LoHa",
            shares_base=True,
        ),
        Method(
            "lokr",
            "LoKr",
            "reparameterization",
            "Kronecker product of a small and a low-rank matrix: very few parameters.",
            _LYCORIS_FIELDS,
            peft_config=_direct("LoKrConfig"),
            learning_rate=LEARNING_RATES["lokr"],
            peft_type="LOKR",
            why_not_combined="PEFT combines LoRA and IA3 adapters only, not LoKr",
            shares_base=True,
        ),
        Method(
            "ia3",
            "IA3",
            "additive",
            "Learned scaling vectors on keys, values and the feed-forward: the fewest parameters.",
            (
                _targets(("k_proj", "v_proj", "down_proj")),
                Field(
                    "feedforward_modules",
                    "Feed-forward modules",
                    list,
                    ["down_proj"],
                    "Of the targets, those scaled at their input (feed-forward layers).",
                ),
            ),
            peft_config=_direct("IA3Config"),
            check=_feedforward_within_targets,
            learning_rate=LEARNING_RATES["ia3"],
            peft_type="IA3",
            combines=("linear",),
            shares_base=True,
        ),
        Method(
            "prompt_tuning",
            "Prompt tuning",
            "additive",
            "Trainable virtual tokens before the input; the model itself is untouched.",
            (
                _VIRTUAL,
                Field(
                    "prompt_tuning_init",
                    "Start from",
                    str,
                    "random",
                    "Random vectors, or the embeddings of a text.",
                    choices=("random", "text"),
                ),
                Field(
                    "prompt_tuning_init_text",
                    "Starting text",
                    str,
                    "",
                    "With 'text': e.g. a description of the task.",
                ),
            ),
            peft_config=_prompt_tuning,
            can_merge=False,
            learning_rate=LEARNING_RATES["prompt_tuning"],
            prompt_learning=True,
            peft_type="PROMPT_TUNING",
            why_not_combined=_SOFT_PROMPTS,
            why_not_merged=_VIRTUAL_INPUTS,
        ),
        Method(
            "prefix_tuning",
            "Prefix tuning",
            "additive",
            "Trainable keys and values put before every layer's attention.",
            (
                _VIRTUAL,
                Field(
                    "prefix_projection", "Projection", bool, False, "Learn the prefix via an MLP."
                ),
                Field(
                    "encoder_hidden_size", "Projection size", int, 512, "With projection.", 8, 16384
                ),
            ),
            peft_config=_direct("PrefixTuningConfig"),
            can_merge=False,
            learning_rate=LEARNING_RATES["prefix_tuning"],
            prompt_learning=True,
            peft_type="PREFIX_TUNING",
            why_not_combined=_SOFT_PROMPTS,
            why_not_merged=_VIRTUAL_INPUTS,
        ),
        Method(
            "p_tuning",
            "P-tuning",
            "additive",
            "Virtual tokens produced by a small trained encoder (MLP or LSTM).",
            (
                _VIRTUAL,
                Field(
                    "encoder_reparameterization_type",
                    "Encoder",
                    str,
                    "MLP",
                    "The network that produces the virtual tokens.",
                    choices=("MLP", "LSTM"),
                ),
                Field(
                    "encoder_hidden_size", "Encoder size", int, 256, "Its hidden size.", 8, 16384
                ),
            ),
            peft_config=_direct("PromptEncoderConfig"),
            can_merge=False,
            learning_rate=LEARNING_RATES["p_tuning"],
            prompt_learning=True,
            peft_type="P_TUNING",
            why_not_combined=_SOFT_PROMPTS,
            why_not_merged=_VIRTUAL_INPUTS,
        ),
        Method(
            "selective",
            "Selective",
            "selective",
            "Train only chosen base weights (the top layers, named modules, biases as in BitFit, "
            "or the norms); the rest stays frozen.",
            (
                Field(
                    "train",
                    "Train",
                    str,
                    "top_layers",
                    "Which weights train.",
                    choices=("top_layers", "names", "bias", "norm"),
                ),
                Field("top_layers", "Top layers", int, 2, "With top_layers: how many.", 1, 1000),
                Field(
                    "module_names",
                    "Module names",
                    list,
                    ["o_proj"],
                    "With names: modules whose weights train (e.g. o_proj, lm_head).",
                ),
            ),
            select=_select,
            writes="tensors",
            learning_rate=LEARNING_RATES["selective"],
            why_not_combined="selective runs write base weights, not a PEFT adapter",
        ),
        Method(
            "full",
            "Full fine-tuning",
            "full",
            "Every weight trains: the baseline the others are measured against; the most memory "
            "and a full-size copy of the model.",
            (),
            select=_full,
            writes="model",
            can_merge=False,  # nothing to merge: the result is a whole model
            learning_rate=LEARNING_RATES["full"],
            why_not_combined="full fine-tuning writes a whole model, not a PEFT adapter",
            why_not_merged="the run already wrote a whole model",
        ),
    )
}


def method_of_type(peft_type: str | None) -> Method | None:
    """The method that writes adapters of PEFT's type (the first: LoRA's adapters are LoRA's,
    not QLoRA's); None for a type no method writes."""
    return next((m for m in METHODS.values() if peft_type and m.peft_type == peft_type), None)


def get_method(method_id: Any) -> Method:
    if method_id not in METHODS:
        raise SpecError(f"method: unknown method {method_id!r} (known: {', '.join(METHODS)})")
    return METHODS[method_id]


# Attention projections under the names model families give them, most common first.
_ATTENTION_SETS = (
    ATTENTION_MODULES,
    ("q", "k", "v", "o"),  # T5
    ("query", "key", "value"),  # BERT, MiniLM
    ("c_attn", "c_proj"),  # GPT-2
    ("qkv_proj", "o_proj"),  # Phi-3
)


def fit_to_model(model, method: Method, params: dict[str, Any]) -> dict[str, Any]:
    """The registry's default targets name Llama-style layers: on a model without them, the
    defaults become that model's attention layers (IA3: PEFT's own choice for its type).
    Targets a user named are kept as given, so a wrong one is still reported."""
    defaults = {f.name: f.default for f in method.fields}
    if "target_modules" not in params or params["target_modules"] != defaults["target_modules"]:
        return params
    names = set(linear_names(model))
    if set(params["target_modules"]) <= names:
        return params
    if "feedforward_modules" in params:  # IA3's targets mix attention and feed-forward
        return {**params, "target_modules": None, "feedforward_modules": None}
    for candidate in _ATTENTION_SETS:
        if set(candidate) <= names:
            return {**params, "target_modules": list(candidate)}
    return params


def apply_method(model, method: Method, params: dict[str, Any], ctx: Context):
    """The model ready to train with the method: wrapped by PEFT, or with chosen weights free."""
    if method.select is not None:
        method.select(model, params)
        if ctx.task_type == "SEQ_CLS":  # a new classification head always trains
            for name, param in model.named_parameters():
                if name.split(".")[0] in ("classifier", "score"):
                    param.requires_grad_(True)
        return model
    from peft import get_peft_model

    params = fit_to_model(model, method, params)

    try:
        return get_peft_model(model, method.peft_config(params, ctx))
    except ValueError as exc:
        if "arget modules" in str(exc):  # "Target modules ... not found in the base model"
            raise SpecError(
                f"method_params.target_modules: {', '.join(params.get('target_modules') or [])} "
                f"not found in the model; its linear layers are: "
                f"{', '.join(linear_names(model))}"
            ) from None
        raise SpecError(f"method_params: {exc}") from None


def linear_names(model) -> list[str]:
    """Distinct short names of a model's linear layers (q_proj, ...), output head excluded."""
    import torch

    output = model.get_output_embeddings()
    return sorted(
        {
            name.rsplit(".", 1)[-1]
            for name, module in model.named_modules()
            if isinstance(module, torch.nn.Linear) and module is not output
        }
    )


def trainable_counts(model) -> tuple[int, int]:
    """(trainable, total) parameters, as PEFT counts them for PEFT models."""
    if hasattr(model, "get_nb_trainable_parameters"):
        return model.get_nb_trainable_parameters()
    total = sum(p.numel() for p in model.parameters())
    return sum(p.numel() for p in model.parameters() if p.requires_grad), total
