"""The Jobs tab in Chromium: three jobs queued, one moved to the front, one cancelled, one watched
to the end with its curves and sample answers. Screenshots: jobs-queue.png, jobs-done.png."""

from __future__ import annotations

import re
import time

import pytest
from playwright import sync_api

from tests.e2e.conftest import LaunchedApp, api_client
from tests.e2e.test_browser import TRAIN_TIMEOUT_S, in_chromium, ms, no_error_shown, open_tab, shot

expect = sync_api.expect


@pytest.mark.e2e
def test_queue_in_chromium(launched_app: LaunchedApp):
    client = api_client(launched_app.url)
    dataset_id = client.predict("arithmetic", api_name="/add_sample")["id"]

    def job(name: str, steps: int, **training) -> str:
        spec = {
            "base_model": "SmolLM2-135M-Instruct",
            "dataset_id": dataset_id,
            "name": name,
            "training": {"max_steps": steps, "batch_size": 2, "max_length": 64, **training},
        }
        return client.predict(spec, api_name="/start_job")["job_id"]

    first = job("first", 6, sample_prompts=0)  # keeps the worker busy while the others wait
    second = job("second", 2, sample_prompts=0)
    third = job("third", 4, sample_prompts=2, sample_every=2)
    deadline = time.monotonic() + TRAIN_TIMEOUT_S
    while client.predict(first, api_name="/job_status")["status"] == "queued":
        assert time.monotonic() < deadline, "the worker did not take the first job"
        time.sleep(0.5)
    in_chromium(
        launched_app,
        lambda page: queue_flow(page, launched_app, first, second, third),
        "failure-jobs.png",
    )


def select_job(page, job_id: str) -> None:
    picker = page.get_by_role("combobox", name="Job", exact=True)
    picker.click()
    page.get_by_role("option", name=re.compile(job_id)).click()
    expect(picker).to_have_value(re.compile(job_id))


def queue_row(page, job_id: str):
    return page.get_by_role("row").filter(has_text=job_id)


def queue_flow(page, app: LaunchedApp, first: str, second: str, third: str) -> None:
    page.goto(app.url)
    open_tab(page, "Jobs")
    table = page.get_by_role("grid", name=re.compile("Jobs"))
    for job_id in (first, second, third):
        expect(table).to_contain_text(job_id)

    # The third job to the front of the queue: it runs next, before the second.
    select_job(page, third)
    page.get_by_role("button", name="Run next").click()
    expect(page.get_by_text(f"Job {third} is number 1 in the queue.")).to_be_visible()
    expect(queue_row(page, third).get_by_role("gridcell").first).to_have_text("1")
    expect(queue_row(page, second).get_by_role("gridcell").first).to_have_text("2")

    # The second one cancelled before it starts.
    select_job(page, second)
    page.get_by_role("button", name="Cancel job").click()
    expect(page.get_by_text(f"Job {second} was cancelled before it started.")).to_be_visible()
    expect(queue_row(page, second)).to_contain_text("cancelled")
    no_error_shown(page)
    shot(page, "jobs-queue.png")

    # The filter keeps one state.
    page.get_by_role("radio", name="cancelled", exact=True).check()
    expect(queue_row(page, second)).to_be_visible()
    expect(queue_row(page, third)).to_have_count(0)
    page.get_by_role("radio", name="all", exact=True).check()

    # The third one, watched to the end: curves and the sample answers beside the base model's.
    select_job(page, third)
    expect(page.get_by_text(re.compile(r"succeeded · step 4 of 4"))).to_be_visible(
        timeout=ms(2 * TRAIN_TIMEOUT_S)
    )
    plots = page.get_by_label("Vega visualization", exact=True)
    expect(plots).to_have_count(4)  # loss, learning rate, tokens/s, memory
    for i in range(4):
        expect(plots.nth(i).locator("g.mark-line path[d*='L'][stroke]").first).to_be_attached()
    samples = page.locator("table.job-samples")
    expect(samples).to_be_visible()
    expect(samples.locator("th")).to_have_text(["prompt", "base model", "step 2", "step 4"])
    expect(samples.locator("tbody tr")).to_have_count(2)
    expect(page.get_by_text("==== run 1")).to_be_attached()  # the log tail
    jobs = {j["job_id"]: j for j in api_client(app.url).predict(api_name="/list_jobs")}
    assert jobs[second]["status"] == "cancelled" and jobs[second]["started_at"] is None
    assert jobs[first]["finished_at"] <= jobs[third]["started_at"]
    no_error_shown(page)
    shot(page, "jobs-done.png")


@pytest.mark.e2e
def test_a_search_and_a_split_evaluation_in_chromium(launched_app: LaunchedApp):
    """A grid search of two trials: the Jobs tab shows them side by side and the choice; then an
    evaluation split by operation in the Compare tab."""
    client = api_client(launched_app.url)
    dataset_id = client.predict("arithmetic", api_name="/add_sample")["id"]
    spec = {
        "base_model": "SmolLM2-135M-Instruct",
        "dataset_id": dataset_id,
        "name": "rates",
        "training": {"max_steps": 2, "batch_size": 2, "max_length": 64, "sample_prompts": 0},
        "search": {"mode": "grid", "space": {"learning_rate": [1e-4, 3e-3]}},
    }
    started = client.predict(spec, api_name="/start_job")
    assert len(started["trials"]) == 2
    deadline = time.monotonic() + 2 * TRAIN_TIMEOUT_S
    while (status := client.predict(started["job_id"], api_name="/job_status"))["status"] in (
        "queued",
        "running",
    ):
        assert time.monotonic() < deadline, "the search did not finish"
        time.sleep(1)
    assert status["status"] == "succeeded", status
    best = status["result"]["best"]
    evaluation = client.predict(
        [None, status["adapter_id"]],
        dataset_id,
        {"max_rows": 6, "max_new_tokens": 6, "group_by": "operation"},
        api_name="/evaluate",
    )
    while client.predict(evaluation["job_id"], api_name="/evaluation_results")["status"] in (
        "queued",
        "running",
    ):
        assert time.monotonic() < deadline, "the evaluation did not finish"
        time.sleep(1)
    results = client.predict(evaluation["job_id"], api_name="/evaluation_results")
    groups = {g["group"] for g in results["summary"][0]["groups"]}
    assert groups and groups <= {"+", "-", "x"}
    assert sum(g["rows"] for g in results["summary"][0]["groups"]) == 6
    in_chromium(
        launched_app,
        lambda page: search_flow(page, launched_app, started["job_id"], best, groups),
        "failure-search.png",
    )


def search_flow(page, app: LaunchedApp, search_id: str, best: dict, groups: set) -> None:
    page.goto(app.url)
    open_tab(page, "Jobs")
    select_job(page, search_id)
    chosen = page.get_by_text(re.compile(r"Chosen: learning_rate"))
    expect(chosen).to_be_visible()
    expect(chosen).to_contain_text(best["label"])
    expect(page.locator("table.job-samples")).to_contain_text("final eval loss")
    plot = page.get_by_label("Vega visualization", exact=True).first  # eval loss by trial
    legend = plot.locator("g.role-legend-label text")
    expect(legend).to_have_count(2)
    no_error_shown(page)
    shot(page, "jobs-search.png")

    open_tab(page, "Compare")
    page.get_by_role("combobox", name="Evaluation", exact=True).click()
    page.get_by_role("option", name=re.compile(r"^evaluate 2 on")).first.click()
    results = page.get_by_role("grid", name="Results")
    for group in sorted(groups):
        expect(results).to_contain_text(f"exact_match · {group}")
    no_error_shown(page)
    shot(page, "compare-by-group.png")
