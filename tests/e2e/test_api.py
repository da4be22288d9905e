"""The named API against the launched app (bundled model): upload -> train -> generate -> zip."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import zipfile

import pytest
from gradio_client import handle_file

from tests.e2e.conftest import api_client

pytestmark = pytest.mark.e2e

# A separate, plain script: only transformers + peft, as a user would load the download.
LOAD_SCRIPT = """
import sys, tempfile, zipfile, pathlib, torch
from transformers import AutoModelForCausalLM
from peft import PeftModel
folder = pathlib.Path(tempfile.mkdtemp())
zipfile.ZipFile(sys.argv[1]).extractall(folder)
(adapter,) = [p for p in folder.iterdir() if p.is_dir()]
model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(sys.argv[2]), adapter)
lora = [n for n, _ in model.named_parameters() if "lora_A" in n]
print(type(model).__name__, model.peft_config["default"].peft_type.value, len(lora))
"""


@pytest.fixture(scope="module")
def client(launched_app):
    return api_client(launched_app.url)


def poll(client, job_id, until, timeout=300):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = client.predict(job_id, api_name="/job_status")
        if until(status):
            return status
        time.sleep(1)
    raise AssertionError(f"timed out; last status {status}")


def arithmetic_file(tmp_path):
    rows = [
        {"prompt": f"What is {a} + {b}?", "completion": str(a + b)}
        for a in range(10, 30)
        for b in range(40, 43)
    ]
    path = tmp_path / "sums.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    return path


def spec(dataset_id, **training):
    return {
        "base_model": "SmolLM2-135M-Instruct",
        "dataset_id": dataset_id,
        "method": "lora",
        "method_params": {"r": 8, "lora_alpha": 16},
        "training": {"batch_size": 2, "max_length": 64, "learning_rate": 3e-3, **training},
        "name": "e2e sums",
    }


def test_upload_train_generate_download(client, launched_app, tmp_path):
    info = client.predict(
        [handle_file(arithmetic_file(tmp_path))], "sums", api_name="/upload_dataset"
    )
    assert (info["name"], info["format"], info["rows"]) == ("sums", "prompt_completion", 60)

    started = client.predict(spec(info["id"], max_steps=6), api_name="/start_job")
    assert started["status"] == "queued" and 0 < started["trainable_percent"] < 5
    done = poll(client, started["job_id"], lambda s: s["status"] not in ("queued", "running"))
    assert done["status"] == "succeeded", done["error"]
    assert done["step"] == done["total_steps"] == 6 and done["loss"] > 0

    prompt = "What is 17 + 41?"
    answers = client.predict(
        "SmolLM2-135M-Instruct",
        [None, done["adapter_id"]],
        prompt,
        {"max_new_tokens": 12},
        api_name="/generate",
    )["outputs"]
    assert [a["adapter"] for a in answers] == [None, done["adapter_id"]]
    assert all(a["text"] for a in answers)
    assert answers[0]["text"] != answers[1]["text"], "the adapter answers differently"

    zip_path = client.predict(done["adapter_id"], api_name="/download_adapter")
    names = zipfile.ZipFile(zip_path).namelist()
    assert f"{done['adapter_id']}/adapter_model.safetensors" in names
    assert f"{done['adapter_id']}/recipe.json" in names
    base = launched_app.models_dir / "SmolLM2-135M-Instruct"
    out = subprocess.run(
        [sys.executable, "-c", LOAD_SCRIPT, zip_path, str(base)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-3:] == ["PeftModelForCausalLM", "LORA", "120"]


def test_cancel_a_running_job(client, tmp_path):
    info = client.predict(
        [handle_file(arithmetic_file(tmp_path))], "sums", api_name="/upload_dataset"
    )
    started = client.predict(spec(info["id"], max_steps=1000), api_name="/start_job")
    poll(client, started["job_id"], lambda s: s["step"] >= 1)
    assert client.predict(started["job_id"], api_name="/cancel_job")["status"] == "running"
    done = poll(client, started["job_id"], lambda s: s["status"] != "running", timeout=120)
    assert done["status"] == "cancelled" and done["step"] < 1000


@pytest.mark.parametrize(
    ("endpoint", "args", "message"),
    [
        (
            "/start_job",
            ({"base_model": "x", "dataset_id": "d", "training": {"bogus": 1}},),
            "training.bogus: unknown field",
        ),
        (
            "/start_job",
            ({"base_model": "SmolLM2-135M-Instruct", "dataset_id": "ds-0123456789ab"},),
            "dataset_id: no dataset",
        ),
        ("/job_status", ("../../etc/passwd",), "is not a job id"),
        ("/delete_dataset", ("../ds-0123456789ab",), "is not a dataset id"),
        ("/preview_dataset", ("ds-0123456789ab", "", 0), "does not exist"),
        ("/download_adapter", ("ad-0123456789ab",), "does not exist"),
        ("/generate", ("SmolLM2-135M-Instruct", [None], " ", {}), "Type a prompt first"),
    ],
)
def test_errors_reach_the_client_in_plain_words(client, endpoint, args, message):
    with pytest.raises(Exception, match=message.replace(".", r"\.")):
        client.predict(*args, api_name=endpoint)


def test_bad_rows_refused_or_dropped_then_previewed_and_deleted(client, tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "a", "completion": "b"}\n{"prompt": "c", "completion": ""}\n')
    with pytest.raises(
        Exception, match=r"1 of 2 rows cannot be used: Row 2 \(completion\): is empty"
    ):
        client.predict([handle_file(path)], "bad", api_name="/upload_dataset")
    assert all(d["name"] != "bad" for d in client.predict(api_name="/list_datasets"))

    held = tmp_path / "held.jsonl"
    held.write_text('{"prompt": "x", "completion": "y"}\n')
    info = client.predict(
        [handle_file(path)],
        "bad",
        {"on_bad_rows": "drop"},
        [handle_file(held)],
        api_name="/upload_dataset",
    )
    assert (info["rows"], info["eval_rows"], info["dropped_rows"]) == (1, 1, 1)
    assert info["bad_rows"] == [
        {"row": 2, "column": "completion", "problem": "is empty", "source": ""}
    ]
    preview = client.predict(info["id"], "SmolLM2-135M-Instruct", 0, api_name="/preview_dataset")
    (example,) = preview["examples"]
    assert [s["kind"] for s in example["segments"]] == ["prompt", "loss"]
    assert example["segments"][1]["text"] == "b<|im_end|>\n"
    assert preview["token_stats"]["tokens_max"] == example["tokens"]
    assert client.predict(info["id"], api_name="/delete_dataset") == {"deleted": info["id"]}
    assert all(d["id"] != info["id"] for d in client.predict(api_name="/list_datasets"))


def test_a_dead_worker_is_replaced(client, launched_app, tmp_path):
    import psutil

    def worker():
        app = psutil.Process(launched_app.pid)
        for child in app.children():
            try:
                if child.status() != psutil.STATUS_ZOMBIE and "worker" in child.cmdline():
                    return child
            except psutil.NoSuchProcess:  # a killed worker until the app reaps it
                continue
        return None

    first = worker()
    assert first is not None, "python app.py starts an embedded worker process"
    first.kill()
    replacement = poll_until(lambda: (w := worker()) and w.pid != first.pid and w)
    assert replacement.is_running()
    info = client.predict(
        [handle_file(arithmetic_file(tmp_path))], "sums", api_name="/upload_dataset"
    )
    started = client.predict(spec(info["id"], max_steps=1), api_name="/start_job")
    done = poll(client, started["job_id"], lambda s: s["status"] not in ("queued", "running"))
    assert done["status"] == "succeeded", done["error"]


def poll_until(predicate, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(0.5)
    raise AssertionError("timed out")
