"""Adapters from elsewhere and adapters combined: stored like ours, or refused with nothing left."""

from __future__ import annotations

import json
import shutil
import stat
import zipfile
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, PeftModel, PromptTuningConfig, get_peft_model
from transformers import AutoModelForCausalLM

import service
from finetune.fields import SpecError
from storage.store import Store
from tests.test_combine import make_adapter
from tests.tiny import build_tiny_model


def lora(r: int = 4) -> LoraConfig:
    return LoraConfig(r=r, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")


def zip_folder(folder: Path, target: Path, prefix: str = "my-adapter/", extra=()) -> Path:
    with zipfile.ZipFile(target, "w") as zf:
        for path in sorted(folder.iterdir()):
            zf.write(path, prefix + path.name)
        for name, data in extra:
            zf.writestr(name, data)
    return target


def assert_nothing_stored(settings, store: Store) -> None:
    assert store.list_adapters() == []
    assert not any((settings.data_dir / "adapters").glob("*"))
    assert not any((settings.data_dir / "tmp").glob("*"))


def test_an_imported_adapter_is_stored_and_answers_like_the_original(
    settings, store, tiny_model, tmp_path
):
    folder = make_adapter(tiny_model, tmp_path / "made", lora(), seed=1)
    zipped = zip_folder(folder, tmp_path / "a.zip", extra=[("my-adapter/optimizer.pt", b"x")])
    result = service.import_adapter(settings, str(zipped), str(tiny_model), "from elsewhere")
    assert result["origin"] == "imported" and result["method"] == "lora"
    assert result["ignored_files"] == ["my-adapter/optimizer.pt"]
    stored = store.adapter_dir(result["adapter_id"])
    assert {p.name for p in stored.iterdir()} >= {
        "adapter_config.json",
        "adapter_model.safetensors",
    }
    assert not (stored / "optimizer.pt").exists(), "only the adapter's own files are copied"
    weights = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model), lora())
    lora_params = sum(p.numel() for n, p in weights.named_parameters() if "lora_" in n)
    assert result["trainable_params"] == lora_params
    listed = {a["id"]: a for a in service.list_adapters(settings)}
    assert listed[result["adapter_id"]]["origin"] == "imported"

    # It answers as the original folder does in a plain PEFT script.
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        want = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model), folder)
        got = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model), stored)
        assert torch.equal(want(ids).logits, got(ids).logits)
    outputs = service.generate(
        settings, str(tiny_model), [None, result["adapter_id"]], "What is 12 + 11?"
    )["outputs"]
    assert [o["adapter"] for o in outputs] == [None, result["adapter_id"]]


@pytest.fixture(scope="module")
def wider_model(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("wide") / "wide", hidden=96)


def _refusals(tmp: Path, tiny_model: Path, wider_model: Path) -> list[tuple[str, Path, str]]:
    good = make_adapter(tiny_model, tmp / "good", lora(), seed=2)
    wide = make_adapter(wider_model, tmp / "wide", lora(), seed=3)
    bert_like = json.loads((good / "adapter_config.json").read_text())
    bert_like["target_modules"] = ["query", "value"]
    cases = []

    def case(name: str, message: str, build) -> None:
        path = tmp / f"{name}.zip"
        build(path)
        cases.append((name, path, message))

    def pickled(path):
        with zipfile.ZipFile(path, "w") as zf:
            zf.write(good / "adapter_config.json", "a/adapter_config.json")
            zf.writestr("a/adapter_model.bin", b"\x80\x04pickle")

    def escaping(path):
        zip_folder(good, path, extra=[("../../evil.txt", b"x")])

    def absolute(path):
        zip_folder(good, path, extra=[("/etc/evil", b"x")])

    def linked(path):
        zip_folder(good, path)
        with zipfile.ZipFile(path, "a") as zf:
            info = zipfile.ZipInfo("my-adapter/link")
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, "/etc/passwd")

    def other_architecture(path):
        zip_folder(wide, path)

    def other_modules(path):
        with zipfile.ZipFile(path, "w") as zf:
            zf.writestr("adapter_config.json", json.dumps(bert_like))
            zf.write(good / "adapter_model.safetensors", "adapter_model.safetensors")

    def not_json(path):
        with zipfile.ZipFile(path, "w") as zf:
            zf.writestr("adapter_config.json", "{not json")
            zf.write(good / "adapter_model.safetensors", "adapter_model.safetensors")

    def two(path):
        zip_folder(good, path, prefix="one/")
        with zipfile.ZipFile(path, "a") as zf:
            zf.write(good / "adapter_config.json", "two/adapter_config.json")

    case("pickle", "is a pickle, which can run code", pickled)
    case("dotdot", "points outside its folder", escaping)
    case("absolute", "points outside its folder", absolute)
    case("symlink", "is a symbolic link", linked)
    case("architecture", "has shape [4, 96]; this base needs [4, 64]", other_architecture)
    case("modules", "does not fit this base model", other_modules)
    case("json", "adapter_config.json is not valid JSON", not_json)
    case("two", "more than one adapter", two)
    case("none", "not a .zip archive", lambda p: p.write_bytes(b"PK but not really"))
    case(
        "empty",
        "has no adapter_config.json",
        lambda p: zipfile.ZipFile(p, "w").writestr("x.txt", "x"),
    )
    return cases


def test_imports_that_are_refused_leave_nothing(settings, store, tiny_model, wider_model, tmp_path):
    for name, path, message in _refusals(tmp_path, tiny_model, wider_model):
        with pytest.raises(SpecError, match=message.replace("[", r"\[").replace("]", r"\]")):
            service.import_adapter(settings, str(path), str(tiny_model))
        assert_nothing_stored(settings, store), name
    assert not (tmp_path.parent / "evil.txt").exists()


def test_a_soft_prompt_imports_and_an_unzipped_bomb_is_caught(
    settings, store, tiny_model, tmp_path
):
    config = PromptTuningConfig(num_virtual_tokens=4, task_type="CAUSAL_LM")
    folder = make_adapter(tiny_model, tmp_path / "prompt", config, seed=4)
    result = service.import_adapter(
        settings, str(zip_folder(folder, tmp_path / "p.zip")), str(tiny_model)
    )
    assert result["method"] == "prompt_tuning" and result["trainable_params"] == 4 * 64

    small = settings.__class__(**{**vars(settings), "max_upload_mb": 1})
    bomb = tmp_path / "bomb.zip"  # a few KB that unpack to 3 MB
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.write(folder / "adapter_config.json", "adapter_config.json")
        zf.writestr("adapter_model.safetensors", bytes(3 * 2**20))
    assert bomb.stat().st_size < 2**20
    with pytest.raises(SpecError, match=r"unpack to 3.0 MB; the limit is 1 MB"):
        service.import_adapter(small, str(bomb), str(tiny_model))
    assert len(store.list_adapters()) == 1


def combine_request(adapter_ids, weights, method="cat", **rest) -> service.CombineRequest:
    return service.CombineRequest.parse(
        {"adapter_ids": adapter_ids, "weights": weights, "method": method, **rest}
    )


def two_imported(settings, tiny_model, tmp_path) -> list[str]:
    ids = []
    for seed in (6, 7):
        folder = make_adapter(tiny_model, tmp_path / f"s{seed}", lora(), seed=seed)
        zipped = zip_folder(folder, tmp_path / f"s{seed}.zip")
        ids.append(service.import_adapter(settings, str(zipped), str(tiny_model))["id"])
    return ids


def test_combining_two_of_ours_stores_a_new_adapter(
    settings, store, tiny_model, tmp_path, run_queued
):
    ids = two_imported(settings, tiny_model, tmp_path)
    started = service.start_combine(settings, combine_request(ids, [0.5, 0.5], name="both"))
    assert started["status"] == "queued" and len(store.list_adapters()) == 2  # not yet made
    assert store.get_job(started["job_id"]).kind == "combine"
    assert run_queued(settings) == 1  # in a child process: the web process loads no model
    made = service.combined_adapter(settings, started["job_id"])
    assert made["origin"] == "combined" and made["name"] == "both" and made["r"] == 8
    folder = store.adapter_dir(made["adapter_id"])
    recipe = json.loads((folder / "combined.json").read_text())
    assert [s["adapter_id"] for s in recipe["sources"]] == ids
    assert "both" in (folder / "README.md").read_text()
    outputs = service.generate(settings, str(tiny_model), [made["adapter_id"]], "What is 1 + 2?")
    assert outputs["outputs"][0]["text"] is not None

    jobs = len(store.list_jobs())
    with pytest.raises(SpecError, match="one weight per adapter"):
        combine_request(ids, [1.0])
    with pytest.raises(LookupError):
        service.start_combine(settings, combine_request([ids[0], "ad-000000000000"], [1, 1]))
    before = len(store.list_adapters())
    with pytest.raises(SpecError, match="method: must be one of"):
        combine_request(ids, [1, 1], "average")
    with pytest.raises(SpecError, match="weights: must be a list of numbers"):
        combine_request(ids, ["a", "b"])
    with pytest.raises(SpecError, match="adapter_ids: a value is required"):
        service.CombineRequest.parse({"weights": [1, 1]})
    with pytest.raises(SpecError, match="density: must be above 0"):
        service.start_combine(settings, combine_request(ids, [1, 1], "ties", density=1.5))
    assert len(store.list_adapters()) == before and len(store.list_jobs()) == jobs


def test_a_combine_job_whose_adapter_went_away_fails_saying_which(
    settings, store, tiny_model, tmp_path, run_queued
):
    ids = two_imported(settings, tiny_model, tmp_path)
    job_id = service.start_combine(settings, combine_request(ids, [1, 1]))["job_id"]
    shutil.rmtree(store.adapter_dir(ids[1]))  # after it was queued, before it ran
    run_queued(settings)
    job = store.get_job(job_id)
    assert job.state == "failed" and ids[1] in job.error
    with pytest.raises(SpecError, match=f"Not combined: .*{ids[1]}"):
        service.combined_adapter(settings, job_id)
    assert len(store.list_adapters()) == 2 and "folder is missing" in job.error


def test_push_to_hub_says_what_is_missing(settings, tiny_model, tmp_path, monkeypatch, offline_hub):
    folder = make_adapter(tiny_model, tmp_path / "p", lora(), seed=8)
    adapter_id = service.import_adapter(
        settings, str(zip_folder(folder, tmp_path / "p.zip")), str(tiny_model)
    )["id"]
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # no token stored by a login
    monkeypatch.delenv("HF_TOKEN", raising=False)
    with pytest.raises(SpecError, match="repo_id: give the Hub repo as owner/name"):
        service.push_to_hub(settings, adapter_id, "../up")
    with pytest.raises(SpecError, match="No Hub token is configured: set HF_TOKEN"):
        service.push_to_hub(settings, adapter_id, "me/my-adapter")
    monkeypatch.setenv("HF_TOKEN", "hf_not_a_real_token")
    with pytest.raises(SpecError, match="The Hub is not reachable from this machine"):
        service.push_to_hub(settings, adapter_id, "me/my-adapter")


def test_adapters_that_would_rewrite_the_base_or_are_damaged_are_refused(
    settings, store, tiny_model, tmp_path
):
    folder = make_adapter(tiny_model, tmp_path / "a", lora(), seed=9)
    config = json.loads((folder / "adapter_config.json").read_text())
    pissa = tmp_path / "pissa"
    pissa.mkdir()
    (pissa / "adapter_config.json").write_text(json.dumps({**config, "init_lora_weights": "pissa"}))
    (pissa / "adapter_model.safetensors").write_bytes(
        (folder / "adapter_model.safetensors").read_bytes()
    )
    with pytest.raises(SpecError, match="pissa start unconverted: loading it would rewrite"):
        service.import_adapter(
            settings, str(zip_folder(pissa, tmp_path / "p.zip")), str(tiny_model)
        )

    damaged = zip_folder(folder, tmp_path / "d.zip")
    data = bytearray(damaged.read_bytes())
    offset = data.find(b"lora_A") + 200  # inside the weights file's stored bytes
    data[offset] ^= 0xFF
    damaged.write_bytes(bytes(data))
    with pytest.raises(SpecError, match="is damaged"):
        service.import_adapter(settings, str(damaged), str(tiny_model))
    assert_nothing_stored(settings, store)

    (folder / "recipe.json").write_text('{"base_model": "someone/else", "method": "full"}')
    made = service.import_adapter(
        settings, str(zip_folder(folder, tmp_path / "r.zip")), str(tiny_model)
    )
    assert not (store.adapter_dir(made["adapter_id"]) / "recipe.json").exists()
    assert "my-adapter/recipe.json" in made["ignored_files"], "never trusted to train further"
