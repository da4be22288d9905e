"""The Train tab in Chromium: each method shows its own fields, count, size and memory; an
encoder model turns the task into classification. Screenshot: tests/artifacts/train-methods.png.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from playwright import sync_api

from tests.e2e.conftest import LaunchedApp
from tests.e2e.test_browser import in_chromium, no_error_shown, open_tab, shot
from tests.e2e.test_browser_data import choose

expect = sync_api.expect


@pytest.mark.e2e
def test_methods_in_chromium(launched_app: LaunchedApp, tmp_path: Path):
    in_chromium(launched_app, lambda page: train_flow(page, launched_app), "failure-train.png")


def train_flow(page, app: LaunchedApp) -> None:
    page.goto(app.url)
    open_tab(page, "Train")
    counts = page.get_by_text(re.compile(r"Trainable parameters: [\d,]+"))
    expect(counts).to_be_visible()
    lora = counts.inner_text()

    choose(page, "Method", "IA3")
    expect(page.get_by_text(re.compile(r"^IA3 \(additive\)"))).to_be_visible()
    expect(page.get_by_text("Feed-forward modules", exact=True)).to_be_visible()
    expect(counts).not_to_have_text(lora)  # far fewer parameters than LoRA
    ia3 = int(re.search(r"Trainable parameters: ([\d,]+)", counts.inner_text())[1].replace(",", ""))
    assert 0 < ia3 < 200_000, ia3
    expect(page.get_by_text(re.compile(r"what it writes: [\d.,]+ KB"))).to_be_visible()
    expect(page.get_by_text(re.compile(r"Memory: about [\d.]+ GiB"))).to_be_visible()
    expect(page.get_by_role("spinbutton", name="Rank (r)", exact=True)).to_be_hidden()
    no_error_shown(page)
    shot(page, "train-methods.png")

    choose(page, "Base model", "all-MiniLM-L6-v2")
    expect(page.get_by_text("Task: sequence classification (text -> label).")).to_be_visible()
    no_error_shown(page)
    shot(page, "train-encoder.png")
