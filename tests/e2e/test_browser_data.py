"""The Data tab in Chromium: bad rows refused, then dropped; a mapping made by hand; a delete.

Screenshots in tests/artifacts: data-bad-rows.png, data-preview.png, data-mapping.png.
"""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path

import pytest
from playwright import sync_api

from tests.e2e.conftest import LaunchedApp
from tests.e2e.test_browser import (
    in_chromium,
    no_error_shown,
    open_tab,
    shot,
)

expect = sync_api.expect

COMPLETIONS = [
    "Paris.",
    "Four.",
    "Water boils at 100 degrees Celsius at sea level.",
    "Blue, because air scatters short wavelengths of sunlight more than long ones.",
    "Seven days.",
    "A triangle has three sides, and its angles add up to one hundred and eighty degrees.",
]


def write_jsonl(path: Path, tag: str) -> Path:
    """Six good rows, then row 7 with an empty completion and row 8 repeating row 1."""
    rows = [
        {"prompt": f"[{tag}] Question {i}: tell me something.", "completion": c}
        for i, c in enumerate(COMPLETIONS, start=1)
    ]
    rows.append({"prompt": f"[{tag}] Question 7: no answer here.", "completion": ""})
    rows.append(dict(rows[0]))
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def write_csv(path: Path, tag: str) -> Path:
    """Columns no schema knows (q, a2): the user has to map them."""
    lines = ["q,a2", *(f"[{tag}] Question {i}?,{c.rstrip('.')}" for i, c in enumerate("ABCD"))]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def file_block(page, label: str):
    """A gr.File by its label (the Datasets table holds a file input too)."""
    name = page.get_by_test_id("block-label").filter(
        has_text=re.compile(rf"^\s*{re.escape(label)}\s*$")
    )
    return page.locator(".block").filter(has=name)


def add_and_expect_stored(page, policy: str, name: str, *texts: str) -> None:
    """Check and add with a bad-rows policy; the message says Stored, the name and texts."""
    page.get_by_role("radio", name=policy, exact=True).check()
    page.get_by_role("button", name="Check and add", exact=True).click()
    stored = page.get_by_text(re.compile(r"^Stored\. " + re.escape(name)))
    expect(stored).to_be_visible()
    for text in texts:
        expect(stored).to_contain_text(text)


def choose(page, combobox: str, option: str | re.Pattern) -> None:
    """Pick an option from the combobox's own list (a list just closed lingers a moment)."""
    box = page.get_by_role("combobox", name=combobox, exact=True)
    box.click()
    options = page.locator(f"[id='{box.get_attribute('aria-controls')}']")
    options.get_by_role("option", name=option, exact=isinstance(option, str)).click()
    expect(box).to_have_attribute("aria-expanded", "false")


@pytest.mark.e2e
def test_data_flow_in_chromium(launched_app: LaunchedApp, tmp_path: Path):
    in_chromium(
        launched_app, lambda page: data_flow(page, launched_app, tmp_path), "failure-data.png"
    )


def data_flow(page, app: LaunchedApp, tmp_path: Path) -> None:
    tag = uuid.uuid4().hex[:8]  # other tests share the app: unique names and unique content
    page.goto(app.url)
    open_tab(page, "Data")
    files = file_block(page, "Dataset files")
    expect(files).to_have_count(1)
    name_box = page.get_by_role("textbox", name="Name (optional)", exact=True)
    check_and_add = page.get_by_role("button", name="Check and add", exact=True)
    datasets = page.get_by_role("grid", name="Datasets")

    # 1a. A JSONL with 2 bad rows: detected, then refused with the rows listed.
    files.locator("input[type=file]").set_input_files(write_jsonl(tmp_path / "qa.jsonl", tag))
    expect(page.get_by_text("Detected schema prompt_completion")).to_be_visible()
    expect(page.get_by_role("combobox", name="Schema", exact=True)).to_have_value(
        re.compile("^prompt_completion")
    )
    expect(page.get_by_role("combobox", name="prompt ←", exact=True)).to_have_value("prompt")
    expect(page.get_by_role("combobox", name="completion ←", exact=True)).to_have_value(
        "completion"
    )
    first_name = f"bad rows {tag}"
    name_box.fill(first_name)
    expect(page.get_by_role("radio", name="Refuse the file", exact=True)).to_be_checked()
    check_and_add.click()
    expect(page.get_by_text(re.compile(r"Not stored\. 2 of 8 rows cannot be used"))).to_be_visible()
    bad = page.locator("#bad-rows")
    expect(bad.get_by_role("grid", name="Rows that cannot be used")).to_be_visible()
    expect(bad.get_by_role("row")).to_have_count(3)  # the header and the two bad rows
    empty_row = bad.get_by_role("row").filter(has_text="is empty")
    expect(empty_row).to_contain_text("7")
    expect(empty_row).to_contain_text("completion")
    duplicate_row = bad.get_by_role("row").filter(has_text="exact duplicate")
    expect(duplicate_row).to_contain_text("8")
    expect(duplicate_row).to_contain_text("exact duplicate of row 1")
    expect(duplicate_row).to_contain_text("(whole row)")
    expect(datasets).not_to_contain_text(first_name)
    no_error_shown(page)
    shot(page, "data-bad-rows.png")

    # 1b. The same file, dropping the bad rows: stored, with the preview and the histogram.
    add_and_expect_stored(
        page, "Drop bad rows", first_name, "6 training rows", "2 bad rows dropped"
    )
    # A dataset stored with dropped rows still lists them, as such.
    expect(bad.get_by_role("grid", name="Rows dropped (2)")).to_be_visible()
    loss = page.locator(".al-loss")
    expect(loss.first).to_be_visible()
    answers = [re.sub(r"<\|[^|]*\|>", "", t).strip() for t in loss.all_inner_texts()]
    assert any(a in COMPLETIONS for a in answers), f"no completion marked as loss: {answers}"
    expect(page.locator(".al-prompt").first).to_be_visible()
    bars = page.locator(".al-hist .al-bar")
    expect(bars.first).to_be_visible()
    heights = [b.bounding_box()["height"] for b in bars.all()]
    assert max(heights) > 50, f"the histogram's tallest bar is {max(heights)} px: {heights}"
    # The axis starts at the shortest row, not at 0.
    axis_start = int(page.locator(".al-axis span").first.inner_text())
    assert (
        axis_start > 0
        and f"Tokens per row: {axis_start} to"
        in page.locator(".al-hist").locator("xpath=..").inner_text()
    )
    expect(datasets).to_contain_text(first_name)
    no_error_shown(page)
    shot(page, "data-preview.png")

    # 2. A CSV no schema fits: choose the schema, map both fields by hand.
    files.get_by_role("button", name="Clear", exact=True).click()
    expect(files.get_by_test_id("download-link")).to_have_count(0)
    files.locator("input[type=file]").set_input_files(write_csv(tmp_path / "mapped.csv", tag))
    expect(page.get_by_text("No schema detected from the columns (q, a2)")).to_be_visible()
    expect(page.get_by_role("combobox", name="prompt ←", exact=True)).to_be_hidden()
    choose(page, "Schema", re.compile("^prompt_completion"))
    prompt_box = page.get_by_role("combobox", name="prompt ←", exact=True)
    completion_box = page.get_by_role("combobox", name="completion ←", exact=True)
    expect(prompt_box).to_have_value("(none)")
    expect(completion_box).to_have_value("(none)")
    choose(page, "prompt ←", "q")
    choose(page, "completion ←", "a2")
    expect(prompt_box).to_have_value("q")
    expect(completion_box).to_have_value("a2")
    second_name = f"mapped {tag}"
    name_box.fill(second_name)
    add_and_expect_stored(
        page, "Refuse the file", second_name, "4 training rows", "schema prompt_completion"
    )
    expect(page.get_by_text("Mapping: prompt ← q, completion ← a2.")).to_be_visible()
    expect(bad).to_be_hidden()  # no bad rows this time
    expect(datasets).to_contain_text(second_name)
    no_error_shown(page)
    shot(page, "data-mapping.png")

    # 3. Delete the mapped dataset; the first one stays.
    dataset_box = page.get_by_role("combobox", name="Dataset", exact=True)
    expect(dataset_box).to_have_value(re.compile(re.escape(second_name)))
    page.get_by_role("button", name="Delete dataset", exact=True).click()
    expect(page.get_by_text(re.compile(r"^Deleted `?ds-\w+`?\.$"))).to_be_visible()
    expect(datasets).not_to_contain_text(second_name)
    expect(datasets).to_contain_text(first_name)
    expect(dataset_box).to_have_value("")
    no_error_shown(page)
