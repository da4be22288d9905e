"""How an exception reaches a person: a UserError's message as it is; anything else is a bug,
logged with its traceback under a short reference that the message gives."""

from __future__ import annotations

import functools
import inspect
import logging
import secrets
from collections.abc import Callable

import gradio as gr

from errors import UserError

log = logging.getLogger("adapterlab")


def shown(exc: Exception, where: str) -> gr.Error:
    """The gr.Error to raise for `exc`, which `where` (an endpoint or handler) raised."""
    if isinstance(exc, gr.Error):
        return exc
    if isinstance(exc, UserError):
        return gr.Error(str(exc), print_exception=False)
    ref = secrets.token_hex(4)
    log.error("internal error %s in %s", ref, where, exc_info=exc)
    return gr.Error(
        f"Internal error {ref}: a bug in AdapterLab, not in what you gave. The app's log has "
        f"its traceback under 'internal error {ref}'.",
        print_exception=False,
    )


def guarded(fn: Callable) -> Callable:
    """fn (a function or a generator function) with its exceptions turned into what a user sees."""
    where = getattr(fn, "__name__", repr(fn))
    if inspect.isgeneratorfunction(fn):

        @functools.wraps(fn)
        def generator(*args, **kwargs):
            try:
                yield from fn(*args, **kwargs)
            except Exception as exc:
                raise shown(exc, where) from None

        generator._guarded = True
        return generator

    @functools.wraps(fn)
    def function(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            raise shown(exc, where) from None

    function._guarded = True
    return function


def guard_events(app: gr.Blocks) -> None:
    """Every event handler of the app (the API's endpoints included), guarded."""
    for block_fn in app.fns.values():
        if block_fn.fn is not None and not getattr(block_fn.fn, "_guarded", False):
            block_fn.fn = guarded(block_fn.fn)
