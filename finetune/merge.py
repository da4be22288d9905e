"""Merging what a run trained into its base: one model folder that needs no PEFT to load, checked
against the adapter model it came from."""

from __future__ import annotations

from pathlib import Path

from finetune.fields import SpecError
from finetune.generate import load_trained
from finetune.methods import get_method

DTYPES = ("float32", "bfloat16", "float16")
CHECK_PROMPTS = ("What is 12 + 30?", "Say hello.", "Name a colour.")
MAX_SHARD = "2GB"


def check_merge(method_id: str, dtype: str) -> None:
    method = get_method(method_id)
    if not method.can_merge:
        raise SpecError(
            f"{method.label} adapters cannot be merged into the base: {method.why_not_merged}."
        )
    if dtype not in DTYPES:
        raise SpecError(f"dtype: must be one of {', '.join(DTYPES)}; got {dtype!r}")


def merge_into_base(
    base_path: str,
    folder: Path,
    method_id: str,
    out_dir: Path,
    trust_remote_code: bool = False,
    dtype: str = "float32",
    prompts: tuple[str, ...] = CHECK_PROMPTS,
    max_shard_size: str = MAX_SHARD,
) -> dict:
    """Write base + adapter as one model folder (sharded safetensors in `dtype`), or refuse when
    the method cannot merge. Returns {max_logit_diff, max_logit, dtype, bytes, files}: the
    largest difference between the merged model's logits (in its dtype) and the adapter
    model's (float32) on `prompts`."""
    check_merge(method_id, dtype)
    import torch
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_path, trust_remote_code=trust_remote_code)
    # float32 whatever the device: the reference the merged model is checked against
    model = load_trained(base_path, folder, trust_remote_code, dtype=torch.float32).eval()
    inputs = [_inputs(model, tokenizer, p) for p in prompts]
    with torch.inference_mode():
        before = [model(**x).logits.float() for x in inputs]
        merged = model.merge_and_unload() if hasattr(model, "merge_and_unload") else model
        merged = merged.to(getattr(torch, dtype))
        after = [merged(**x).logits.float() for x in inputs]
    diff = max(float((a - b).abs().max()) for a, b in zip(after, before, strict=True))
    scale = max(float(b.abs().max()) for b in before)
    merged.save_pretrained(out_dir, safe_serialization=True, max_shard_size=max_shard_size)
    tokenizer.save_pretrained(out_dir)
    files = sorted(p.name for p in out_dir.iterdir())
    if any(name.endswith((".bin", ".pt")) for name in files):  # safetensors only, always
        raise SpecError("The merged model was not written as safetensors.")
    return {
        "max_logit_diff": diff,
        "max_logit": scale,
        "dtype": dtype,
        "bytes": sum(p.stat().st_size for p in out_dir.iterdir()),
        "files": files,
    }


def _inputs(model, tokenizer, prompt: str) -> dict:
    import torch

    if getattr(tokenizer, "chat_template", None):
        inputs = dict(
            tokenizer.apply_chat_template(
                [{"role": "user", "content": prompt}],
                add_generation_prompt=True,
                return_tensors="pt",
                return_dict=True,
            )
        )
    else:
        inputs = dict(tokenizer(prompt, return_tensors="pt"))
    if model.config.is_encoder_decoder:  # the decoder's first step
        inputs["decoder_input_ids"] = torch.tensor([[model.config.decoder_start_token_id]])
    return {
        k: v
        for k, v in inputs.items()
        if k != "token_type_ids" or "bert" in model.config.model_type
    }
