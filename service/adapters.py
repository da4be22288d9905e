"""Adapters besides training and combining them: list, import one from a .zip, push, download.

A user's mistake raises a UserError with the message to show, and leaves nothing
behind.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Any

from config import Settings
from finetune.adapter_import import check_adapter, unpack_adapter_zip
from finetune.fields import SpecError
from finetune.model_card import CARD, write_card
from finetune.models import resolve_model
from storage.store import Adapter, Store, folder_bytes

IMPORTED_TEXT = (
    "Imported into AdapterLab from a .zip. Load it with `PeftModel.from_pretrained(base, folder)`."
)


def adapter_info(adapter: Adapter) -> dict[str, Any]:
    return {
        "id": adapter.id,
        "name": adapter.name,
        "base_model": adapter.base_model,
        "method": adapter.method,
        "origin": adapter.origin,
        "trainable_params": adapter.trainable_params,
        "total_params": adapter.total_params,
        "size_bytes": adapter.size_bytes,
        "job_id": adapter.job_id,
        "created_at": adapter.created_at,
    }


def import_adapter(
    settings: Settings, zip_path: str | Path, base_model: str, name: str | None = None
) -> dict[str, Any]:
    """A PEFT adapter folder zipped elsewhere, checked against base_model and stored like ours."""
    if not zip_path:
        raise SpecError("file: choose a .zip of a PEFT adapter folder first")
    path = Path(zip_path)
    if not path.is_file():
        raise SpecError("file: the upload is missing; choose the .zip again")
    if path.stat().st_size > settings.max_upload_mb * 2**20:
        raise SpecError(f"file: larger than the upload limit ({settings.max_upload_mb} MB)")
    model = resolve_model(base_model, settings.models_dir)
    store = Store(settings.data_dir)
    scratch = store.tmp_dir()
    try:
        staged = scratch / "adapter"
        ignored = unpack_adapter_zip(path, staged, settings.max_upload_mb * 2**20)
        checked = check_adapter(staged, model, settings.allow_remote_code)
        label = (name or "").strip() or f"imported {path.stem}"
        if not (staged / CARD).exists():
            write_card(staged, label[:200], base_model, IMPORTED_TEXT)
        adapter = store.add_adapter(
            staged,
            job_id=None,
            name=label[:200],
            base_model=base_model,
            method=checked.method,
            trainable_params=checked.trainable_params,
            total_params=checked.total_params,
            size_bytes=folder_bytes(staged),
            origin="imported",
        )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return {
        "adapter_id": adapter.id,
        "peft_type": checked.peft_type,
        "warnings": checked.warnings,
        "ignored_files": ignored,
        **adapter_info(adapter),
    }


def push_to_hub(
    settings: Settings, adapter_id: str, repo_id: str, private: bool = True
) -> dict[str, Any]:
    """Upload the adapter folder to a Hub model repo (created if new) with the configured token
    (HF_TOKEN, or a `huggingface-cli login`) -> {repo_id, url}."""
    import huggingface_hub

    from finetune.models import _HUB_ID, hub_reachable

    store = Store(settings.data_dir)
    adapter = store.get_adapter(adapter_id)
    if not isinstance(repo_id, str) or not _HUB_ID.match(repo_id.strip()):
        raise SpecError(f"repo_id: give the Hub repo as owner/name, got {repo_id!r}")
    repo_id = repo_id.strip()
    token = huggingface_hub.get_token()
    if not token:
        raise SpecError(
            "No Hub token is configured: set HF_TOKEN (a token with write access) in the "
            "app's environment, or run `huggingface-cli login`, then push again."
        )
    if not hub_reachable():
        raise SpecError(
            "The Hub is not reachable from this machine (offline, or HF_HUB_OFFLINE is set): "
            "download the .zip instead and upload it from a connected machine."
        )
    api = huggingface_hub.HfApi(token=token)
    try:
        api.create_repo(repo_id, private=bool(private), exist_ok=True, repo_type="model")
        commit = api.upload_folder(
            folder_path=str(store.adapter_dir(adapter.id)),
            repo_id=repo_id,
            commit_message=f"AdapterLab: {adapter.name}",
        )
    except Exception as exc:  # an HTTP error's message says what the Hub refused
        raise SpecError(f"The Hub refused the upload: {exc}") from None
    return {"repo_id": repo_id, "url": f"https://huggingface.co/{repo_id}", "commit": str(commit)}


def list_adapters(settings: Settings) -> list[dict[str, Any]]:
    return [adapter_info(a) for a in Store(settings.data_dir).list_adapters()]


def download_adapter(settings: Settings, adapter_id: str) -> Path:
    """The adapter folder as a .zip (adapter files, model card, recipe), built once."""
    store = Store(settings.data_dir)
    adapter = store.get_adapter(adapter_id)
    target = store.download_path(f"{adapter.id}.zip")
    return zip_once(store.adapter_dir(adapter.id), target, adapter.id)


def zip_once(folder: Path, target: Path, root: str) -> Path:
    """folder as target (a .zip whose entries sit under root/), unless it was built before."""
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        # A unique partial file: two downloads at once must not write into the same one.
        fd, partial = tempfile.mkstemp(dir=target.parent, suffix=".part")
        os.close(fd)
        try:
            # Weights barely compress: store them as they are (a merged model is large).
            with zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED) as zf:
                for path in sorted(folder.rglob("*")):
                    if path.is_file():
                        method = zipfile.ZIP_STORED if path.suffix == ".safetensors" else None
                        zf.write(path, f"{root}/{path.relative_to(folder)}", method)
            os.replace(partial, target)
        finally:
            Path(partial).unlink(missing_ok=True)
    return target
