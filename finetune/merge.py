"""Merging what a run trained into its base: one model folder that needs no PEFT to load."""

from __future__ import annotations

from pathlib import Path

from finetune.fields import SpecError
from finetune.generate import load_trained
from finetune.methods import get_method

_WHY_NOT = {
    "additive": "their virtual tokens are extra inputs, not changes to weights",
    "full": "the run already wrote a whole model",
}


def merge_into_base(
    base_path: str, folder: Path, method_id: str, out_dir: Path, trust_remote_code: bool = False
) -> Path:
    """Write base + adapter as one plain model folder, or refuse when the method cannot merge."""
    method = get_method(method_id)
    if not method.can_merge:
        why = _WHY_NOT.get(method.family, "the registry marks it so")
        raise SpecError(f"{method.label} adapters cannot be merged into the base: {why}.")
    from transformers import AutoTokenizer

    model = load_trained(base_path, folder, trust_remote_code)
    merged = model.merge_and_unload() if hasattr(model, "merge_and_unload") else model
    merged.save_pretrained(out_dir, safe_serialization=True)
    AutoTokenizer.from_pretrained(base_path, trust_remote_code=trust_remote_code).save_pretrained(
        out_dir
    )
    return out_dir
