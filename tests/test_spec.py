"""Job spec validation: a table of bad specs, each refused with a message naming the field."""

from __future__ import annotations

import pytest

from finetune.fields import SpecError
from finetune.spec import parse_spec

GOOD = {"base_model": "SmolLM2-135M-Instruct", "dataset_id": "ds-0123456789ab", "method": "lora"}


def with_(**changes):
    spec = {**GOOD}
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(spec.get(key), dict):
            spec[key] = {**spec[key], **value}
        else:
            spec[key] = value
    return spec


def test_defaults_fill_in():
    spec = parse_spec(GOOD)
    assert spec.method_params == {
        "r": 16,
        "lora_alpha": 32,
        "lora_dropout": 0.05,
        "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"],
        "use_dora": False,
        "use_rslora": False,
        "init_lora_weights": "default",
    }
    assert spec.training["epochs"] == 1.0 and spec.training["max_steps"] is None
    assert spec.training["batch_size"] == 8


def test_max_steps_override_epochs_as_in_transformers():
    spec = parse_spec(with_(training={"max_steps": 5, "epochs": 2, "max_minutes": 3}))
    assert (spec.training["max_steps"], spec.training["epochs"]) == (5, None)
    assert spec.training["max_minutes"] == 3.0
    timed = parse_spec(with_(training={"max_minutes": 3}))
    assert timed.training["epochs"] is None, "a time budget alone: no epoch limit"


def test_json_string_and_values_are_typed():
    spec = parse_spec(
        '{"base_model": "m", "dataset_id": "d", "method_params": {"r": 8.0, "target_modules": '
        '"q_proj, v_proj"}, "training": {"max_steps": 5, "learning_rate": 1}}'
    )
    assert spec.method_params["r"] == 8 and isinstance(spec.method_params["r"], int)
    assert spec.method_params["target_modules"] == ["q_proj", "v_proj"]
    assert spec.training["learning_rate"] == 1.0 and spec.training["epochs"] is None


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        (with_(bogus=1), "bogus"),
        (with_(method="lorax"), "method"),
        (with_(base_model=""), "base_model"),
        ({"base_model": "m"}, "dataset_id"),
        (with_(method_params={"r": 0}), "method_params.r"),
        (with_(method_params={"r": 2.5}), "method_params.r"),
        (with_(method_params={"r": "8"}), "method_params.r"),
        (with_(method_params={"rank": 8}), "method_params.rank"),
        (with_(method_params={"lora_dropout": 1.5}), "method_params.lora_dropout"),
        (with_(method_params={"target_modules": []}), "method_params.target_modules"),
        (with_(method_params={"target_modules": [1]}), "method_params.target_modules"),
        (with_(training={"batch_size": 0}), "training.batch_size"),
        (with_(training={"learning_rate": -1}), "training.learning_rate"),
        (with_(training={"eval_fraction": 0.9}), "training.eval_fraction"),
        (with_(training={"max_length": True}), "training.max_length"),
        (with_(training="fast"), "training"),
        (with_(name=5), "name"),
        ("{not json", "spec"),
        ([1, 2], "spec"),
    ],
)
def test_bad_specs_name_the_field(spec, field):
    with pytest.raises(SpecError) as info:
        parse_spec(spec)
    assert str(info.value).startswith(f"{field}:"), str(info.value)


def test_every_request_parses_each_of_its_values_by_a_field():
    """A Request's FIELDS and its dataclass fields are one list, with the same defaults: a value
    added to one and not the other would be ignored or unparsed."""
    import dataclasses

    import service  # noqa: F401 (imports every request class)
    from finetune.fields import Request

    requests = Request.__subclasses__()
    assert len(requests) >= 4
    for cls in requests:
        declared = {f.name: f for f in dataclasses.fields(cls)}
        assert [f.name for f in cls.FIELDS] == list(declared), cls.__name__
        parsed = (
            cls.parse({}) if all(f.default is not None or f.optional for f in cls.FIELDS) else None
        )
        for f in cls.FIELDS:
            value = declared[f.name]
            default = (
                value.default_factory()
                if value.default_factory is not dataclasses.MISSING
                else value.default
            )
            if default is not dataclasses.MISSING:
                assert f.default == default or tuple(f.default) == tuple(default), (cls, f.name)
            if parsed is not None:
                assert getattr(parsed, f.name) == default, (cls, f.name)
        with pytest.raises(SpecError, match="unknown field"):
            cls.parse({"no_such_value": 1})
