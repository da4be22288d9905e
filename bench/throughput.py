"""Training throughput and start latency: the app's job path vs a plain TRL script, side by side.

    make bench            (or: python bench/throughput.py --steps 8 --rounds 2)

Both train LoRA r=16 on q/k/v/o of the bundled model on the same rows with the same settings and
one torch thread, alternating app and plain runs. Tokens/s is taken per step the same way on both
sides (tokens since the last log / time since it) and compared as medians over steps 2..N. The app
runs through the real path: start_job -> huey queue -> worker process -> child process.
Prints ratios; the goal is app/plain >= 0.95. Not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import service  # noqa: E402
from config import Settings  # noqa: E402
from finetune.data import write_rows  # noqa: E402
from finetune.models import bundled_path  # noqa: E402
from finetune.samples import arithmetic  # noqa: E402
from storage.store import Store  # noqa: E402

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def run_plain(model: Path, rows: Path, steps: int, batch: int, max_length: int) -> dict:
    out = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "plain_trl.py"),
            str(model),
            str(rows),
            str(steps),
            str(batch),
            str(max_length),
        ],
        capture_output=True,
        text=True,
        check=True,
        env=ENV,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_app(settings: Settings, dataset_id: str, steps: int, batch: int, max_length: int) -> dict:
    spec = {
        "base_model": "SmolLM2-135M-Instruct",
        "dataset_id": dataset_id,
        "method": "lora",
        "training": {
            "max_steps": steps,
            "batch_size": batch,
            "max_length": max_length,
            "eval_fraction": 0.0,
            "learning_rate": 2e-4,
            "sample_prompts": 0,  # plain TRL generates no sample answers either
        },
    }
    clicked = time.time()
    job_id = service.start_job(settings, spec)["job_id"]
    store = Store(settings.data_dir)
    while not (job := store.get_job(job_id)).state.finished:
        time.sleep(0.2)
    if job.state.value != "succeeded":
        raise RuntimeError(f"app job {job.state.value}: {job.error}")
    metrics = [m for m in store.list_metrics(job_id) if m.loss is not None]
    return {
        "tokens_per_s": [m.tokens_per_s for m in metrics[1:]],
        "first_step_s": metrics[0].created_at - clicked,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models-dir", type=Path, default=ROOT / "models")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    model = bundled_path(args.models_dir.resolve())
    work = Path(tempfile.mkdtemp(prefix="adapterlab-bench-"))
    settings = Settings(data_dir=work / "data", models_dir=args.models_dir.resolve())
    Store(settings.data_dir).init()
    rows = work / "rows.jsonl"
    write_rows(arithmetic(args.steps * args.batch * 2, 0, seed=1)[0], rows)
    dataset_id = service.upload_dataset(settings, rows, "bench")["id"]
    worker = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "app.py"),
            "worker",
            "--data-dir",
            str(settings.data_dir),
            "--models-dir",
            str(settings.models_dir),
        ],
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    app_speed, plain_speed, app_first, plain_first, plain_load = [], [], [], [], []
    try:
        for round_ in range(1, args.rounds + 1):
            plain = run_plain(model, rows, args.steps, args.batch, args.max_length)
            app = run_app(settings, dataset_id, args.steps, args.batch, args.max_length)
            plain_speed += plain["tokens_per_s"]
            app_speed += app["tokens_per_s"]
            plain_first.append(plain["first_step_s"])
            plain_load.append(plain["load_s"])
            app_first.append(app["first_step_s"])
            print(
                f"round {round_}: plain {statistics.median(plain['tokens_per_s']):.1f} tok/s, "
                f"app {statistics.median(app['tokens_per_s']):.1f} tok/s",
                flush=True,
            )
    finally:
        worker.terminate()
        worker.wait(timeout=30)
    ratio = statistics.median(app_speed) / statistics.median(plain_speed)
    print(
        f"\ntrain tokens/s (median of steps 2..{args.steps}, {args.rounds} rounds): "
        f"app {statistics.median(app_speed):.1f}, plain TRL {statistics.median(plain_speed):.1f}"
    )
    print(f"throughput ratio app/plain: {ratio:.3f}  (goal >= 0.95)")
    start = statistics.median(app_first) - statistics.median(plain_load)
    print(
        f"start latency: Start -> first step {statistics.median(app_first):.1f} s in the app; "
        f"minus the plain script's model load ({statistics.median(plain_load):.1f} s): "
        f"{start:.1f} s; the plain script's own train() -> first step: "
        f"{statistics.median(plain_first):.1f} s"
    )


if __name__ == "__main__":
    main()
