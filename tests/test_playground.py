"""Side by side: each column answers as that model alone would; the shared base never changes."""

from __future__ import annotations

import hashlib
import zipfile
from itertools import pairwise

import pytest
import torch
from peft import IA3Config, LoraConfig, PromptTuningConfig

import service
from finetune.generate import GenerationParams, _cut
from service.playground import PLAYGROUND
from storage.store import Store
from tests.test_combine import make_adapter

SAMPLING = {"max_new_tokens": 6, "temperature": 0.9, "top_p": 0.95, "seed": 7}
CONFIGS = {
    "lora-a": LoraConfig(r=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"),
    "lora-b": LoraConfig(r=8, target_modules=["k_proj", "o_proj"], task_type="CAUSAL_LM"),
    "ia3": IA3Config(target_modules=["k_proj", "down_proj"], feedforward_modules=["down_proj"]),
    "prompt": PromptTuningConfig(num_virtual_tokens=3, task_type="CAUSAL_LM"),
}


@pytest.fixture
def adapter_ids(settings, tiny_model, tmp_path) -> list[str]:
    ids = []
    for seed, (name, config) in enumerate(CONFIGS.items()):
        folder = make_adapter(tiny_model, tmp_path / name, config, seed=seed + 10)
        zipped = tmp_path / f"{name}.zip"
        with zipfile.ZipFile(zipped, "w") as zf:
            for path in folder.iterdir():
                zf.write(path, path.name)
        made = service.import_adapter(settings, str(zipped), str(tiny_model), name)
        ids.append(made["adapter_id"])
    PLAYGROUND.unload()
    yield ids
    PLAYGROUND.unload()


def base_digest() -> str:
    """A hash of the shared base's own weights (adapter weights left out)."""
    (loaded,) = PLAYGROUND._models.values()
    model = (
        loaded.model.get_base_model() if hasattr(loaded.model, "get_base_model") else loaded.model
    )
    digest = hashlib.sha256()
    for name, param in sorted(model.named_parameters()):
        if not any(part in name for part in ("lora_", "ia3_")):
            digest.update(name.encode())
            digest.update(param.detach().to(torch.float32).numpy().tobytes())
    return digest.hexdigest()


def test_side_by_side_equals_each_alone_and_the_base_is_untouched(
    settings, tiny_model, adapter_ids
):
    prompt = "What is 12 + 11?"
    columns = [None, *adapter_ids]
    together = service.compare(settings, prompt, columns, SAMPLING)["outputs"]
    assert [o["adapter"] for o in together] == columns
    assert all(o["tokens"] >= 1 and o["seconds"] > 0 for o in together)
    assert len({o["text"] for o in together}) > 1, "the adapters change the answers"
    digest = base_digest()

    # Switched back and forth, in another order: the base weights stay as they were.
    again = service.compare(settings, prompt, columns[::-1], SAMPLING)["outputs"]
    assert [o["text"] for o in again] == [o["text"] for o in together][::-1]
    assert base_digest() == digest

    for column, answer in zip(columns, together, strict=True):
        PLAYGROUND.unload()  # each model alone, freshly loaded
        alone = service.compare(settings, prompt, [column], SAMPLING, base_model=str(tiny_model))[
            "outputs"
        ]
        assert alone[0]["text"] == answer["text"], column


def test_answers_stream_and_chats_keep_their_history(settings, tiny_model, adapter_ids):
    model, (entry,) = service.entries(settings, [adapter_ids[0]])
    gen = service.generation_params({"max_new_tokens": 5})
    steps = list(service.stream_answer(settings, model, entry, "Hi", [], gen))
    assert [s["done"] for s in steps] == [False] * (len(steps) - 1) + [True]
    assert steps[-1]["tokens"] == len(steps) - 1, "one update per new token"
    texts = [s["text"] for s in steps[:-1]]
    assert all(b.startswith(a.strip()) for a, b in pairwise(texts))

    history = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": steps[-1]["text"]},
    ]
    followed = list(service.stream_answer(settings, model, entry, "And?", history, gen))
    fresh = list(service.stream_answer(settings, model, entry, "And?", [], gen))
    assert followed[-1]["done"] and fresh[-1]["done"]


def test_bad_compare_requests_say_what_is_wrong(settings, tiny_model, adapter_ids, tmp_path):
    cases = [
        (("", [None], None, str(tiny_model)), "Type a prompt first"),
        (("hi", [None], None, None), "base_model: name the base model"),
        (("hi", [*adapter_ids, adapter_ids[0]], None, None), "at most 4 adapters"),
        (("hi", [adapter_ids[0], adapter_ids[0]], None, None), "named twice"),
        (("hi", [None], {"top_k": 3}, str(tiny_model)), "params.top_k: unknown field"),
        (("hi", [None], {"stop": [""]}, str(tiny_model)), "params.stop: give a list"),
        (("hi", [None], {"top_p": 0}, str(tiny_model)), "params.top_p: must be above 0"),
        (("hi", ["ad-000000000000"], None, None), "does not exist"),
    ]
    for args, message in cases:
        with pytest.raises((ValueError, LookupError), match=message):
            service.compare(settings, *args)


def test_stop_strings_end_the_answer_before_them():
    assert _cut("12 + 11 = 23\nUser: next", ("User:",)) == "12 + 11 = 23"
    assert _cut("a ### b ## c", ("##", "###")) == "a"
    assert _cut("no stop here", ("###",)) == "no stop here"
    assert GenerationParams().stop == ()


def test_an_adapter_that_fails_to_load_leaves_no_half_changed_base(
    settings, tiny_model, adapter_ids, tmp_path
):
    """Weights that do not load: the error reaches the caller, and the base (which may already
    hold the new adapter's layers) is dropped, so the next answer loads it afresh."""
    store = Store(settings.data_dir)
    broken = store.adapter_dir(adapter_ids[1]) / "adapter_model.safetensors"
    good = service.compare(settings, "Hi", [None], SAMPLING, str(tiny_model))
    assert PLAYGROUND._models, "the base is loaded"
    broken.write_bytes(b"not safetensors")
    with pytest.raises(Exception):  # noqa: B017 (safetensors' own error type)
        service.compare(settings, "Hi", [adapter_ids[1]], SAMPLING)
    assert not PLAYGROUND._models, "the base it was loaded into is dropped"
    again = service.compare(settings, "Hi", [None], SAMPLING, str(tiny_model))
    assert again["outputs"][0]["text"] == good["outputs"][0]["text"]


def test_models_of_their_own_stay_under_the_memory_bound(settings, tiny_model, adapter_ids):
    """IA3 and the soft prompt each need a whole copy of the base; with room for the base and
    one copy, the older copy goes when the next is loaded, and each still answers rightly."""
    from finetune.generate import ModelCache

    # LoRA first: the shared base is then LoRA's, and IA3 and the soft prompt are copies.
    model, entries = service.entries(settings, [adapter_ids[0], *adapter_ids[2:]])
    gen = service.generation_params(SAMPLING)
    chat = [{"role": "user", "content": "Hi"}]
    free = ModelCache()
    wanted = [list(free.stream(model, e, chat, gen))[-1]["text"] for e in entries]
    assert [len(item.own) for item in free._models.values()] == [2], "no bound: both kept"

    bounded = ModelCache()
    list(bounded.stream(model, None, chat, gen))  # the base alone
    one_copy = bounded._held_bytes()
    bounded.max_bytes = int(2.5 * one_copy)  # room for the base and one copy, not two
    (loaded,) = bounded._models.values()
    got = []
    for entry in entries:
        got.append(list(bounded.stream(model, entry, chat, gen))[-1]["text"])
        if entry is not entries[0]:
            assert list(loaded.own) == [entry[0]], "the older copy made room"
        assert bounded._held_bytes() <= bounded.max_bytes
    assert got == wanted

    limited = settings.__class__(**{**vars(settings), "playground_memory_mb": 1})
    assert service.memory_bound(limited) == 2**20
    assert service.memory_bound(settings) > 2**20
