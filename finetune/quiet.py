"""Silence library messages that read like instructions to our users but are not for them."""

from __future__ import annotations

import logging
import warnings


def quiet_library_logs() -> None:
    # bitsandbytes suggests `pip install kernels` on every import on a CPU; we do not need it.
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    # PEFT calls transformers' renamed is_gradient_checkpointing; nothing for a user to change.
    warnings.filterwarnings(
        "ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning
    )
