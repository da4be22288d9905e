"""First-run quality: the base model vs the app's default adapter vs a plain TRL script.

    python bench/quality.py                    (arithmetic, 10 minutes a run: about 30 minutes)
    python bench/quality.py --samples arithmetic,chatterbot,topics,doc_titles --minutes 10
    python bench/quality.py --minutes 2 --plain "" --json quality.json

Each sample is stored through the app (add_sample) in a temporary data dir that a real worker
process serves. The app's run is what a new user gets: /start_job with nothing in `training` but
the time budget, so the method, its learning rate, batch, schedule and targets are the app's
defaults. The plain run is bench/plain_trl.py (PEFT + TRL, no app) on the same training rows with
the same LoRA settings, learning rate, batch and warm-up steps, stopped when the same minutes
are up (its rate constant after the warm-up: a script cannot know where a decay would end). Then one
evaluation job (the app's own, as the Compare tab starts it) scores the base model and both
adapters on the same held-out rows, split by group where the sample has one (arithmetic: the
operation). Metrics: exact match (arithmetic; topics, where the answer is the label), perplexity
(chatterbot: exp of the held-out answers' loss, lower is better), ROUGE-L (doc titles). One torch
thread everywhere; the runs go one after another, never side by side. Prints one table per sample;
not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ["OMP_NUM_THREADS"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import service  # noqa: E402
from bench.job_queue import start_worker  # noqa: E402
from bench.methods import device  # noqa: E402
from config import Settings  # noqa: E402
from finetune.data import read_rows, write_rows  # noqa: E402
from finetune.examples import split_rows  # noqa: E402
from finetune.models import BUNDLED_NAME  # noqa: E402
from jobs.runner import stop  # noqa: E402
from storage.store import EVAL_FILE, ROWS_FILE, JobState, Store  # noqa: E402

# sample -> (metric, group column, rows scored at most, new tokens per answer)
EVALUATION = {
    "arithmetic": ("exact_match", "operation", 200, 8),
    "chatterbot": ("perplexity", None, 200, 0),
    "topics": ("exact_match", None, 200, 8),
    "doc_titles": ("rouge", None, 200, 16),
}
HEADLINE = {"exact_match": "exact_match", "perplexity": "perplexity", "rouge": "rougeL"}
POLL_S = 1.0


def wait(store: Store, job_id: str, worker, timeout_s: float):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job = store.get_job(job_id)
        if job.state.finished:
            if job.state != JobState.SUCCEEDED:
                raise RuntimeError(f"job {job.id} {job.state.value}: {job.error}")
            return job
        if worker.poll() is not None:
            raise RuntimeError(f"the worker exited with {worker.returncode}")
        time.sleep(POLL_S)
    raise RuntimeError(f"job {job_id} not finished after {timeout_s:.0f} s")


def app_run(settings: Settings, dataset_id: str, minutes: float, worker) -> dict:
    spec = {
        "base_model": BUNDLED_NAME,
        "dataset_id": dataset_id,
        "training": {"max_minutes": minutes},
    }
    started = service.start_job(settings, spec)
    store = Store(settings.data_dir)
    job = wait(store, started["job_id"], worker, minutes * 60 + 900)
    metrics = store.list_metrics(job.id)
    steps = [m for m in metrics if m.loss is not None]
    evals = [m.eval_loss for m in metrics if m.eval_loss is not None]
    return {
        "adapter_id": job.adapter_id,
        "job": job,
        "steps": job.step,
        "train_s": steps[-1].created_at - steps[0].created_at if len(steps) > 1 else None,
        "final_eval_loss": evals[-1] if evals else None,
    }


def plain_run(settings: Settings, dataset, job, minutes: float, work: Path) -> dict:
    """plain_trl.py on the rows the app's job trained on, with its LoRA settings."""
    store = Store(settings.data_dir)
    folder = store.dataset_dir(dataset.id)
    rows, held_out = read_rows(folder / ROWS_FILE), read_rows(folder / EVAL_FILE)
    t, params = job.spec["training"], job.spec["method_params"]
    if not held_out:
        rows, held_out = split_rows(rows, t["eval_fraction"], t["seed"])
    write_rows(rows, work / "plain-rows.jsonl")
    write_rows(held_out[:32], work / "plain-eval.jsonl")
    out = work / "plain-adapter"
    command = [
        sys.executable,
        str(ROOT / "bench" / "plain_trl.py"),
        str(settings.models_dir / BUNDLED_NAME),
        str(work / "plain-rows.jsonl"),
        "1000000",
        str(t["batch_size"]),
        str(t["max_length"]),
        "--minutes",
        str(minutes),
        "--out",
        str(out),
        "--lr",
        repr(t["learning_rate"]),
        "--r",
        str(params["r"]),
        "--alpha",
        str(params["lora_alpha"]),
        "--targets",
        ",".join(params["target_modules"]),
        "--warmup",  # the app run's warm-up, in steps (a share of 10**6 would never end)
        str(max(1, round(t["warmup_ratio"] * job.step))),
        "--eval",
        str(work / "plain-eval.jsonl"),
    ]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=os.environ)
    if done.returncode != 0:
        raise RuntimeError(f"plain_trl.py failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    archive = work / "plain-adapter.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in out.rglob("*"):
            if path.is_file():
                zf.write(path, f"plain/{path.relative_to(out)}")
    imported = service.import_adapter(settings, archive, BUNDLED_NAME, "plain TRL")
    return {**result, "adapter_id": imported["adapter_id"]}


def evaluate(settings: Settings, sample: str, dataset_id: str, adapters: list, worker) -> dict:
    metric, group, rows, tokens = EVALUATION[sample]
    options = {"metric": metric, "max_rows": rows, "group_by": group}
    if tokens:
        options["max_new_tokens"] = tokens
    started = service.start_evaluation(settings, [None, *adapters], dataset_id, options)
    wait(Store(settings.data_dir), started["job_id"], worker, 3600)
    return service.evaluation_results(settings, started["job_id"])


def answers(settings: Settings, dataset, adapters: list, count: int = 3) -> list[dict]:
    """A few held-out prompts answered by the base and each adapter, greedy (the playground)."""
    folder = Store(settings.data_dir).dataset_dir(dataset.id)
    rows = read_rows(folder / EVAL_FILE) or split_rows(read_rows(folder / ROWS_FILE), 0.1, 42)[1]
    shown = []
    for row in rows[:count]:
        prompt = row["messages"][-2]["content"]
        system = row["messages"][0]["content"] if row["messages"][0]["role"] == "system" else ""
        params = {"max_new_tokens": 40, "system_prompt": system}
        outputs = service.compare(settings, prompt, [None, *adapters], params)["outputs"]
        shown.append({"prompt": prompt, "reference": row["messages"][-1]["content"],
                      "answers": [o["text"] for o in outputs]})  # fmt: skip
    return shown


def table(sample: str, results: dict, names: list[str], runs: list[dict]) -> None:
    metric = results["metric"]
    key = HEADLINE[metric]
    groups = sorted({g["group"] for s in results["summary"] for g in s.get("groups", [])}, key=str)
    head = f"{'model':<24}" + "".join(f"{g!s:>9}" for g in groups)
    if sample == "arithmetic":
        head += f"{'+ and -':>9}"
    head += f"{'all':>9}{'steps':>7}{'train s':>9}{'eval loss':>10}"
    print(f"\n{sample}: {metric} on {results['summary'][0]['rows']} held-out rows")
    print(head)
    for summary, name, run in zip(results["summary"], names, runs, strict=True):
        by = {g["group"]: g for g in summary.get("groups", [])}
        line = f"{name:<24}" + "".join(
            f"{by[g][key]:>9.3f}" if g in by else f"{'':>9}" for g in groups
        )
        if sample == "arithmetic":
            both = [by[g] for g in ("+", "-") if g in by]
            hits = sum(g[key] * g["rows"] for g in both)
            line += f"{hits / max(sum(g['rows'] for g in both), 1):>9.3f}"
        line += f"{summary[key]:>9.3f}"
        line += f"{run.get('steps', '') or '':>7}"
        line += f"{run['train_s']:>9.0f}" if run.get("train_s") else f"{'':>9}"
        loss = run.get("final_eval_loss")
        line += f"{loss:>10.4f}" if loss is not None else f"{'':>10}"
        print(line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models-dir", type=Path, default=ROOT / "models")
    parser.add_argument("--samples", default="arithmetic")
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument(
        "--plain", default="arithmetic", help="samples that get a plain TRL run too ('' none)"
    )
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    samples = [s.strip() for s in args.samples.split(",") if s.strip()]
    unknown = [s for s in samples if s not in EVALUATION]
    if unknown:
        raise SystemExit(f"--samples: unknown {unknown[0]} (known: {', '.join(EVALUATION)})")
    command = shlex.join(["python", "bench/quality.py", *sys.argv[1:]])
    print(f"command: {command}\ndevice: {device()}", flush=True)
    report = {"command": command, "device": device(), "samples": {}}
    with tempfile.TemporaryDirectory(prefix="adapterlab-quality-") as tmp:
        work = Path(tmp)
        settings = Settings(data_dir=work / "data", models_dir=args.models_dir.resolve())
        Store(settings.data_dir).init()
        worker = start_worker(settings, work / "worker.log")
        try:
            for sample in samples:
                dataset = Store(settings.data_dir).get_dataset(
                    service.add_sample(settings, sample)["id"]
                )
                app = app_run(settings, dataset.id, args.minutes, worker)
                print(f"{sample}: app run done ({app['steps']} steps)", flush=True)
                names, runs, adapters = (
                    ["base model", "app default"],
                    [{}, app],
                    [app["adapter_id"]],
                )
                if sample in args.plain.split(","):
                    plain = plain_run(settings, dataset, app["job"], args.minutes, work)
                    print(f"{sample}: plain TRL run done ({plain['steps']} steps)", flush=True)
                    names.append("plain TRL script")
                    runs.append(plain)
                    adapters.append(plain["adapter_id"])
                results = evaluate(settings, sample, dataset.id, adapters, worker)
                table(sample, results, names, runs)
                shown = answers(settings, dataset, adapters)
                for item in shown:
                    print(f"  {item['prompt'][:70]!r} (reference {item['reference'][:40]!r})")
                    for name, text in zip(names, item["answers"], strict=True):
                        print(f"    {name:<18} {text[:90]!r}")
                report["samples"][sample] = {
                    "summary": results["summary"],
                    "runs": [{k: v for k, v in r.items() if k != "job"} for r in runs],
                    "names": names,
                    "answers": shown,
                    "app_spec": app["job"].spec,
                }
        finally:
            stop(worker, 30)
    if args.json:
        args.json.write_text(json.dumps(report, indent=1, default=str), encoding="utf-8")


if __name__ == "__main__":
    main()
