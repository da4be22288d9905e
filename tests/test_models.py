"""Choosing a base model: prepared names, local folders, Hub ids, and the offline case."""

from __future__ import annotations

import pytest

from finetune.models import (
    ModelError,
    hub_reachable,
    list_local_models,
    load_config,
    resolve_model,
)


def test_names_folders_and_hub_ids(tmp_path, tiny_model):
    models = tmp_path / "models"
    (models / "mine").mkdir(parents=True)
    (models / "mine" / "config.json").write_text("{}")
    (models / "not-a-model").mkdir()
    assert list_local_models(models) == ["mine"]
    assert resolve_model("mine", models) == str((models / "mine").resolve())
    assert resolve_model(str(tiny_model), models) == str(tiny_model.resolve())
    assert resolve_model("org/name", models) == "org/name"
    with pytest.raises(ModelError, match=r"not a model \(no config\.json\)"):
        resolve_model(str(models / "not-a-model"), models)
    with pytest.raises(ModelError, match="neither a model"):
        resolve_model("../../x y", models)


@pytest.mark.parametrize("env", [{"HF_HUB_OFFLINE": "1"}, {"HF_ENDPOINT": "http://127.0.0.1:9"}])
def test_an_unreachable_hub_is_said_at_once(monkeypatch, env):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert not hub_reachable(), "the probe answers before any download is tried"
    with pytest.raises(ModelError, match="could not fetch 'org/some-model' from the Hugging Face"):
        load_config("org/some-model")
