"""The model card's snippet loads what a run wrote, for each task, and answers."""

from __future__ import annotations

import contextlib
import io
import re

import pytest
import yaml

from finetune.model_card import CARD, write_model_card
from finetune.spec import parse_spec
from finetune.train import train
from tests.test_methods import CLASSIFICATION_ROWS, LABELS, SEQ2SEQ_ROWS
from tests.test_train import Recorder
from tests.test_train_options import rows

CASES = {  # task -> (model fixture, rows, the class the snippet must load it with)
    "causal": ("tiny_model", None, "AutoModelForCausalLM"),
    "seq2seq": ("tiny_t5", SEQ2SEQ_ROWS, "AutoModelForSeq2SeqLM"),
    "classification": ("tiny_bert", CLASSIFICATION_ROWS, "AutoModelForSequenceClassification"),
}


@pytest.mark.parametrize("method_id", ["lora", "selective"])
@pytest.mark.parametrize("task", list(CASES))
def test_the_card_loads_what_was_trained_for_its_task(request, tmp_path, task, method_id):
    fixture, data, auto = CASES[task]
    model = request.getfixturevalue(fixture)
    training = {"max_steps": 2, "batch_size": 4, "max_length": 128, "eval_fraction": 0.0}
    spec = parse_spec(
        {
            "base_model": str(model),
            "dataset_id": "ds-0123456789ab",
            "method": method_id,
            "training": training,
            "name": "card test",
        }
    )
    out = tmp_path / "out"
    result = train(spec, data or rows(16), str(model), tmp_path / "w", out, Recorder())
    write_model_card(out, spec, result, str(model), "a test set", {"loss": 1.0}, "", result.task)

    text = (out / CARD).read_text()
    meta = yaml.safe_load(text.split("---")[1])
    assert meta["base_model"] == str(model) and "adapterlab" in meta["tags"]
    assert meta["library_name"] == ("peft" if method_id == "lora" else "transformers")
    (snippet,) = re.findall(r"```python\n(.*?)```", text, re.S)
    assert f"{auto}.from_pretrained" in snippet
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(snippet.replace("path/to/this/folder", str(out)), {})
    answer = printed.getvalue().strip()
    assert answer
    if task == "classification":
        assert answer in LABELS
