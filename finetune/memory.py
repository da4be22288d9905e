"""A pre-flight memory estimate for a run, from the model's config and the exact counts.

Peak memory of a training step is, to first order: the weights at their precision, the
trainable weights' gradients and AdamW's two states, the activations kept for the backward pass
(Korthikanti et al. 2022, "Reducing Activation Recomputation": per layer and token about
34 x hidden + 5 x heads x length bytes at 16 bits), the logits over the vocabulary in float32
with their gradient, and the runtime itself. It is an estimate: the Jobs tab shows it next to the
measured peak.
"""

from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass, field
from typing import Any

GIB = 2**30
RUNTIME_BYTES = {"cpu": int(0.7 * GIB), "cuda": int(0.6 * GIB)}  # interpreter, torch, CUDA context
ADAM_STATES = 2  # AdamW keeps two float32 moments per trainable weight


@dataclass(frozen=True)
class Device:
    kind: str  # "cuda" or "cpu"
    name: str
    total_bytes: int
    available_bytes: int
    bf16: bool = True  # a GPU with bfloat16 (Ampere and later)


def current_device() -> Device:
    """The device a job would run on now, and the memory it has free. The GPU is read through
    nvidia-smi: asking torch would create a CUDA context (about 0.5 GiB) in the web process."""
    import shutil
    import subprocess

    import torch

    smi = shutil.which("nvidia-smi")
    if smi and torch.cuda.is_available():
        query = "--query-gpu=name,memory.total,memory.free"
        with contextlib.suppress(OSError, subprocess.SubprocessError, ValueError):
            first = subprocess.run(
                [smi, query, "--format=csv,noheader,nounits"],
                capture_output=True,
                text=True,
                timeout=10,
                check=True,
            ).stdout.splitlines()[0]
            name, total, free = (part.strip() for part in first.split(","))
            bf16 = not any(old in name for old in ("T4", "V100", "P100", "K80", "P4"))
            return Device("cuda", name, int(total) * 2**20, int(free) * 2**20, bf16)
    import psutil

    memory = psutil.virtual_memory()
    return Device("cpu", "CPU (system memory)", memory.total, memory.available)


@dataclass(frozen=True)
class MemoryEstimate:
    weights: int
    gradients: int
    optimizer: int
    activations: int
    logits: int
    runtime: int
    device: Device
    advice: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return (
            self.weights
            + self.gradients
            + self.optimizer
            + self.activations
            + self.logits
            + self.runtime
        )

    @property
    def fits(self) -> bool:
        return self.total <= self.device.available_bytes

    def to_dict(self) -> dict[str, Any]:
        return {
            **{k: v for k, v in asdict(self).items() if k not in ("device", "advice")},
            "total": self.total,
            "device": asdict(self.device),
            "fits": self.fits,
            "advice": self.advice,
        }


def estimate_memory(
    config: Any,
    trainable: int,
    total: int,
    method: Any,
    method_params: dict[str, Any],
    training: dict[str, Any],
    device: Device,
    longest_row: int | None = None,
) -> MemoryEstimate:
    """Peak bytes of one training step; `trainable` and `total` are the exact counts.

    Batches are padded to their longest row, not to max_length: with the dataset's longest row
    in tokens (`longest_row`), the estimate is for the batch that holds it.
    """
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    hidden, layers = text.hidden_size, text.num_hidden_layers
    heads, vocab = text.num_attention_heads, text.vocab_size
    # bf16 where the GPU has it (as training loads the model), else float32
    precision = 2 if device.kind == "cuda" and device.bf16 else 4
    trains_base = method.select is not None  # selective / full: base weights train
    adapter = 0 if trains_base else trainable
    base = total - adapter

    embeddings = vocab * hidden * (1 if getattr(text, "tie_word_embeddings", True) else 2)
    bits = method_params.get("bits") if method.quantization else None
    if bits:  # linear layers at 4 or 8 bits (plus about 3% for the scales); embeddings, norms
        # and the head are cast to float32 for k-bit training
        weights = int((base - embeddings) * bits / 8 * 1.03) + embeddings * 4
    else:
        weights = base * precision
    weights += adapter * 4  # PEFT keeps adapter weights in float32

    state_bytes = precision if trains_base else 4  # base weights train in their own precision
    gradients = trainable * state_bytes
    optimizer = trainable * state_bytes * ADAM_STATES

    batch, length = training["batch_size"], min(training["max_length"], longest_row or 10**9)
    length += method_params.get("num_virtual_tokens", 0) if method.family == "additive" else 0
    tokens = batch * length
    # The 5 x heads x length term is the attention matrix, which eager attention keeps; SDPA
    # (transformers' default where it exists) does not.
    attention = 5 * heads * length if getattr(text, "_attn_implementation", "") == "eager" else 0
    per_layer = tokens * (34 * hidden + attention) * precision // 2
    if training.get("activation_checkpointing"):  # keep layer inputs; recompute one at a time
        activations = tokens * hidden * precision * layers + per_layer
    else:
        activations = per_layer * layers
    logits = tokens * vocab * 4 * 2  # float32 logits for the loss, and their gradient

    estimate = MemoryEstimate(
        weights=weights,
        gradients=gradients,
        optimizer=optimizer,
        activations=activations,
        logits=logits,
        runtime=RUNTIME_BYTES[device.kind],
        device=device,
    )
    if not estimate.fits:
        estimate.advice.extend(_advice(estimate, method, training, embeddings, base, precision))
    return estimate


def _advice(est: MemoryEstimate, method, training, embeddings, base, precision) -> list[str]:
    """What would bring the estimate down, largest saving first."""
    ideas: list[tuple[int, str]] = []
    if method.quantization is None:
        saved = est.weights - (int((base - embeddings) * 0.5 * 1.03) + embeddings * precision)
        ideas.append((saved, "QLoRA (the base in 4-bit)"))
    if training["batch_size"] > 1:
        half = (est.activations + est.logits) // 2
        ideas.append((half, f"batch size {training['batch_size'] // 2}"))
    if training["max_length"] > 64:
        ideas.append(
            ((est.activations + est.logits) // 2, f"max length {training['max_length'] // 2}")
        )
    if not training.get("activation_checkpointing"):
        ideas.append((int(est.activations * 0.8), "activation checkpointing"))
    return [
        f"{what} saves about {saved / GIB:.1f} GiB" for saved, what in sorted(ideas, reverse=True)
    ]
