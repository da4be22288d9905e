"""The adapter hub in Chromium: the base and two adapters side by side in the Playground, an
evaluation in the Compare tab, a merge downloaded from the Adapters tab.
Screenshots: hub-playground.png, hub-compare.png, hub-merge.png."""

from __future__ import annotations

import contextlib
import re
import time
import zipfile
from pathlib import Path

import pytest
from gradio_client import Client
from playwright import sync_api

from tests.e2e.conftest import LaunchedApp, api_client
from tests.e2e.test_browser import (
    GENERATE_TIMEOUT_S,
    TRAIN_TIMEOUT_S,
    in_chromium,
    ms,
    no_error_shown,
    open_tab,
    shot,
)

expect = sync_api.expect


def train_two(client: Client) -> list[str]:
    """A LoRA and an IA3 adapter, 2 short steps each, through the API (once per app)."""
    made = {a["name"]: a["id"] for a in client.predict(api_name="/list_adapters")}
    if "hub lora" in made and "hub ia3" in made:
        return [made["hub lora"], made["hub ia3"]]
    dataset_id = client.predict("arithmetic", api_name="/add_sample")["id"]
    jobs = []
    for method, name in (("lora", "hub lora"), ("ia3", "hub ia3")):
        spec = {
            "base_model": "SmolLM2-135M-Instruct",
            "dataset_id": dataset_id,
            "method": method,
            "name": name,
            "training": {"max_steps": 2, "batch_size": 2, "max_length": 64, "sample_prompts": 0},
        }
        jobs.append(client.predict(spec, api_name="/start_job")["job_id"])
    deadline = time.monotonic() + 2 * TRAIN_TIMEOUT_S
    adapters = []
    for job_id in jobs:
        while (status := client.predict(job_id, api_name="/job_status"))["status"] in (
            "queued",
            "running",
        ):
            assert time.monotonic() < deadline, f"{job_id} did not finish"
            time.sleep(1)
        assert status["status"] == "succeeded", status["error"]
        adapters.append(status["adapter_id"])
    return adapters


@pytest.mark.e2e
def test_hub_in_chromium(launched_app: LaunchedApp, tmp_path: Path):
    client = api_client(launched_app.url)
    adapters = train_two(client)
    in_chromium(
        launched_app,
        lambda page: hub_flow(page, launched_app, adapters, tmp_path),
        "failure-hub.png",
        accept_downloads=True,
    )


def pick(page, label: str | re.Pattern, *options: str) -> None:
    """Make exactly these the choices of a multiselect dropdown. A tab redraws its dropdowns
    from storage when it is shown, which may undo a choice made meanwhile: so choose, look at
    the chosen tokens, and choose again until the choice holds."""
    box = page.get_by_role("combobox", name=label, exact=isinstance(label, str))
    block = box.locator("xpath=ancestor::div[contains(@class, 'block')][1]")
    tokens = block.locator(".token")
    for _ in range(5):
        clear = block.get_by_title("Clear", exact=True)
        if clear.count():
            clear.first.click()
        box.click()
        for option in options:
            with contextlib.suppress(sync_api.TimeoutError):
                page.get_by_role("option", name=re.compile(re.escape(option))).click(timeout=5000)
        page.keyboard.press("Escape")
        page.wait_for_timeout(1000)
        shown = tokens.all_inner_texts()
        if len(shown) == len(options) and all(any(o in t for t in shown) for o in options):
            return
    raise AssertionError(f"could not choose {options} in {label}: {tokens.all_inner_texts()}")


def choose(page, label: str, option: str) -> None:
    """One option of a single-choice dropdown, checked to hold (see pick)."""
    box = page.get_by_role("combobox", name=label, exact=True)
    for _ in range(5):
        box.click()
        page.get_by_role("option", name=re.compile(re.escape(option))).click()
        page.wait_for_timeout(1000)
        if option in box.input_value():
            return
    raise AssertionError(f"could not choose {option} in {label}: {box.input_value()}")


def hub_flow(page, app: LaunchedApp, adapters: list[str], tmp_path: Path) -> None:
    lora, ia3 = adapters
    page.goto(app.url)

    # 1. Playground: the base and both adapters answer in three columns.
    open_tab(page, "Playground")
    pick(page, re.compile(r"^Adapters \(up to 4"), lora, ia3)
    page.get_by_role("spinbutton", name="Max new tokens", exact=True).fill("12")
    page.get_by_role("button", name="Generate").click()
    summary = page.locator("table").filter(has_text="tokens/s").last
    expect(summary.locator("tbody tr")).to_have_count(3, timeout=ms(GENERATE_TIMEOUT_S))
    for adapter_id in (lora, ia3):
        expect(summary).to_contain_text(adapter_id)
    answers = page.get_by_test_id("bot")
    expect(answers).to_have_count(3)
    for i in range(3):
        expect(answers.nth(i)).to_have_text(re.compile(r"\S"))
    expect(page.get_by_text(re.compile(r"Loaded: SmolLM2-135M-Instruct"))).to_be_visible()
    no_error_shown(page)
    shot(page, "hub-playground.png")

    # 2. Compare: the trade-offs of both, then an evaluation of base + both on 3 held-out rows.
    open_tab(page, "Compare")
    pick(page, "Adapters", lora, ia3)
    table = page.get_by_role("grid", name="Trade-offs")
    expect(table).to_contain_text(lora)
    expect(table).to_contain_text(ia3)
    expect(table).to_contain_text("ia3")
    choose(page, "Dataset to evaluate on", "2,000 rows")
    rows = page.get_by_role("spinbutton", name="Rows at most", exact=True)
    rows.fill("3")
    rows.press("Tab")
    page.get_by_role("button", name="Evaluate", exact=True).click()
    queued = page.get_by_text(re.compile(r"Evaluation job-\w+ is queued: 3 model\(s\) × 3 rows"))
    expect(queued).to_be_visible()
    expect(page.get_by_text(re.compile(r"succeeded · 9 of 9"))).to_be_visible(
        timeout=ms(2 * GENERATE_TIMEOUT_S)
    )
    results = page.get_by_role("grid", name="Results")
    expect(results).to_contain_text("exact_match")
    expect(results).to_contain_text("base model")
    expect(page.get_by_role("grid", name="Examples").get_by_role("row")).to_have_count(4)
    bars = page.get_by_label("Vega visualization", exact=True)
    expect(bars.locator("g.mark-rect path").first).to_be_attached()
    open_tab(page, "Playground")
    open_tab(page, "Compare")  # the trade-offs read again: both have this evaluation's score
    for adapter_id in (lora, ia3):
        expect(table.get_by_role("row").filter(has_text=adapter_id)).to_contain_text("exact_match")
    no_error_shown(page)
    shot(page, "hub-compare.png")

    # 3. Adapters: merge the LoRA adapter into the base (bfloat16), then download the model.
    open_tab(page, "Adapters")
    choose(page, "Adapter", lora)
    page.get_by_text("Merge into the base (a queued job)").click()
    page.get_by_role("radio", name="bfloat16", exact=True).check()
    page.get_by_role("button", name="Merge", exact=True).click()
    queued = page.get_by_text(re.compile(r"Merge job job-\w+ is queued"))
    expect(queued).to_be_visible()
    merge_id = re.search(r"job-\w+", queued.inner_text()).group(0)
    deadline = time.monotonic() + GENERATE_TIMEOUT_S
    while True:  # the Adapters tab reads storage again each time it is shown
        page.get_by_role("tab", name="Playground", exact=True).click()
        page.get_by_role("tab", name="Adapters", exact=True).click()
        try:
            choose(page, "Merged models", merge_id)
            break
        except (AssertionError, sync_api.TimeoutError):
            assert time.monotonic() < deadline, "the merge did not finish"
            page.keyboard.press("Escape")
    merged = page.get_by_role("combobox", name="Merged models", exact=True)
    expect(merged).to_have_value(re.compile(r"bfloat16.*max logit diff"))
    page.get_by_role("button", name="Prepare merged .zip").click()
    link = page.get_by_role("row", name=re.compile(rf"^merged-{merge_id}\.zip")).get_by_role("link")
    expect(link).to_be_visible(timeout=ms(GENERATE_TIMEOUT_S))
    with page.expect_download() as download_info:
        link.click()
    path = tmp_path / "merged.zip"
    download_info.value.save_as(path)
    with zipfile.ZipFile(path) as zf:
        names = set(zf.namelist())
    assert {"merged/config.json", "merged/model.safetensors"} <= names, names
    assert not any(n.endswith(".bin") for n in names)
    no_error_shown(page)
    shot(page, "hub-merge.png")
