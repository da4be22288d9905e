"""Evaluate and merge as queued jobs on a real worker; the metrics against hand-computed values."""

from __future__ import annotations

import math
import zipfile

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

import service
from finetune.evaluate import (
    answer_losses,
    evaluate,
    exact_match,
    normalize,
    rouge,
)
from finetune.fields import SpecError
from finetune.generate import GenerationParams, ModelCache
from storage.store import JobState, Store
from tests.test_jobs import spec, wait_finished


def test_exact_match_and_rouge_by_hand():
    assert normalize("  The Answer  is 42. ") == "the answer is 42"
    assert exact_match("42.", "42") == 1.0 and exact_match("It is 42", "42") == 0.0
    scores = rouge("the cat sat", "the cat sat down")
    # unigrams: 3 of 3 predicted are right, 3 of 4 referenced are found: F1 = 2*1*.75/1.75
    assert scores["rouge1"] == pytest.approx(2 * 0.75 / 1.75)
    # bigrams: the-cat, cat-sat of the reference's the-cat, cat-sat, sat-down: F1 = 2*1*(2/3)/(5/3)
    assert scores["rouge2"] == pytest.approx(0.8)
    assert scores["rougeL"] == pytest.approx(2 * 0.75 / 1.75)


def chat_row(question: str, answer: str) -> dict:
    return {
        "messages": [
            {"role": "user", "content": question},
            {"role": "assistant", "content": answer},
        ]
    }


def test_perplexity_is_transformers_own_answer_loss(tiny_model):
    """Our per-row loss sum equals the mean loss transformers computes with the prompt masked."""
    model = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    row = chat_row("What is 12 + 13?", "25")
    total, count = answer_losses(model, tokenizer, row)
    prompt = tokenizer.apply_chat_template(
        row["messages"][:1], add_generation_prompt=True, tokenize=True, return_dict=True
    )["input_ids"]
    full = tokenizer.apply_chat_template(row["messages"], tokenize=True, return_dict=True)[
        "input_ids"
    ]
    labels = [-100] * len(prompt) + full[len(prompt) :]
    with torch.no_grad():
        loss = model(input_ids=torch.tensor([full]), labels=torch.tensor([labels])).loss
    assert count == len(full) - len(prompt)
    assert math.exp(total / count) == pytest.approx(math.exp(float(loss)), rel=1e-5)


def test_exact_match_counts_the_rows_answered_as_referenced(tiny_model):
    """References made from the base's own greedy answers for half the rows: exactly 0.5."""
    cache = ModelCache()
    params = GenerationParams(max_new_tokens=4)
    questions = [f"What is {a} + 10?" for a in range(10, 16)]
    answers = [cache.generate(str(tiny_model), [None], q, params)[0]["text"] for q in questions]
    rows = [
        chat_row(q, a if i % 2 == 0 else a + " not this")
        for i, (q, a) in enumerate(zip(questions, answers, strict=True))
    ]
    seen = []
    found = evaluate(
        cache, str(tiny_model), [None], rows, "exact_match", params,
        progress=lambda done, total: seen.append((done, total)) or True,
    )  # fmt: skip
    assert found["summary"][0]["exact_match"] == 0.5 and not found["stopped"]
    assert [e["answers"][0]["score"] for e in found["examples"]] == [1.0, 0.0] * 3
    assert seen[-1] == (6, 6)
    stopped = evaluate(
        cache, str(tiny_model), [None], rows, "exact_match", params, lambda d, t: d < 2
    )
    assert stopped["stopped"] and stopped["summary"] == []


@pytest.fixture(scope="module")
def trained(worker_settings, dataset_id, tiny_model):
    """A LoRA adapter and a prompt-tuning adapter trained through the queue."""
    made = {}
    for method, params in (("lora", {"r": 4}), ("prompt_tuning", {})):
        job_spec = {**spec(tiny_model, dataset_id, max_steps=2), "method": method}
        job_spec["method_params"] = params
        job_id = service.start_job(worker_settings, job_spec)["job_id"]
        job = wait_finished(worker_settings, job_id)
        assert job.state == JobState.SUCCEEDED, job.error_detail
        made[method] = job.adapter_id
    return made


def test_an_evaluation_job_scores_base_and_adapters(worker_settings, dataset_id, trained):
    store = Store(worker_settings.data_dir)
    ids = [None, trained["lora"], trained["prompt_tuning"]]
    started = service.start_evaluation(
        worker_settings, ids, dataset_id, {"max_rows": 4, "max_new_tokens": 4}
    )
    assert started["metric"] == "exact_match" and started["rows"] == 4
    job = wait_finished(worker_settings, started["job_id"])
    assert job.state == JobState.SUCCEEDED, job.error_detail
    assert (job.step, job.total_steps) == (12, 12)
    results = service.evaluation_results(worker_settings, job.id)
    assert [s["adapter"] for s in results["summary"]] == ids
    assert all(0 <= s["exact_match"] <= 1 and s["rows"] == 4 for s in results["summary"])
    assert len(results["examples"]) == 4
    assert all(e["reference"].strip() for e in results["examples"])
    for example in results["examples"]:
        assert [a["adapter"] for a in example["answers"]] == ids
        for answer in example["answers"]:
            assert answer["score"] == exact_match(answer["text"], example["reference"])
    scored = store.job_evaluations(job.id)
    assert {r["adapter_id"] for r in scored} == set(ids)

    rows = service.tradeoffs(worker_settings, [trained["lora"], trained["prompt_tuning"]])
    lora = rows[0]
    assert lora["metric"] == "exact_match" and lora["metric_value"] is not None
    assert lora["inference_overhead"] > 0 and lora["peak_memory_mb"] > 0
    assert lora["trainable_percent"] > rows[1]["trainable_percent"] > 0
    assert lora["train_seconds"] > 0 and lora["size_bytes"] > rows[1]["size_bytes"]


def test_a_merge_job_writes_a_model_that_answers_as_the_adapter(
    worker_settings, trained, tiny_model, tmp_path
):
    started = service.start_merge(worker_settings, trained["lora"], "float32")
    job = wait_finished(worker_settings, started["job_id"])
    assert job.state == JobState.SUCCEEDED, job.error_detail
    assert job.result["max_logit_diff"] < 1e-4 and job.result["dtype"] == "float32"
    path = service.download_merged(worker_settings, job.id)
    with zipfile.ZipFile(path) as zf:
        zf.extractall(tmp_path)
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    store = Store(worker_settings.data_dir)
    adapter = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(tiny_model), store.adapter_dir(trained["lora"])
    ).eval()
    ids = torch.tensor([[1, 5, 9, 14, 20]])
    with torch.no_grad():
        assert torch.allclose(merged(ids).logits, adapter(ids).logits, atol=1e-4)
    assert not list((tmp_path / "merged").glob("*.bin")), "safetensors only"

    half = service.start_merge(worker_settings, trained["lora"], "bfloat16")
    job = wait_finished(worker_settings, half["job_id"])
    assert job.state == JobState.SUCCEEDED and job.result["dtype"] == "bfloat16"
    assert 0 < job.result["max_logit_diff"] < 0.1 * job.result["max_logit"]
    assert any(m["job_id"] == job.id for m in service.merged_models(worker_settings))


def test_refusals_name_the_field(worker_settings, dataset_id, trained):
    with pytest.raises(SpecError, match="Prompt tuning adapters cannot be merged"):
        service.start_merge(worker_settings, trained["prompt_tuning"])
    with pytest.raises(SpecError, match="dtype: must be one of float32"):
        service.start_merge(worker_settings, trained["lora"], "int3")
    with pytest.raises(SpecError, match="accuracy is for classification models"):
        service.start_evaluation(
            worker_settings, [trained["lora"]], dataset_id, {"metric": "accuracy"}
        )
    with pytest.raises(SpecError, match=r"options\.max_rows: must be from 1"):
        service.start_evaluation(
            worker_settings, [None, trained["lora"]], dataset_id, {"max_rows": 0}
        )
    with pytest.raises(SpecError, match=r"options\.top: unknown"):
        service.start_evaluation(worker_settings, [trained["lora"]], dataset_id, {"top": 1})
    with pytest.raises(SpecError, match=r"options\.split: must be one of held_out, all; got"):
        service.start_evaluation(worker_settings, [trained["lora"]], dataset_id, {"split": "some"})
    with pytest.raises(SpecError, match="dataset_id: no dataset"):
        service.start_evaluation(worker_settings, [trained["lora"]], "ds-000000000000")
    with pytest.raises(ValueError, match="not an evaluation"):
        service.evaluation_results(
            worker_settings, Store(worker_settings.data_dir).list_jobs()[-1].id
        )


def test_all_rows_of_a_dataset_made_to_evaluate_on(settings, store, tmp_path):
    """split "all": every row (an uploaded eval file); held_out: only the split training left."""
    import service
    from jobs.model_jobs import eval_rows

    path = tmp_path / "eval.jsonl"
    path.write_text(
        "".join(f'{{"prompt": "What is {a} + 1?", "completion": "{a + 1}"}}\n' for a in range(40))
    )
    dataset_id = service.upload_dataset(settings, [str(path)], "to evaluate")["id"]
    spec = {"dataset_id": dataset_id, "max_rows": 100, "eval_fraction": 0.1, "seed": 42}
    assert len(eval_rows(store, {**spec, "split": "all"})) == 40
    assert len(eval_rows(store, {**spec, "split": "held_out"})) == 4
    assert len(eval_rows(store, {**spec, "split": "all", "max_rows": 7})) == 7


def test_an_adapter_that_held_out_nothing_is_flagged(settings, store):
    """Evaluating on the dataset an adapter trained on with eval_fraction 0 scores its own
    training rows: the start says so (and which split is used when adapters differ)."""
    import service
    from service.evaluation import _split_of

    dataset_id = service.add_sample(settings, "arithmetic")["id"]
    ids = []
    for name, fraction, seed in (("a", 0.0, 1), ("b", 0.2, 7), ("c", 0.1, 3)):
        spec = {"training": {"eval_fraction": fraction, "seed": seed}}
        job = store.add_job(name, spec, dataset_id)
        staged = store.tmp_dir()
        (staged / "adapter_config.json").write_text("{}")
        adapter = store.add_adapter(staged, job_id=job.id, name=name, base_model="m", method="lora")
        ids.append(adapter.id)
    split, warnings = _split_of(store, ids, dataset_id)
    assert split == (0.2, 7), "the first adapter that held rows out"
    assert any(w.startswith("a held out no rows of this dataset") for w in warnings)
    assert any("held out different rows" in w for w in warnings)
    assert _split_of(store, ids[2:], dataset_id) == ((0.1, 3), [])
