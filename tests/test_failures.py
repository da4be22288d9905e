"""Failures in plain words: each known cause gets the sentence a user can act on."""

from __future__ import annotations

import errno
import signal

import pytest

from finetune.data import DataError
from finetune.models import ModelError
from jobs.failures import explain_exit, plain_reason

CASES = [
    (MemoryError(), ["out of memory on the machine", "QLoRA", "smaller batch", "resume"]),
    (
        RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"),
        ["out of memory on the GPU", "activation checkpointing"],
    ),
    (
        IndexError("index out of range in self"),
        ["tokenizer gives ids the model has no embedding for"],
    ),
    (OSError(errno.ENOSPC, "No space left on device"), ["disk is full", "resume or retry"]),
    (FileNotFoundError(errno.ENOENT, "gone", "/data/x.jsonl"), ["missing: /data/x.jsonl"]),
    (ModelError("no model 'nope' in the models dir"), ["no model 'nope'"]),
    (DataError("Row 3: empty"), ["Row 3: empty"]),
    (ValueError("odd"), ["Training failed: ValueError: odd"]),
]


@pytest.mark.parametrize(("exc", "words"), CASES, ids=[type(c[0]).__name__ for c in CASES])
def test_known_failures_read_plainly(exc, words):
    reason = plain_reason(exc)
    for word in words:
        assert word in reason, reason


def test_exits_say_what_happened_and_what_to_do():
    killed = explain_exit(-signal.SIGKILL, "trainer/checkpoint-40")
    assert "killed (SIGKILL)" in killed and "out of memory" in killed
    assert "Resume it from its last checkpoint (trainer/checkpoint-40)" in killed
    assert "no checkpoint yet: retry it" in explain_exit(-signal.SIGKILL, None)
    assert "stopped by signal SIGTERM" in explain_exit(-signal.SIGTERM, None)
    assert "exited with status 3" in explain_exit(3)


def test_jobs_that_do_not_train_are_told_in_their_own_words():
    assert "The merge process was killed (SIGKILL)" in explain_exit(-signal.SIGKILL, kind="merge")
    assert "holds the base model twice" in explain_exit(-signal.SIGKILL, kind="merge")
    assert "QLoRA" not in explain_exit(-signal.SIGKILL, kind="evaluate")
    assert explain_exit(-signal.SIGTERM, kind="evaluate").endswith("Retry it.")
    assert plain_reason(MemoryError(), "evaluate").startswith("The evaluate job ran out of memory")
    assert plain_reason(ValueError("odd"), "merge") == "The merge job failed: ValueError: odd"
