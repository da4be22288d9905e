"""Only a UserError reaches a person as its message; any other exception is an internal error
whose reference finds its traceback in the log."""

from __future__ import annotations

import logging
import re
import shutil

import gradio as gr
import pytest

import service
from errors import UserError
from finetune.data import DataError
from finetune.fields import SpecError
from finetune.models import ModelError
from storage.store import InUse, NotFound
from webui.blocks import build_app
from webui.errors import guarded


@pytest.mark.parametrize("cls", [UserError, SpecError, DataError, ModelError, NotFound, InUse])
def test_a_user_error_is_shown_as_it_is(cls):
    def handler():
        raise cls("training.batch_size: must be from 1 to 1024")

    with pytest.raises(gr.Error) as raised:
        guarded(handler)()
    assert raised.value.message == "training.batch_size: must be from 1 to 1024"


@pytest.mark.parametrize("exc", [ValueError("bad shape"), KeyError("lm_head"), RuntimeError("x")])
def test_any_other_exception_is_an_internal_error_with_its_log_line(exc, caplog):
    def handler():
        raise exc

    with caplog.at_level(logging.ERROR, logger="adapterlab"), pytest.raises(gr.Error) as raised:
        guarded(handler)()
    message = raised.value.message
    assert "bad shape" not in message and "lm_head" not in message
    (ref,) = re.findall(r"Internal error ([0-9a-f]{8})", message)
    (record,) = [r for r in caplog.records if ref in r.getMessage()]
    assert "in handler" in record.getMessage() and record.exc_info[1] is exc


def test_a_generator_handler_is_guarded_after_its_first_answers():
    def stream():
        yield "partial"
        raise SpecError("params.top_p: must be above 0 and at most 1")

    answers = guarded(stream)()
    assert next(answers) == "partial"
    with pytest.raises(gr.Error) as raised:
        next(answers)
    assert raised.value.message.startswith("params.top_p:")


def test_every_event_of_the_app_is_guarded(settings, tiny_model):
    shutil.copytree(tiny_model, settings.models_dir / "tiny")
    app = build_app(settings)
    handlers = [f.fn for f in app.fns.values() if f.fn is not None]
    assert len(handlers) > 50
    assert all(getattr(fn, "_guarded", False) for fn in handlers)


def test_service_refusals_are_user_errors(settings):
    """What the service raises for a user's mistake is a UserError, so the UI shows it."""
    with pytest.raises(UserError, match=r"params\.max_new_tokens"):
        service.generation_params({"max_new_tokens": 0})
    with pytest.raises(UserError, match="does not exist"):
        service.job_status(settings, "job-000000000000")
    with pytest.raises(UserError, match="lines"):
        service.job_log(settings, "job-000000000000", 0)


def test_an_upload_checked_with_a_model_without_chat_template_is_refused_plainly(
    settings, tiny_bert, tmp_path
):
    shutil.copytree(tiny_bert, settings.models_dir / "encoder")
    data = tmp_path / "chat.jsonl"
    data.write_text('{"prompt": "Hi?", "completion": "Hello."}\n' * 3, encoding="utf-8")
    with pytest.raises(UserError, match=r"options\.base_model: encoder has no chat template"):
        service.upload_dataset(settings, [str(data)], "chat", {"base_model": "encoder"})
    assert service.list_datasets(settings) == []
