"""Packing and shared prefixes on the chatterbot sample: tokens/s and held-out loss per minute.

    python bench/packing.py                  (3 runs of 3 minutes, then their evals: ~15 min)
    python bench/packing.py --minutes 1 --rows 60

Three ways to batch the same rows, each trained for the same minutes through finetune.train (the
job's own code) in a fresh child process with one torch thread, LoRA at the app's defaults:
  padded     rows padded to the longest in their batch, every token computed per row
  shared     the same batches, the tokens all rows open with computed once (the default)
  packed     TRL's best-fit packing into max-length sequences, no padding (training.packing)
Chatterbot rows have no system prompt, so SmolLM2's template adds its default one to every row:
the shared prefix is that header. Measured: training tokens/s (real tokens, as the job logs them),
the steps and tokens the minutes held, and afterwards the held-out loss (token-weighted mean over
the same unseen rows' answers, computed the same way for all three). Not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.methods import device  # noqa: E402

MODEL = "SmolLM2-135M-Instruct"
MODES = {
    "padded": {"share_prefix": False},
    "shared": {"share_prefix": True},
    "packed": {"packing": True},
}
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


def child(mode: str, args) -> dict:
    import torch

    torch.set_num_threads(1)
    from finetune.evaluate import answer_losses
    from finetune.examples import split_rows
    from finetune.generate import ModelCache
    from finetune.samples import chatterbot
    from finetune.spec import parse_spec
    from finetune.train import Reporter, train

    model_path = str(args.models_dir / MODEL)
    rows, held_out = split_rows(chatterbot()[0], 0.1, 42)
    speeds = []

    class Speed(Reporter):
        def logged(self, step, values):
            if "tokens_per_s" in values:
                speeds.append(values["tokens_per_s"])

    spec = parse_spec(
        {
            "base_model": model_path,
            "dataset_id": "ds-0123456789ab",
            "training": {
                "max_minutes": args.minutes,
                "eval_fraction": 0.0,
                "sample_prompts": 0,
                "save_steps": 1_000_000,
                **MODES[mode],
            },
        }
    )
    work = Path(tempfile.mkdtemp(prefix=f"bench-packing-{mode}-", dir=args.work))
    result = train(spec, rows, model_path, work / "trainer", work / "out", Speed())
    cache = ModelCache()
    total, count = 0.0, 0
    with cache.using(model_path, ("bench", work / "out")) as (model, tokenizer, _):
        for row in held_out[: args.rows]:
            nll, tokens = answer_losses(model, tokenizer, row)
            total, count = total + nll, count + tokens
    return {
        "steps": result.step,
        "tokens_per_s": statistics.median(speeds[1:] or speeds),
        "held_out_loss": total / max(count, 1),
        "held_out_tokens": count,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models-dir", type=Path, default=ROOT / "models")
    parser.add_argument("--minutes", type=float, default=3.0)
    parser.add_argument("--rows", type=int, default=100, help="held-out rows scored")
    parser.add_argument("--child")
    parser.add_argument("--work", type=Path)
    args = parser.parse_args()
    args.models_dir = args.models_dir.resolve()
    if args.child:
        print(json.dumps(child(args.child, args)))
        return
    print(f"command: {shlex.join(['python', 'bench/packing.py', *sys.argv[1:]])}")
    print(f"device: {device()}", flush=True)
    results = {}
    with tempfile.TemporaryDirectory(prefix="adapterlab-packing-") as tmp:
        for mode in MODES:
            start = time.perf_counter()
            done = subprocess.run(
                [sys.executable, __file__, "--child", mode, "--work", tmp,
                 "--models-dir", str(args.models_dir), "--minutes", str(args.minutes),
                 "--rows", str(args.rows)],
                capture_output=True, text=True, env=ENV, cwd=ROOT,
            )  # fmt: skip
            if done.returncode != 0:
                raise SystemExit(f"{mode} failed:\n{done.stderr[-3000:]}")
            results[mode] = json.loads(done.stdout.strip().splitlines()[-1])
            print(f"{mode}: done in {time.perf_counter() - start:.0f} s", flush=True)
    base = results["padded"]["tokens_per_s"]
    print(f"\n{args.minutes:g} minutes each on chatterbot; held-out loss on {args.rows} rows")
    print(f"{'batches':<8}{'tokens/s':>10}{'x padded':>10}{'steps':>7}{'held-out loss':>15}")
    for mode, r in results.items():
        print(
            f"{mode:<8}{r['tokens_per_s']:>10.1f}{r['tokens_per_s'] / base:>10.2f}"
            f"{r['steps']:>7}{r['held_out_loss']:>15.4f}"
        )


if __name__ == "__main__":
    main()
