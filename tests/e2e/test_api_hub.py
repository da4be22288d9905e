"""The adapter hub's named endpoints against the launched app (bundled model), via gradio_client:
import, compare, combine, evaluate, trade-offs, merge."""

from __future__ import annotations

import time
import zipfile

import pytest
from gradio_client import Client, handle_file

from tests.e2e.conftest import api_client
from tests.e2e.test_browser_hub import train_two

pytestmark = pytest.mark.e2e


def wait_done(client: Client, job_id: str, timeout: float = 300) -> dict:
    deadline = time.monotonic() + timeout
    while (status := client.predict(job_id, api_name="/job_status"))["status"] in (
        "queued",
        "running",
    ):
        assert time.monotonic() < deadline, f"{job_id} did not finish: {status}"
        time.sleep(1)
    return status


def test_hub_endpoints(launched_app, tmp_path):
    client = api_client(launched_app.url)
    lora, ia3 = train_two(client)

    # Our own download, imported again: the same weights, so the same answers.
    zipped = client.predict(lora, api_name="/download_adapter")
    imported = client.predict(
        handle_file(zipped), "SmolLM2-135M-Instruct", "reimported", api_name="/import_adapter"
    )
    assert imported["origin"] == "imported" and imported["peft_type"] == "LORA"
    listed = {a["id"]: a for a in client.predict(api_name="/list_adapters")}
    assert imported["trainable_params"] == listed[lora]["trainable_params"]

    compared = client.predict(
        "What is 12 + 30?",
        [None, lora, imported["adapter_id"], ia3],
        {"max_new_tokens": 8, "temperature": 0.7, "seed": 3},
        api_name="/compare",
    )["outputs"]
    assert [o["adapter"] for o in compared] == [None, lora, imported["adapter_id"], ia3]
    assert compared[1]["text"] == compared[2]["text"], "the same weights answer the same"
    assert all(o["tokens"] >= 1 and o["tokens_per_s"] > 0 for o in compared)

    combined = client.predict(
        [lora, imported["adapter_id"]], [0.5, 0.5], "cat", "both", api_name="/combine_adapters"
    )
    assert combined["origin"] == "combined" and combined["r"] == 32  # 16 + 16
    with pytest.raises(Exception, match="different types"):
        client.predict([lora, ia3], [1, 1], "linear", "", api_name="/combine_adapters")

    bad = tmp_path / "pickled.zip"
    with zipfile.ZipFile(bad, "w") as zf:
        zf.writestr("a/adapter_config.json", '{"peft_type": "LORA"}')
        zf.writestr("a/adapter_model.bin", b"\x80\x04")
    with pytest.raises(Exception, match="is a pickle"):
        client.predict(handle_file(bad), "SmolLM2-135M-Instruct", "", api_name="/import_adapter")

    dataset_id = client.predict(listed[lora]["job_id"], api_name="/job_status")["dataset_id"]
    started = client.predict(
        [None, lora], dataset_id, {"max_rows": 2, "max_new_tokens": 8}, api_name="/evaluate"
    )
    assert started["metric"] == "exact_match" and started["rows"] == 2
    assert wait_done(client, started["job_id"])["status"] == "succeeded"
    results = client.predict(started["job_id"], api_name="/evaluation_results")
    assert [s["adapter"] for s in results["summary"]] == [None, lora]
    assert len(results["examples"]) == 2
    (row,) = client.predict([lora], api_name="/tradeoffs")
    assert row["metric"] == "exact_match" and row["inference_overhead"] > 0

    merge = client.predict(ia3, "float32", api_name="/merge_adapter")
    status = wait_done(client, merge["job_id"])
    assert status["status"] == "succeeded", status["error"]
    assert status["kind"] == "merge" and status["result"]["max_logit_diff"] < 1e-3
    with pytest.raises(Exception, match="not a merge"):
        client.predict(started["job_id"], api_name="/download_merged")
