"""The PEFT trade-off table: every method on the bundled model and the arithmetic sample.

    python bench/methods.py              (all methods, 20 steps each: about 18 minutes on 2 cores)
    python bench/methods.py --methods lora,ia3,full --steps 10 --eval 20 --lr lora=5e-4

Each method trains once with the same step budget, batch and rows, through finetune.train.train
(the job's own path), in a fresh child process with one torch thread, so that its peak memory is
its own. Then, in the same child, the trained result answers held-out questions through the
playground's ModelCache (greedy, the same system prompt as in training), and the base model does
so once, in a child of its own, for "before". Measured:
  trainable %    trainable / total parameters, as the run counts them
  adapter MB     the files the run wrote to its output folder
  peak RSS       the child's peak RSS (VmHWM) when training returns: imports, model, optimizer,
                 activations; the eval that follows is not counted
  s/step         wall seconds between the first and the last logged step / (steps - 1): the
                 first step (warm-up, lazy allocation) is left out
  accuracy       exact match of the first integer in the answer with the true result
Learning rates differ by method (PEFT methods want larger ones): the registry's defaults.
The defaults (20 steps of 8, 30 questions) keep all eleven methods under 20 minutes on the
2-core box: each child spends ~15 s loading, 2-5 s a step and ~0.5 s a question.
Prints one table. Not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from finetune.methods import METHODS, get_method  # noqa: E402
from finetune.train import Reporter  # noqa: E402

MODEL = "SmolLM2-135M-Instruct"
SEED = 0
MAX_NEW_TOKENS = 8
# Each method's default peak rate, from the registry (bench/learning_rates.py measured them).
LEARNING_RATES = {method_id: method.learning_rate for method_id, method in METHODS.items()}
# Local files only, one thread everywhere: a missing network must not add retries to the times.
ENV = {
    **os.environ,
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "OMP_NUM_THREADS": "1",
    "TOKENIZERS_PARALLELISM": "false",
}
_INTEGER = re.compile(r"-?\d+")


# ---- child side: one method (or the base) in this process ----


class _Recorder(Reporter):
    """A Reporter that keeps the wall time of every logged step."""

    def __init__(self) -> None:
        self.steps: list[tuple[int, float, dict]] = []

    def logged(self, step: int, values: dict[str, float]) -> None:
        if "loss" in values:
            self.steps.append((step, time.perf_counter(), values))


def _peak_rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def score(answer: str, expected: str) -> bool:
    """Exact match of the first integer in the answer (a verbose answer that starts by repeating
    the question scores wrong, as it would for a user who wanted the number)."""
    found = _INTEGER.search(answer.replace(",", ""))
    return found is not None and found.group() == expected


def evaluate(model_path: str, adapter: Path | None, rows: list[dict]) -> dict:
    from finetune.generate import GenerationParams, ModelCache
    from finetune.samples import ARITHMETIC_SYSTEM

    cache, entry = ModelCache(), None if adapter is None else ("bench", adapter)
    params = GenerationParams(max_new_tokens=MAX_NEW_TOKENS, system_prompt=ARITHMETIC_SYSTEM)
    start, right, examples = time.perf_counter(), 0, []
    for row in rows:
        question, expected = row["messages"][1]["content"], row["messages"][2]["content"]
        answer = cache.generate(model_path, [entry], question, params)[0]["text"]
        right += score(answer, expected)
        if len(examples) < 3:
            examples.append(f"{question} -> {answer!r} (want {expected})")
    return {
        "accuracy": right / max(len(rows), 1),
        "eval_s": time.perf_counter() - start,
        "examples": examples,
    }


def child(method_id: str, args: argparse.Namespace) -> dict:
    import torch

    torch.set_num_threads(1)
    from finetune.samples import arithmetic

    model_path = str(args.models_dir / MODEL)
    # The sample's own split: the same unseen questions whatever the step budget.
    train_rows, eval_rows = arithmetic(seed=SEED)
    rows, held_out = train_rows[: args.steps * args.batch], eval_rows[: args.eval]
    if method_id == "base":
        return evaluate(model_path, None, held_out)

    from finetune.spec import parse_spec
    from finetune.train import train

    spec = parse_spec(
        {
            "base_model": model_path,
            "dataset_id": "ds-0123456789ab",
            "method": method_id,
            "training": {
                "max_steps": args.steps,
                "batch_size": args.batch,
                "max_length": args.max_length,
                "learning_rate": args.learning_rate,
                "eval_fraction": 0.0,  # accuracy is measured after; no periodic eval loss
                "seed": SEED,
                "sample_prompts": 0,  # timed steps only: no sample answers in between
                "save_steps": 1_000_000,
            },
        }
    )
    work = Path(tempfile.mkdtemp(prefix=f"bench-{method_id}-", dir=args.work))
    out = work / "out"
    recorder = _Recorder()
    start = time.perf_counter()
    result = train(spec, rows, model_path, work / "trainer", out, recorder)
    train_s = time.perf_counter() - start
    peak_mb = _peak_rss_mb()
    logged = recorder.steps
    per_step = (
        (logged[-1][1] - logged[0][1]) / (logged[-1][0] - logged[0][0])
        if len(logged) > 1 and logged[-1][0] > logged[0][0]
        else train_s / max(result.step, 1)
    )
    losses = [v["loss"] for _, _, v in logged]
    tail = losses[-5:]
    return {
        # one pass over new rows: the last steps' loss is already a held-out estimate
        "loss_tail": sum(tail) / len(tail) if tail else None,
        "steps": result.step,
        "trainable": result.trainable_params,
        "total": result.total_params,
        "adapter_bytes": sum(p.stat().st_size for p in out.rglob("*") if p.is_file()),
        "peak_mb": peak_mb,
        "max_logged_mb": max((v.get("memory_mb", 0.0) for _, _, v in logged), default=0.0),
        "s_per_step": per_step,
        "train_s": train_s,
        "loss_first": losses[0] if losses else None,
        "loss_last": losses[-1] if losses else None,
        **(evaluate(model_path, out, held_out) if held_out else {"accuracy": None}),
    }


# ---- parent side ----


def run_child(method_id: str, args: argparse.Namespace, learning_rate: float) -> dict:
    cmd = [sys.executable, __file__, "--child", method_id, "--work", str(args.work)]
    cmd += ["--models-dir", str(args.models_dir), "--steps", str(args.steps)]
    cmd += ["--batch", str(args.batch), "--eval", str(args.eval)]
    cmd += ["--max-length", str(args.max_length), "--learning-rate", repr(learning_rate)]
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env=ENV, cwd=ROOT)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines() or ["no output"]
        return {"error": f"exit {done.returncode}: {lines[-1]}", "stderr": done.stderr[-4000:]}
    return {**json.loads(done.stdout.strip().splitlines()[-1]), "wall_s": wall}


def parse_rates(values: list[str]) -> dict[str, float]:
    rates = dict(LEARNING_RATES)
    for item in (part for value in values for part in value.split(",") if part.strip()):
        name, _, number = item.partition("=")
        if name.strip() not in METHODS or not number:
            raise SystemExit(f"--lr {item}: expected METHOD=RATE with METHOD one of the methods")
        rates[name.strip()] = float(number)
    return rates


def device() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{cpu}, {os.cpu_count()} cores, {gpu}; torch {torch.__version__}, 1 thread per child"


def _size(n: int) -> str:
    return f"{n / 2**20:.2f} MB" if n < 2**30 else f"{n / 2**30:.2f} GB"


def report(results: dict[str, dict], before: dict, rates: dict[str, float]) -> None:
    base = before.get("accuracy")
    base_text = f"{100 * base:.0f}%" if base is not None else "failed"
    head = (
        f"{'method':<14} {'family':<19} {'lr':>7} {'trainable %':>11} {'adapter':>10} "
        f"{'peak RSS':>9} {'s/step':>7} {'loss':>12} {'accuracy':>13}"
    )
    print("\n" + head + "\n" + "-" * len(head))
    for method_id, r in results.items():
        family = get_method(method_id).family
        if "error" in r:
            print(f"{method_id:<14} {family:<19} {rates[method_id]:7.0e} failed: {r['error']}")
            continue
        pct = 100 * r["trainable"] / max(r["total"], 1)
        loss = f"{r['loss_first']:.2f}->{r['loss_last']:.2f}" if r["loss_first"] else "-"
        print(
            f"{method_id:<14} {family:<19} {rates[method_id]:7.0e} {pct:10.4f}% "
            f"{_size(r['adapter_bytes']):>10} {r['peak_mb']:6.0f} MB {r['s_per_step']:7.2f} "
            f"{loss:>12} {base_text:>5} -> {100 * r['accuracy']:3.0f}%"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models-dir", type=Path, default=ROOT / "models")
    parser.add_argument("--methods", default=",".join(METHODS), help="comma list of method ids")
    parser.add_argument("--steps", type=int, default=20, help="optimizer steps per method")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--eval", type=int, default=30, help="held-out questions")
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument(
        "--lr", action="append", default=[], help="METHOD=RATE overrides (repeat or comma list)"
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--learning-rate", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.models_dir = args.models_dir.resolve()

    if args.child:
        print(json.dumps(child(args.child, args)))
        return

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    for method_id in methods:
        get_method(method_id)  # an unknown id fails now, naming the known ones
    rates = parse_rates(args.lr)
    if not (args.models_dir / MODEL).is_dir():
        raise SystemExit(f"{args.models_dir / MODEL} is missing: run `make model` first")
    command = shlex.join(["python", "bench/methods.py", *sys.argv[1:]])
    print(f"command: {command}\ndevice: {device()}", flush=True)
    print(
        f"data: arithmetic sample, {args.steps * args.batch} train rows (one pass), "
        f"{args.eval} held-out questions; {args.steps} steps x batch {args.batch}, "
        f"max length {args.max_length}, seed {SEED}",
        flush=True,
    )
    started = time.perf_counter()
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="adapterlab-methods-bench-") as work:
        args.work = Path(work)
        before = run_child("base", args, 0.0)
        what = before.get("error") or f"{100 * before['accuracy']:.0f}% ({before['eval_s']:.0f} s)"
        print(f"base model: {what}", flush=True)
        for method_id in methods:
            r = results[method_id] = run_child(method_id, args, rates[method_id])
            if "error" in r:
                print(f"{method_id}: failed, {r['error']}", flush=True)
                continue
            print(
                f"{method_id}: train {r['train_s']:.0f} s, eval {r['eval_s']:.0f} s, "
                f"child {r['wall_s']:.0f} s; e.g. {r['examples'][0]}",
                flush=True,
            )
    wall = time.perf_counter() - started
    report(results, before, rates)
    print(
        f"(peak RSS: the child's VmHWM when training returned, Python and torch included; "
        f"s/step: steps 2..{args.steps}; accuracy: base -> trained, first integer of a greedy "
        f"{MAX_NEW_TOKENS}-token answer, {args.eval} unseen questions; total {wall / 60:.1f} min)"
    )
    for method_id, r in results.items():
        if "error" in r:
            print(f"\n{method_id} traceback (tail):\n  " + r["stderr"].replace("\n", "\n  "))
    if args.json:
        payload = {"command": command, "device": device(), "wall_s": wall, "before": before}
        args.json.write_text(
            json.dumps({**payload, "learning_rates": rates, "methods": results}, indent=1),
            encoding="utf-8",
        )


if __name__ == "__main__":
    main()
