"""A user's whole flow, clicked through the launched app in Chromium.

Data (bundled sample) → Train (2 steps) → Jobs (until it succeeds) → Playground (base vs adapter)
→ Adapters (download the .zip through the page). One screenshot per tab in tests/artifacts.
"""

from __future__ import annotations

import re
import zipfile
from pathlib import Path

import pytest
from playwright import sync_api

from tests.e2e.conftest import ARTIFACTS, LaunchedApp

expect = sync_api.expect

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
VIEWPORT = {"width": 1400, "height": 1000}

# Seconds: the bundled model does ~1-2 s a step on a CPU at this size, plus loading and saving.
UI_TIMEOUT_S = 30
TRAIN_TIMEOUT_S = 240
GENERATE_TIMEOUT_S = 180


def ms(seconds: float) -> float:
    return seconds * 1000


def shot(page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / name), full_page=True)


def no_error_shown(page) -> None:
    """Gradio shows a handler's (or an input's) error as a toast: none may be up."""
    toasts = page.locator(".toast-body")
    errors = [t for t in toasts.all_inner_texts() if "error" in t.lower()]
    assert not errors, f"the page shows an error: {errors}"


def open_tab(page, name: str) -> None:
    tab = page.get_by_role("tab", name=name, exact=True)
    tab.click()
    expect(tab).to_have_attribute("aria-selected", "true")


def in_chromium(app: LaunchedApp, flow, failure_png: str, **context_options) -> None:
    """Run flow(page) in a fresh headless Chromium; on failure, a screenshot and the app log."""
    if not CHROMIUM.is_file():
        pytest.fail(f"no Chromium at {CHROMIUM}: `make test` installs Debian's chromium")
    expect.set_options(timeout=ms(UI_TIMEOUT_S))  # the timer and handlers share 2 busy cores
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport=VIEWPORT, **context_options)
            context.set_default_timeout(ms(UI_TIMEOUT_S))
            page = context.new_page()
            try:
                flow(page)
            except BaseException:
                shot(page, failure_png)
                print(f"--- app log (tail) ---\n{app.log.read_text()[-4000:]}")
                raise
        finally:
            browser.close()
            expect.set_options(timeout=5_000)  # Playwright's default, for any later test


@pytest.mark.e2e
def test_user_flow_in_chromium(launched_app: LaunchedApp, tmp_path: Path):
    in_chromium(
        launched_app,
        lambda page: user_flow(page, launched_app, tmp_path),
        "failure.png",
        accept_downloads=True,
    )


def user_flow(page, app: LaunchedApp, tmp_path: Path) -> None:
    page.goto(app.url)
    expect(page.get_by_role("tab", name="Data", exact=True)).to_be_visible()

    # 1. Data: the bundled arithmetic sample.
    open_tab(page, "Data")
    expect(page.get_by_role("combobox", name="Bundled sample")).to_have_value(
        re.compile("arithmetic", re.IGNORECASE)
    )
    page.get_by_role("button", name="Use this sample").click()
    summary = page.get_by_text(re.compile(r"2,000 training rows, 200 eval rows"))
    expect(summary).to_be_visible()
    expect(page.locator(".al-loss").first).to_be_visible()  # the answer tokens, marked
    expect(page.get_by_role("grid", name="Datasets")).to_contain_text("2000")
    shot(page, "tab-data.png")

    # 2. Train: a 2-step job on short sequences.
    open_tab(page, "Train")
    expect(page.get_by_role("combobox", name="Dataset", exact=True)).to_have_value(
        re.compile("2,000 rows")
    )
    for label, value in (("Max steps", "2"), ("Batch size", "2"), ("Max length (tokens)", "64")):
        field = page.get_by_role("spinbutton", name=label, exact=True)
        field.fill(value)
        field.press("Tab")
        expect(field).to_have_value(value)
    counts = page.get_by_text("Trainable parameters:")
    toast = page.locator(".toast-body")
    no_counts = "the Train tab shows no parameter count (the app log is printed below)"
    expect(counts.or_(toast).first, no_counts).to_be_visible(timeout=ms(60))
    no_error_shown(page)
    expect(counts, no_counts).to_be_visible()
    page.get_by_role("button", name="Start training").click()
    started = page.get_by_text(re.compile(r"Job job-\w+ is \w+"))
    refused = page.get_by_text("Not started.").or_(toast)
    expect(started.or_(refused).first).to_be_visible()
    no_error_shown(page)
    expect(refused).to_have_count(0)
    expect(started).to_be_visible()
    expect(started).to_contain_text("Follow it in the Jobs tab")
    job_id = re.search(r"job-\w+", started.inner_text()).group(0)
    shot(page, "tab-train.png")

    # 3. Jobs: the timer refreshes it until the job succeeds.
    open_tab(page, "Jobs")
    expect(page.get_by_role("combobox", name="Job", exact=True)).to_have_value(re.compile(job_id))
    expect(page.get_by_text(re.compile(r"succeeded · step 2 of 2"))).to_be_visible(
        timeout=ms(TRAIN_TIMEOUT_S)
    )
    expect(page.get_by_role("grid", name="Jobs")).to_contain_text(job_id)
    # The curve is drawn: a stroked line through two points at least (M…L…), with a legend.
    plot = page.get_by_label("Vega visualization", exact=True).first  # the loss plot comes first
    expect(plot).to_be_visible()
    expect(plot.locator("g.mark-line path[d*='L'][stroke]").first).to_be_attached()
    legend = plot.locator("g.role-legend-label text").first
    expect(legend).to_have_text("loss")
    # …and the legend is inside the plot's box, not clipped away (which line is which?).
    block = plot.locator("xpath=ancestor::div[contains(@class, 'block')][1]")
    legend_box, block_box = legend.bounding_box(), block.bounding_box()
    assert legend_box["y"] + legend_box["height"] <= block_box["y"] + block_box["height"], (
        f"the loss plot's legend is clipped: {legend_box} outside {block_box}"
    )
    expect(page.get_by_text('"dataset_id"', exact=False).first).to_be_attached()
    shot(page, "tab-jobs.png")

    # 4. Playground: the base model and the new adapter (picked first) answer the default prompt,
    # in columns, each with its time and speed.
    open_tab(page, "Playground")
    expect(page.get_by_role("textbox", name="Prompt", exact=True)).to_have_value(re.compile(r"\S"))
    page.get_by_role("button", name="Generate").click()
    summary = page.locator("table").filter(has_text="tokens/s").last
    expect(summary).to_contain_text("Base model", timeout=ms(GENERATE_TIMEOUT_S))
    adapter_id = re.search(r"ad-[0-9a-f]{12}", summary.inner_text()).group(0)
    rows = summary.locator("tbody tr")
    expect(rows).to_have_count(2)
    for i in range(2):
        seconds = rows.nth(i).locator("td").nth(1).inner_text()
        assert float(seconds) > 0, rows.nth(i).inner_text()
    answers = page.get_by_test_id("bot")
    expect(answers).to_have_count(2)
    for i in range(2):
        expect(answers.nth(i)).to_have_text(re.compile(r"\S"))
    shot(page, "tab-playground.png")

    # 5. Adapters: prepare the .zip and download it through the page.
    open_tab(page, "Adapters")
    expect(page.get_by_role("grid", name="Adapters")).to_contain_text(adapter_id)
    # Pick the adapter this flow trained (other tests may have added theirs).
    picker = page.get_by_role("combobox", name="Adapter", exact=True)
    picker.click()
    page.get_by_role("option", name=re.compile(adapter_id)).click()
    expect(picker).to_have_value(re.compile(adapter_id))
    page.get_by_role("button", name="Prepare .zip").click()
    # gr.File lists the file as a row: its name, then its size as the download link.
    row = page.get_by_role("row", name=re.compile(rf"^{adapter_id}\.zip"))
    link = row.get_by_role("link")
    expect(link).to_be_visible()
    with page.expect_download() as download_info:
        link.click()
    download = download_info.value
    assert download.suggested_filename.endswith(".zip"), download.suggested_filename
    zip_path = tmp_path / download.suggested_filename
    download.save_as(zip_path)
    with zipfile.ZipFile(zip_path) as zf:
        assert zf.testzip() is None
        names = set(zf.namelist())
        assert zf.getinfo(f"{adapter_id}/adapter_model.safetensors").file_size > 0
    expected = {f"{adapter_id}/adapter_config.json", f"{adapter_id}/adapter_model.safetensors"}
    assert expected <= names, names
    shot(page, "tab-adapters.png")
