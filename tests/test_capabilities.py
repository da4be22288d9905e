"""What /list_methods says each method can do is what the actions do: combine, merge, import and
the playground's shared base, for every method in the registry (a new entry is tested here by
being added there)."""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

import pytest
import torch

import service
from finetune.methods import METHODS, Context, apply_method
from finetune.models import load_model
from finetune.train import save_trained
from service.playground import PLAYGROUND
from storage.store import Store

IDS = list(METHODS)
PROMPT = {"max_new_tokens": 2, "temperature": 0.0}


@pytest.fixture(scope="module")
def made(tiny_model, tmp_path_factory) -> Path:
    """Two adapters of every method (different seeds), as training writes them."""
    root = tmp_path_factory.mktemp("made")
    for method_id in IDS:
        method = METHODS[method_id]
        params = method.parse({})
        for seed in (0, 1):
            torch.manual_seed(seed)
            quantization = method.quantization(params) if method.quantization else None
            model, tokenizer = load_model(str(tiny_model), quantization=quantization)
            model = apply_method(model, method, params, Context(str(tiny_model), 10, "CAUSAL_LM"))
            with torch.no_grad():  # PEFT starts LoRA's B at zero: give every weight a change
                for p in model.parameters():
                    if p.requires_grad:
                        p.add_(torch.randn_like(p) * 0.01)
            save_trained(model, tokenizer, method, params, root / method_id / str(seed))
    return root


def stored(settings, made: Path, method_id: str, tiny_model: Path) -> list[str]:
    store = Store(settings.data_dir)
    ids = []
    for seed in ("0", "1"):
        staged = settings.data_dir / "tmp" / f"{method_id}-{seed}"
        shutil.copytree(made / method_id / seed, staged)
        adapter = store.add_adapter(
            staged, name=f"{method_id} {seed}", base_model=str(tiny_model), method=method_id
        )
        ids.append(adapter.id)
    return ids


def described(method_id: str) -> dict:
    return next(m for m in service.list_methods() if m["id"] == method_id)


@pytest.mark.parametrize("method_id", IDS)
def test_combine_does_what_list_methods_says(settings, made, tiny_model, method_id, run_queued):
    info = described(method_id)
    ids = stored(settings, made, method_id, tiny_model)

    def request(combination: str) -> service.CombineRequest:
        given = {"adapter_ids": ids, "weights": [0.6, 0.4], "method": combination}
        return service.CombineRequest.parse(given)

    if info["can_combine"]:
        assert info["combinations"]
        started = [service.start_combine(settings, request(c)) for c in info["combinations"][:2]]
        assert run_queued(settings) == len(started)
        for job in started:
            assert service.combined_adapter(settings, job["job_id"])["adapter_id"]
    else:
        assert info["combinations"] == []
        with pytest.raises(ValueError, match="cannot be combined"):
            service.start_combine(settings, request("linear"))


@pytest.mark.parametrize("method_id", IDS)
def test_merge_does_what_list_methods_says(settings, made, tiny_model, method_id):
    (adapter_id, _) = stored(settings, made, method_id, tiny_model)
    if described(method_id)["can_merge"]:
        assert service.start_merge(settings, adapter_id)["status"] == "queued"
    else:
        with pytest.raises(ValueError, match="cannot be merged"):
            service.start_merge(settings, adapter_id)


@pytest.mark.parametrize("method_id", IDS)
def test_import_does_what_list_methods_says(settings, made, tiny_model, tmp_path, method_id):
    info = described(method_id)
    archive = tmp_path / "adapter.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted((made / method_id / "0").iterdir()):
            zf.write(path, f"adapter/{path.name}")
    if info["can_import"]:
        result = service.import_adapter(settings, str(archive), str(tiny_model), "imported")
        assert result["method"] == info["imports_as"]
        assert result["peft_type"] == info["peft_type"]
    else:
        with pytest.raises(ValueError):
            service.import_adapter(settings, str(archive), str(tiny_model), "imported")
        assert Store(settings.data_dir).list_adapters() == []


@pytest.mark.parametrize("method_id", IDS)
def test_the_playground_shares_the_base_as_list_methods_says(settings, made, tiny_model, method_id):
    ids = stored(settings, made, method_id, tiny_model)
    service.unload()
    try:
        service.compare(settings, "Hi", [None, *ids], PROMPT)
        (held,) = PLAYGROUND.loaded()
        if described(method_id)["shares_base"]:
            assert sorted(held["adapters"]) == sorted(ids) and held["own_models"] == []
        else:
            assert held["adapters"] == [] and len(held["own_models"]) == 2
    finally:
        service.unload()
