"""Adapters trained elsewhere: a PEFT adapter folder in a .zip, unpacked safely and checked against
the base it is meant for (safetensors only, every weight present with the shape the base needs)."""

from __future__ import annotations

import json
import math
import stat
import zipfile
import zlib
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath

from finetune.fields import SpecError
from finetune.methods import METHODS, method_of_type
from finetune.train import LABELS_FILE

CONFIG = "adapter_config.json"
WEIGHTS = "adapter_model.safetensors"
# Copied; anything else is not. A recipe.json is not: it would be trusted to train further.
KEPT = (CONFIG, WEIGHTS, "README.md", LABELS_FILE)
# LoRA starts that rewrite the base's own weights when the adapter is loaded: an adapter saved
# with one unconverted would change the base that the playground shares between adapters.
REWRITES_BASE = ("pissa", "olora", "corda", "loftq", "eva")
PICKLES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
MAX_ENTRIES = 10_000
CHUNK = 1 << 20


@dataclass(frozen=True)
class Checked:
    method: str
    peft_type: str
    trainable_params: int
    total_params: int
    warnings: list[str] = field(default_factory=list)


def unpack_adapter_zip(zip_path: Path, out_dir: Path, max_bytes: int) -> list[str]:
    """Copy the adapter's files from the zip into out_dir (created); returns the names of the
    entries left out. Refuses unsafe paths, links, pickled weights and oversized contents."""
    try:
        archive = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError):
        raise SpecError("The file is not a .zip archive.") from None
    with archive:
        infos = archive.infolist()
        if len(infos) > MAX_ENTRIES:
            raise SpecError(f"The zip has {len(infos):,} entries; at most {MAX_ENTRIES:,}.")
        files = {}
        for info in infos:
            path = _safe_path(info)
            if not info.is_dir():
                files[path] = info
        configs = [p for p in files if p.name == CONFIG]
        if not configs:
            raise SpecError(f"The zip has no {CONFIG}: it is not a PEFT adapter folder.")
        if len(configs) > 1:
            listed = ", ".join(str(p) for p in sorted(configs)[:3])
            raise SpecError(f"The zip holds more than one adapter ({listed}); zip one only.")
        root = configs[0].parent
        inside = {p.relative_to(root): info for p, info in files.items() if p.parent == root}
        pickled = sorted(str(p) for p in inside if p.suffix.lower() in PICKLES)
        if PurePosixPath(WEIGHTS) not in inside:
            if pickled:
                raise SpecError(
                    f"{pickled[0]} is a pickle, which can run code when loaded: AdapterLab loads "
                    f"only safetensors. Save the adapter with safe_serialization=True ({WEIGHTS})."
                )
            raise SpecError(f"The zip has no {WEIGHTS} beside {CONFIG}.")
        kept = {p: info for p, info in inside.items() if str(p) in KEPT}
        declared = sum(info.file_size for info in kept.values())
        if declared > max_bytes:
            raise SpecError(
                f"The adapter's files unpack to {declared / 2**20:.1f} MB; the limit is "
                f"{max_bytes / 2**20:.0f} MB."
            )
        out_dir.mkdir(parents=True)
        budget = max_bytes
        for path, info in kept.items():
            budget = _copy(archive, info, out_dir / path.name, budget)
        return sorted(
            str(p) for p in files if p.parent != root or str(p.relative_to(root)) not in KEPT
        )


def _safe_path(info: zipfile.ZipInfo) -> PurePosixPath:
    name = info.filename.replace("\\", "/")
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts or (path.parts and ":" in path.parts[0]):
        raise SpecError(f"The zip entry {info.filename!r} points outside its folder; refused.")
    if stat.S_ISLNK(info.external_attr >> 16):
        raise SpecError(f"The zip entry {info.filename!r} is a symbolic link; refused.")
    return path


def _copy(archive: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path, budget: int) -> int:
    """Copies one entry, counting the bytes really read (a zip may lie about its sizes)."""
    try:
        with archive.open(info) as source, target.open("wb") as out:
            while chunk := source.read(CHUNK):
                budget -= len(chunk)
                if budget < 0:
                    raise SpecError("The adapter's files unpack to more than the upload limit.")
                out.write(chunk)
    except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
        raise SpecError(f"The zip entry {info.filename!r} is damaged: {exc}") from None
    except RuntimeError as exc:  # zipfile's word for an encrypted entry
        raise SpecError(f"The zip entry {info.filename!r} cannot be read: {exc}") from None
    except NotImplementedError as exc:
        raise SpecError(f"The zip entry {info.filename!r} uses {exc}; re-zip it.") from None
    return budget


def check_adapter(folder: Path, base_path: str, trust_remote_code: bool = False) -> Checked:
    """The adapter fits the base: a config PEFT reads, of a type we can use, whose weights are all
    there with the shapes that PEFT gives this base for that config (built without weights)."""
    from peft import PeftConfig, get_peft_model
    from peft.utils import get_peft_model_state_dict
    from safetensors import SafetensorError, safe_open

    from finetune.counts import _meta_model
    from finetune.models import load_config
    from finetune.tasks import model_task

    try:
        raw = json.loads((folder / CONFIG).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SpecError(f"{CONFIG} is not valid JSON: {exc}") from None
    if not isinstance(raw, dict) or "peft_type" not in raw:
        raise SpecError(f"{CONFIG} has no peft_type: it is not a PEFT adapter config.")
    peft_type = str(raw["peft_type"])
    method = method_of_type(peft_type)
    if method is None:
        known = ", ".join(dict.fromkeys(m.peft_type for m in METHODS.values() if m.peft_type))
        raise SpecError(f"{peft_type} adapters are not supported here (supported: {known}).")
    try:
        config = PeftConfig.from_pretrained(str(folder))
    except Exception as exc:  # PEFT's own validation of the fields
        raise SpecError(f"{CONFIG} does not make a valid {peft_type} config: {exc}") from None
    init = str(getattr(config, "init_lora_weights", True)).lower()
    if init.startswith(REWRITES_BASE):
        raise SpecError(
            f"The adapter was saved with its {init} start unconverted: loading it would rewrite "
            "the base model's weights. Save it converted to plain LoRA (PEFT's "
            "path_initial_model_for_weight_conversion), then zip it again."
        )
    if getattr(config, "layer_replication", None):
        raise SpecError("The adapter replicates base layers (layer_replication); not supported.")
    warnings = []
    task = model_task(load_config(base_path, trust_remote_code))
    adapter_task = getattr(config.task_type, "value", config.task_type)
    if adapter_task and adapter_task != task:
        raise SpecError(
            f"The adapter is for task {adapter_task}; the chosen base model does {task}."
        )
    labels = _labels(folder)
    named = raw.get("base_model_name_or_path") or ""
    if named and Path(named).name != Path(base_path).name:
        warnings.append(f"The adapter names {named!r} as its base; it fits the chosen one.")

    base = _meta_model(base_path, trust_remote_code, labels)
    total = sum(p.numel() for p in base.parameters())
    try:
        model = get_peft_model(base, _for_shapes(config))
    except Exception as exc:
        raise SpecError(f"The adapter does not fit this base model: {exc}") from None
    expected = {k: tuple(v.shape) for k, v in get_peft_model_state_dict(model).items()}
    try:
        with safe_open(str(folder / WEIGHTS), "pt") as f:
            found = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, ValueError) as exc:
        raise SpecError(f"{WEIGHTS} is not a readable safetensors file: {exc}") from None
    missing = sorted(set(expected) - set(found))
    if missing:
        raise SpecError(
            f"The adapter lacks {len(missing)} weight(s) this base needs for its config, "
            f"e.g. {missing[0]}: it was made for another model."
        )
    extra = sorted(set(found) - set(expected))
    if extra:
        raise SpecError(f"The adapter has weights this base has no place for, e.g. {extra[0]}.")
    for key, shape in expected.items():
        if found[key] != shape:
            raise SpecError(
                f"Weight {key} has shape {list(found[key])}; this base needs {list(shape)}: "
                "the adapter was made for another model."
            )
    trainable = sum(math.prod(s) for s in found.values())
    return Checked(method.id, peft_type, trainable, total, warnings)


def _labels(folder: Path) -> list[str] | None:
    path = folder / LABELS_FILE
    if not path.is_file():
        return None
    labels = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
        raise SpecError(f"{LABELS_FILE} must be a JSON list of label names.")
    return labels


def _for_shapes(config):
    """The config with initialisations that read nothing (text, PiSSA, LoftQ, a tokenizer from
    the Hub): only the shapes are wanted."""
    changes = {}
    if getattr(config, "init_lora_weights", True) not in (True, False, "gaussian"):
        changes["init_lora_weights"] = True
    if hasattr(config, "prompt_tuning_init"):
        changes["prompt_tuning_init"] = "RANDOM"
    return replace(config, **changes) if changes else config
