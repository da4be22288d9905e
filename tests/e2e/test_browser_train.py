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


@pytest.mark.e2e
def test_budget_defaults_and_search_in_chromium(launched_app: LaunchedApp, tmp_path: Path):
    in_chromium(launched_app, lambda page: budget_flow(page, launched_app), "failure-budget.png")


def budget_flow(page, app: LaunchedApp) -> None:
    """A first-timer's form: ten minutes or an epoch, the method's own learning rate, the
    options under "More training settings", and an auto settings search's plan."""
    page.goto(app.url)
    open_tab(page, "Train")
    expect(page.get_by_role("spinbutton", name="Time budget (minutes)")).to_have_value("10")
    rate = page.get_by_role("spinbutton", name="Learning rate", exact=True)
    expect(rate).to_have_value("0.002")
    plan = page.get_by_text(re.compile(r"Runs for 10 minutes or 1 epoch, whichever comes first"))
    expect(plan).to_be_visible()
    expect(page.get_by_text(re.compile(r"Effective batch: 8"))).to_be_visible()

    choose(page, "Method", "IA3")
    expect(rate).to_have_value("0.005")  # IA3's own, not LoRA's
    choose(page, "Method", "LoRA")
    expect(rate).to_have_value("0.002")

    page.get_by_text("More training settings").click()
    expect(page.get_by_role("combobox", name="Schedule", exact=True)).to_have_value("linear")
    accumulation = page.get_by_role("spinbutton", name="Gradient accumulation", exact=True)
    accumulation.fill("4")
    accumulation.press("Tab")
    expect(
        page.get_by_text(re.compile(r"Effective batch: 32 \(8 x 4 accumulated\)"))
    ).to_be_visible()
    expect(page.get_by_label("Share prompt prefix")).to_be_checked()
    no_error_shown(page)
    shot(page, "train-options.png")

    page.get_by_text("Settings search").click()
    choose(page, "Search", re.compile(r"^auto"))
    expect(page.get_by_text(re.compile(r"Auto settings: 6 trials share 30%"))).to_be_visible()
    no_error_shown(page)
    shot(page, "train-search.png")
