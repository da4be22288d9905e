"""Why a job failed, in words a user can act on: for an exception in the job's process, and
for the way that process ended."""

from __future__ import annotations

import signal

from errors import UserError
from storage.store import JobKind

# What to change when a job's process is killed for memory, by the job's kind.
OOM_ADVICE = {
    "train": "try QLoRA, a smaller batch size or max length, or activation checkpointing",
    "evaluate": "try fewer adapters at once, or fewer new tokens",
    "merge": "free memory (the merge holds the base model twice), or merge on a larger machine",
    "combine": "combine fewer adapters at once, or free memory for the base model",
}


def explain_exit(code: int, checkpoint: str | None = None, kind: str = "train") -> str:
    what = "training process" if kind == JobKind.TRAIN else f"{kind} process"
    then = (
        f" Resume it from its last checkpoint ({checkpoint}), or retry it."
        if checkpoint
        else (" It had no checkpoint yet: retry it." if kind == JobKind.TRAIN else " Retry it.")
    )
    if code < 0:
        name = signal.Signals(-code).name
        if -code == signal.SIGKILL:
            return (
                f"The {what} was killed ({name}), most often because the machine ran out of "
                f"memory: {OOM_ADVICE.get(kind, OOM_ADVICE['train'])}." + then
            )
        return f"The {what} was stopped by signal {name}." + then
    return f"The {what} exited with status {code} before reporting a result."


def plain_reason(exc: BaseException, kind: str = "train") -> str:
    """One sentence a user can act on, for the failures we know (kind: the job's kind)."""
    text = str(exc)
    if isinstance(exc, UserError):  # SpecError, DataError, ModelError, NotFound, ...
        return text
    if "out of memory" in text.lower() or isinstance(exc, MemoryError):
        where = "GPU" if "cuda" in text.lower() else "machine"
        if kind != JobKind.TRAIN:
            return f"The {kind} job ran out of memory on the {where}: {OOM_ADVICE[kind]}."
        advice = OOM_ADVICE["train"]
        return (
            f"The run ran out of memory on the {where}. {advice[0].upper()}{advice[1:]}, then "
            "resume it from its last checkpoint or retry it."
        )
    if isinstance(exc, IndexError) and "index out of range" in text:
        return (
            "The dataset's tokens do not fit the model: the tokenizer gives ids the model has no "
            "embedding for. Pick the tokenizer that belongs to this base model."
        )
    if isinstance(exc, OSError) and exc.errno == 28:
        return "The disk is full: free some space in the data dir, then resume or retry the job."
    if isinstance(exc, FileNotFoundError):
        return f"A file the job needs is missing: {exc.filename or text}."
    if type(exc).__name__ in ("LocalEntryNotFoundError", "OfflineModeIsEnabled"):
        return f"The model could not be downloaded (offline or unreachable Hub): {text}"
    failed = "Training failed" if kind == JobKind.TRAIN else f"The {kind} job failed"
    return f"{failed}: {type(exc).__name__}: {text}"
