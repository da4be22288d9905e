"""The UI's handlers as plain functions, and the Blocks app with its named API endpoints."""

from __future__ import annotations

import shutil

import pytest

import service
from finetune.methods import get_method
from storage.store import Job, JobState, Metric, Store
from webui.blocks import build_app
from webui.data_tab import (
    mapping_updates,
    on_delete_click,
    on_sample,
    on_source_change,
    on_upload,
    read_mapping,
)
from webui.jobs_tab import COLUMNS, on_action_click, on_jobs_tick, progress_html
from webui.playground_tab import SendRequest, on_send_click
from webui.train_tab import build_train_tab, on_form_change, on_start_click, read_form

API = {
    "upload_dataset",
    "start_job",
    "job_status",
    "cancel_job",
    "generate",
    "download_adapter",
    "estimate",
    "list_methods",
    "list_jobs",
    "list_datasets",
    "preview_dataset",
    "delete_dataset",
    "list_adapters",
    "add_sample",
    "set_priority",
    "resume_job",
    "retry_job",
    "clone_job",
    "delete_job",
    "job_log",
    "job_samples",
    "combine_adapters",
    "start_combine",
    "import_adapter",
    "compare",
    "unload_models",
    "evaluate",
    "evaluation_results",
    "merge_adapter",
    "tradeoffs",
    "download_merged",
    "push_to_hub",
}


@pytest.fixture
def with_tiny(settings, tiny_model):
    """The tiny model placed in the models dir, as a user's own model folder would be."""
    shutil.copytree(tiny_model, settings.models_dir / "tiny")
    return settings


def test_app_builds_with_the_named_api(with_tiny):
    app = build_app(with_tiny)
    names = {fn.api_name for fn in app.fns.values() if fn.api_visibility == "public"}
    assert names == API
    endpoints = app.get_api_info()["named_endpoints"]
    combine = endpoints["/combine_adapters"]  # bound to the settings: not an argument
    assert [p["parameter_name"] for p in combine["parameters"]][:3] == [
        "adapter_ids",
        "weights",
        "method",
    ]
    assert endpoints["/list_methods"]["parameters"] == []


def test_upload_handler_lists_bad_rows_then_drops_them(with_tiny, store, tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("prompt,completion\nHi?,Hello.\nq,\nHi?,Hello.\n")
    message, table, examples, histogram, *_ = on_upload(
        with_tiny, [str(bad)], "", {}, None, "tiny", 64
    )
    assert message.startswith("**Not stored.** 2 of 3 rows cannot be used")
    assert table["visible"] and table["label"] == "Rows that cannot be used"
    assert table["value"].values.tolist() == [
        [2, "completion", "is empty"],
        [3, "(whole row)", "exact duplicate of row 1"],
    ]
    assert store.list_datasets() == [] and examples == histogram == ""

    message, table, examples, histogram, dropdown, datasets = on_upload(
        with_tiny, [str(bad)], "greetings", {"on_bad_rows": "drop"}, None, "tiny", 64
    )
    assert message.startswith("**Stored.** **greetings**") and "2 bad rows dropped" in message
    assert "Max length 64 truncates **0** rows" in message
    assert '<span class="al-loss">Hello.&lt;|im_end|&gt;\n</span>' in examples
    assert histogram.count('class="al-bar') == 1
    assert dropdown["value"] == datasets[0][1] and datasets[0][0] == "greetings"


def test_upload_handler_reports_unreadable_files(settings, tmp_path):
    path = tmp_path / "q.csv"
    path.write_text("question,reply\na,b\n")
    message, table, *_ = on_upload(settings, [str(path)], "", {}, None, "", 0)
    assert message.startswith("**Not stored.** No known schema fits the columns (question, reply)")
    assert not table["visible"]


def test_mapping_control_round_trip():
    updates = mapping_updates("alpaca", ["q", "a", "ctx"], {"instruction": "q", "output": "a"})
    visible = [u for u in updates if u["visible"]]
    assert [u["label"] for u in visible] == [
        "instruction ←",
        "output ←",
        "input ← (optional)",
        "system ← (optional)",
    ]
    values = [u["value"] for u in updates]
    assert read_mapping("alpaca", values) == {"instruction": "q", "output": "a"}
    assert [u["visible"] for u in mapping_updates("text", ["body"], {})] == [
        True,
        False,
        False,
        False,
    ]


def test_sample_handler(with_tiny):
    message, _, examples, histogram, *_ = on_sample(with_tiny, "arithmetic", "tiny", 64)
    assert "2,000 training rows, 200 eval rows (its own split)" in message
    assert "What is" in examples and "al-hist" in histogram


def filled_form(settings, **values):
    import gradio as gr

    with gr.Blocks():
        form = build_train_tab(settings)
    data = {c: getattr(c, "value", None) for c in form.inputs()}
    data[form.base_model] = values.pop("base_model", "tiny")
    data[form.dataset] = values.pop("dataset", None)
    for name, value in values.items():
        method_fields = form.method_inputs[data[form.method]]
        component = method_fields.get(name) or form.training_inputs[name]
        data[component] = value
    return form, data


def test_form_counts_and_start(with_tiny):
    form, data = filled_form(with_tiny, r=4)
    counts = on_form_change(with_tiny, form, data)
    assert counts.startswith("Task: causal LM") and "**Trainable parameters:" in counts
    assert "**Cannot count:** method_params.r" in on_form_change(
        with_tiny, *filled_form(with_tiny, r=0)
    )
    message = on_start_click(with_tiny, form, data)
    assert message.startswith("**Not started.** dataset_id")
    dataset = service.add_sample(with_tiny, "arithmetic")
    form, data = filled_form(with_tiny, dataset=dataset["id"], r=4, max_steps=2)
    assert "2,000 training rows and its own eval split of 200 rows" in on_form_change(
        with_tiny, form, data
    )
    message = on_start_click(with_tiny, form, data)
    assert message.startswith("**Started.** Job `job-")
    job = Store(with_tiny.data_dir).list_jobs()[0]
    assert job.state == JobState.QUEUED
    assert job.spec["method_params"]["r"] == 4 and job.spec["training"]["max_steps"] == 2
    assert job.spec["training"]["epochs"] is None, "an empty (0) epochs box means not set"


def test_form_reads_zero_as_not_set(with_tiny):
    form, data = filled_form(with_tiny)
    assert data[form.training_inputs["max_steps"]] == 0, "the box shows 0, not an empty value"
    training = read_form(form, data)["training"]
    assert (training["max_minutes"], training["epochs"], training["max_steps"]) == (10, 1, None)
    assert training["learning_rate"] == get_method("lora").learning_rate, "the method's own"
    form, data = filled_form(with_tiny, epochs=2, max_minutes=0)
    training = read_form(form, data)["training"]
    assert (training["max_minutes"], training["epochs"], training["max_steps"]) == (None, 2, None)


def tick(settings, selected=None, state=None) -> dict:
    return on_jobs_tick(settings, selected, state)


def test_jobs_tick_and_cancel(settings, store):
    view = tick(settings)
    assert view["table"] == [] and view["progress"] == "No jobs yet."
    job = store.add_job("first", {"method": "lora", "base_model": "/m/tiny"}, None)
    store.claim_job(job.id, worker="host:1")
    store.update_job(job.id, step=2, total_steps=4)
    store.add_metric(job.id, step=1, loss=2.0, learning_rate=1e-4, memory_mb=900.0)
    store.add_metric(job.id, step=2, loss=1.5, eval_loss=1.7, tokens_per_s=80.0)
    view = tick(settings)
    row = dict(zip(COLUMNS, view["table"][0], strict=True))
    assert (row["state"], row["name"], row["base model"], row["method"]) == (
        "running",
        "first",
        "tiny",
        "lora",
    )
    assert (row["step"], row["loss"], row["eval loss"], row["id"]) == ("2/4", "1.5", "1.7", job.id)
    assert "step 2 of 4" in view["progress"] and "left" in view["progress"]
    assert "width:50.0%" in view["progress"] and "worker host:1" in view["progress"]
    assert view["loss"].to_dict("records") == [
        {"step": 1, "value": 2.0, "series": "loss"},
        {"step": 2, "value": 1.5, "series": "loss"},
        {"step": 2, "value": 1.7, "series": "eval loss"},
    ]
    assert view["learning rate"]["value"].tolist() == [1e-4]
    assert view["tokens/s"]["value"].tolist() == [80.0]
    assert view["memory (MB)"]["value"].tolist() == [900.0]
    assert '"method": "lora"' in view["recipe"] and view["cancel"]["interactive"] is True
    assert view["delete"]["interactive"] is False, "a running job cannot be deleted"
    assert "will stop after its current step" in on_action_click(settings, "cancel", job.id)
    store.finish_job(job.id, JobState.FAILED, "It broke.", "Traceback: x")
    view = tick(settings, job.id)
    assert "failed" in view["progress"] and view["error"].startswith("**It broke.**")
    assert "Traceback" in view["error"] and view["cancel"]["interactive"] is False
    assert view["retry"]["interactive"] is True and view["resume"]["interactive"] is False
    assert "already ended" in on_action_click(settings, "cancel", job.id)
    assert tick(settings, None, "queued")["table"] == [], "the filter keeps one state"
    assert len(tick(settings, None, "failed")["table"]) == 1


def a_job(**values) -> Job:
    fields = {
        "id": "job-0123456789ab",
        "name": "n",
        "state": JobState.RUNNING,
        "spec": {},
        "dataset_id": None,
        "created_at": 0,
        "started_at": 0,
        "finished_at": None,
        "heartbeat_at": None,
        "step": 0,
        "total_steps": None,
        "trainable_params": None,
        "total_params": None,
        "cancel_requested": False,
        "error": None,
        "error_detail": None,
        "checkpoint": None,
        "adapter_id": None,
    }
    return Job(**{**fields, **values})


def test_progress_of_a_finished_job_is_full():
    job = a_job(state=JobState.SUCCEEDED, started_at=10, finished_at=100, step=4, total_steps=4)
    html = progress_html(job, [])
    assert "width:100.0%" in html and "took 1 min 30 s" in html


def test_progress_shows_the_pace_and_the_last_losses():
    job = a_job(step=3, total_steps=13)

    def metric(step, at, loss=None, eval_loss=None):
        return Metric(
            step=step,
            epoch=None,
            loss=loss,
            eval_loss=eval_loss,
            learning_rate=None,
            tokens_per_s=None,
            memory_mb=None,
            created_at=at,
        )

    assert "starting" in progress_html(job, [metric(1, 100.0, loss=3.0)])
    # 2 steps took 12 s (an eval included): 6 s a step, 10 steps to go -> 60 s
    metrics = [
        metric(1, 100.0, loss=3.0),
        metric(2, 104.0, loss=2.5),
        metric(2, 110.0, eval_loss=2.2),
        metric(3, 112.0, loss=2.0),
    ]
    html = progress_html(job, metrics)
    assert "about 1 min 00 s left" in html and "loss 2 · eval loss 2.2" in html


def send(settings, adapter_ids, prompt, chat=False, histories=None, base=True, stop=""):
    """The playground's Generate handler, run to its last update."""
    request = SendRequest(
        base_model="tiny",
        adapter_ids=adapter_ids,
        include_base=base,
        prompt=prompt,
        system_prompt="",
        max_new_tokens=5,
        temperature=0,
        top_p=1,
        seed=0,
        stop=stop,
        chat_mode=chat,
        histories=histories or {},
    )
    *_, last = on_send_click(settings, request)
    status, histories, *chatbots = last
    return status, histories, chatbots


def test_playground_handler(with_tiny):
    status, histories, chatbots = send(with_tiny, [], "What is 1 + 2?")
    assert status.startswith("| model | seconds") and "| Base model |" in status
    assert chatbots[0]["visible"] and chatbots[0]["label"].startswith("Base model · ")
    assert "tok/s" in chatbots[0]["label"]
    assert [m["role"] for m in chatbots[0]["value"]] == ["user", "assistant"]
    assert not any(c["visible"] for c in chatbots[1:])

    # Chat mode keeps the history: the second turn answers after the first.
    _, histories, _ = send(with_tiny, [], "What is 1 + 2?", chat=True)
    _, histories, chatbots = send(with_tiny, [], "And 2 + 2?", chat=True, histories=histories)
    assert [m["content"] for m in chatbots[0]["value"] if m["role"] == "user"] == [
        "What is 1 + 2?",
        "And 2 + 2?",
    ]
    _, _, chatbots = send(with_tiny, [], "Once", histories=histories)
    assert len(chatbots[0]["value"]) == 2, "out of chat mode each prompt starts afresh"

    status, _, _ = send(with_tiny, [], "  ")
    assert status == "**Stopped.** Type a prompt first."
    status, _, _ = send(with_tiny, ["ad-0123456789ab"], "hi")
    assert status == "**Not sent.** adapter ad-0123456789ab does not exist"
    status, _, _ = send(with_tiny, [], "hi", base=False)
    assert status.startswith("**Not sent.** Pick adapters")
    status, _, _ = send(with_tiny, [], "hi", stop="a,b,c,d,e")
    assert "params.stop: at most 4" in status


def test_status_readers_settle_jobs_whose_process_died(settings, store):
    import time

    job = store.add_job("orphan", {}, None)
    store.claim_job(job.id)
    store.update_job(job.id, heartbeat_at=time.time() - 3600)
    assert tick(settings, job.id)["table"][0][1] == "interrupted"
    assert service.job_status(settings, job.id)["status"] == "interrupted"


def test_curves_start_with_every_series_the_job_will_have(store):
    from webui.jobs_tab import curves

    job = store.add_job("j", {"training": {"eval_fraction": 0.1}}, None)
    assert curves(job, []) is None, "no empty frame: the plot would fix its axes from it"
    store.add_metric(job.id, step=1, loss=2.5)
    frame = curves(job, store.list_metrics(job.id))
    assert list(frame["series"]) == ["loss", "eval loss"]
    assert frame["value"].isna().tolist() == [False, True]
    assert str(frame["step"].dtype) == "int64" and str(frame["value"].dtype) == "float64"
    no_eval = store.add_job("k", {"training": {"eval_fraction": 0.0}}, None)
    store.add_metric(no_eval.id, step=1, loss=2.5)
    assert list(curves(no_eval, store.list_metrics(no_eval.id))["series"]) == ["loss"]


def test_histogram_axis_starts_at_the_shortest_row():
    from webui.data_tab import histogram_html

    stats = {
        "histogram": {"edges": [50, 55, 60, 65], "counts": [2, 0, 4]},
        "max_length": 60,
        "truncated_rows": 4,
        "chunked_rows": 0,
    }
    page = histogram_html(stats)
    assert "Tokens per row: 50 to 64; red: past max length 60 (4 rows)" in page
    assert "<span>50</span><span>57</span><span>65 tokens</span>" in page
    assert page.count('class="al-bar over"') == 1 and 'style="height:50.0%"' in page


def test_source_change_detects_or_explains(settings, tmp_path, offline_hub):
    path = tmp_path / "a.csv"
    path.write_text("question,answer\nq,a\n")
    message, schema, columns, *slots = on_source_change(settings, [str(path)], {})
    assert message.startswith("Detected schema `prompt_completion`")
    assert schema["value"] == "prompt_completion" and columns == ["question", "answer"]
    assert [s["value"] for s in slots[:2]] == ["question", "answer"]
    message, *_ = on_source_change(settings, None, {"hub_id": "owner/name"})
    assert message.startswith("**Cannot read it.** The Hugging Face Hub cannot be reached")


def test_delete_handler(settings, store, tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text('{"prompt": "q", "completion": "a"}\n')
    info = service.upload_dataset(settings, path)
    store.add_job("j", {}, info["id"])
    message, *_ = on_delete_click(settings, info["id"])
    assert message.startswith("**Not deleted.** Dataset 'a' is needed by 1 job(s)")
    assert on_delete_click(settings, None)[0] == "Choose a dataset to delete."


def test_each_method_has_its_own_fields_and_count(with_tiny):
    from webui.train_tab import on_method_change, on_preset_change

    form, data = filled_form(with_tiny)
    description, *groups = on_method_change(form, "ia3")
    assert description.startswith("**IA3** (additive)")
    assert [g["visible"] for g in groups] == [k == "ia3" for k in form.method_groups]
    assert "cannot be merged" in on_method_change(form, "prompt_tuning")[0]

    data[form.method] = "ia3"
    spec = read_form(form, data)
    assert spec["method"] == "ia3" and set(spec["method_params"]) == {
        "target_modules",
        "feedforward_modules",
    }
    counts = on_form_change(with_tiny, form, data)
    assert "**Trainable parameters: 384**" in counts and "what it writes: **2 KB**" in counts

    everything = on_preset_change(with_tiny, "all linear layers", "tiny", ["q_proj"])
    assert "gate_proj" in everything["value"] and "up_proj" in everything["value"]
    attention = on_preset_change(with_tiny, "attention (q, k, v, o)", "tiny", [])
    assert attention["value"] == ["k_proj", "o_proj", "q_proj", "v_proj"]


def test_list_methods_is_the_registry():
    from finetune.methods import METHODS

    listed = service.list_methods()
    assert [m["id"] for m in listed] == list(METHODS)
    lora = listed[0]
    assert {f["name"] for f in lora["fields"]} >= {"r", "lora_alpha", "use_dora", "use_rslora"}
    assert {m["id"] for m in listed if not m["can_merge"]} == {
        "prompt_tuning",
        "prefix_tuning",
        "p_tuning",
        "full",
    }


def test_progress_shows_peak_memory_beside_the_estimate():
    job = a_job(state=JobState.RUNNING, step=1, total_steps=4, memory_estimate_mb=2048.0)
    metric = Metric(1, 0.1, 2.0, None, 1e-4, 50.0, 1536.0, 1.0)
    assert "peak memory 1.50 GiB (estimated 2.00 GiB before the start)" in progress_html(
        job, [metric]
    )
    assert "peak memory" not in progress_html(job, [])


def test_an_encoder_classifies_and_refuses_other_datasets(settings, tiny_bert, tmp_path):
    shutil.copytree(tiny_bert, settings.models_dir / "bert")
    topics = service.add_sample(settings, "topics")
    chat = service.add_sample(settings, "arithmetic")
    spec = {"base_model": "bert", "dataset_id": topics["id"], "training": {"max_steps": 1}}
    estimate = service.estimate(settings, spec)
    assert estimate["task"] == "SEQ_CLS"
    head = 64 * 5 + 5  # the classifier for the sample's five labels trains too
    assert estimate["trainable_params"] > head
    started = service.start_job(settings, spec)
    job = Store(settings.data_dir).get_job(started["job_id"])
    assert job.spec["method_params"]["target_modules"] == ["query", "key", "value"]
    with pytest.raises(ValueError, match="needs a classification dataset"):
        service.start_job(settings, {**spec, "dataset_id": chat["id"]})
    with pytest.raises(ValueError, match="has no chat template"):
        service.preview_dataset(settings, chat["id"], "bert")


def test_method_choices_follow_the_model(with_tiny, tiny_bert):
    from finetune.methods import METHODS
    from webui.train_tab import method_choices

    shutil.copytree(tiny_bert, with_tiny.models_dir / "bert")
    update = method_choices(with_tiny, "bert", "ia3")
    assert [key for _, key in update["choices"]] == list(METHODS) and update["value"] == "ia3"
    assert method_choices(with_tiny, "no/such-model-here", "lora") == {"__type__": "update"}


def test_adapter_and_compare_handlers_say_what_is_missing(with_tiny):
    from webui.adapters_tab import on_combine_click, on_merge_click, parse_weights
    from webui.compare_tab import on_evaluate_click, on_results_show, tradeoff_rows

    assert parse_weights("", 4) == [0.25] * 4 and parse_weights("0.7; -0.3", 2) == [0.7, -0.3]
    with pytest.raises(ValueError, match="Weights: give numbers"):
        parse_weights("a, b", 2)
    assert list(on_combine_click(with_tiny, ["ad-0123456789ab"], "", "cat", 0.5, 0, "")) == [
        "**Not combined.** Pick two adapters or more."
    ]
    (refused,) = on_combine_click(
        with_tiny, ["ad-0123456789ab", "ad-0123456789ac"], "", "cat", 0.5, 0, ""
    )
    assert "does not exist" in refused
    assert on_merge_click(with_tiny, None, "float32") == "**Not merged.** Pick an adapter first."
    message, _ = on_evaluate_click(with_tiny, [], True, None, "auto", 10)
    assert message == "**Not started.** Pick a dataset to evaluate on."
    assert tradeoff_rows(with_tiny, []) == []
    *_, status = on_results_show(with_tiny, "job-0123456789ab", False)
    assert "does not exist" in status
