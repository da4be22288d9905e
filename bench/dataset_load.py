"""Dataset upload speed and memory: the app's upload + preview vs `datasets.load_dataset("json")`.

    python bench/dataset_load.py              (100,000 chat rows, ~50 MB)
    python bench/dataset_load.py --rows 20000 --rounds 3

Writes a seeded JSONL file of OpenAI-style chat rows, then measures each of these in a fresh
child process, so that every peak is its own:
  ours            upload_dataset (refuse bad rows), then preview_dataset with the bundled model
  ours+lengths    the same with the token-length check at upload (every row tokenized)
  reference       datasets.load_dataset("json", ...) with a fresh cache, then len(ds) and ds[:3]
"Extra memory" is the child's peak RSS minus its RSS once its modules are imported (torch and
transformers included for ours; tokenizer loading counts as work). Children run in turn, one
torch thread. The goal from the issue: upload + preview under 10 s and under 1 GB extra memory
on the 2-core box. Also prints where our time goes, by timing the functions upload_dataset and
preview_dataset call. Not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODEL = "SmolLM2-135M-Instruct"
GOAL_S, GOAL_MB = 10.0, 1024.0
# Local files only: a missing network must not add retries to anyone's time.
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}

_WORDS = (
    "the a of to and in is it you that for on with as was be this have are or by not but from at "
    "what all were when we there can an your which their said if will each about how up out them "
    "then she many some so these would other into has more her two like him see time could no "
    "make than first been its who now people my made over did down only way find use may water "
    "long little very after words called just where most know get through back much before go "
    "good new write our used me man too any day same right look think also around another came "
    "come work three word must because does part even place well such here take why things help "
    "put years different away again off went old number great tell men say small every found "
    "still between name should home big give air line set own under read last never us left end "
    "along while might next sound below saw something thought both few those always looked show "
    "large often together asked house world going want school important until form food keep "
    "children feet land side without boy once animals life enough took sometimes four head above "
    "kind began almost live page got earth need far hand high year mother light parts country "
    "father let night following picture being study second eyes soon times story boys since white "
    "days ever paper hard near sentence better best across during today others however sure means "
    "knew its try told young miles sun ways thing whole hear example heard several change answer "
    "room sea against top turned learn point city play toward five using himself usually money "
    "café naïve résumé déjà façade — “quoted” 東京 😀"
)
WORDS = _WORDS.split()
SYSTEMS = (
    "You are a helpful assistant.",
    "You are a concise assistant. Answer in plain words.",
    "You answer questions about travel, food and daily life.",
    "Reply briefly and kindly; say when you are not sure.",
    "You are a support agent for a small online shop.",
)


def _sentence(rng: random.Random, low: int, high: int) -> str:
    words = rng.choices(WORDS, k=rng.randint(low, high))
    return " ".join(words).capitalize() + rng.choice(".?!")


def _text(rng: random.Random, chars: int) -> str:
    out = []
    while sum(len(s) + 1 for s in out) < chars:
        out.append(_sentence(rng, 4, 14))
    return " ".join(out)


def write_chat_file(path: Path, rows: int, seed: int) -> None:
    """~500 bytes a row of varied, non-repeating system / user / assistant turns."""
    rng = random.Random(seed)
    with path.open("w", encoding="utf-8") as f:
        for i in range(rows):
            row = {
                "messages": [
                    {"role": "system", "content": rng.choice(SYSTEMS)},
                    {"role": "user", "content": f"#{i} " + _text(rng, rng.randint(30, 130))},
                    {"role": "assistant", "content": _text(rng, rng.randint(100, 300))},
                ]
            }
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


# ---- child side: one measurement in this process ----


def _status_mb(key: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    return 0.0


def _reset_peak() -> None:
    """Reset VmHWM (= ru_maxrss) to the current RSS."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass  # then a phase's peak is the peak so far: an overestimate, never under


class Meter:
    """Seconds and peak RSS per named phase, nested phases included in their parents' peaks.

    VmHWM is read and reset (clear_refs 5) whenever a phase starts or ends, so each phase's peak
    is the highest RSS seen while it ran. Seconds are exclusive of nested phases.
    """

    def __init__(self) -> None:
        self.baseline = self.peak = _status_mb("VmRSS")
        _reset_peak()  # a peak while importing is not the work's
        self.seconds: dict[str, float] = defaultdict(float)
        self.peaks: dict[str, float] = defaultdict(float)  # extra MB over the baseline
        self._stack: list[list[float]] = []  # [seconds in nested phases, peak MB]

    def sample(self) -> None:
        hwm = _status_mb("VmHWM")
        self.peak = max(self.peak, hwm)
        for frame in self._stack:
            frame[1] = max(frame[1], hwm)
        _reset_peak()

    def extra(self, peak_mb: float) -> float:
        return max(0.0, peak_mb - self.baseline)

    def wrap(self, name: str, fn):
        def timed(*args, **kwargs):
            self.sample()
            self._stack.append([0.0, _status_mb("VmRSS")])
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spent = time.perf_counter() - start
                self.sample()
                nested, peak = self._stack.pop()
                self.seconds[name] += spent - nested
                self.peaks[name] = max(self.peaks[name], self.extra(peak))
                if self._stack:
                    self._stack[-1][0] += spent

        return timed


def _instrument(meter: Meter) -> None:
    """Time what upload_dataset / preview_dataset call, where they look it up."""
    import finetune.preview
    import finetune.sources
    import service.datasets
    import service.uploads as da
    from storage.store import Store

    finetune.sources.decode = meter.wrap("decode UTF-8", finetune.sources.decode)
    finetune.sources._read_jsonl_bytes = meter.wrap(
        "json.loads lines", finetune.sources._read_jsonl_bytes
    )
    da.read_sources = meter.wrap("read file (rest of read_sources)", da.read_sources)
    da.parse = meter.wrap("parse: normalize, check, dedupe", da.parse)
    for name in ("apply_policy", "content_stats"):
        setattr(da, name, meter.wrap(name, getattr(da, name)))
    service.datasets.sample_rows = meter.wrap("sample_rows", service.datasets.sample_rows)
    da._check_lengths = meter.wrap("length check (tokenize all)", da._check_lengths)
    da._digest = meter.wrap("hash", da._digest)
    da.write_lines = meter.wrap("write rows.jsonl", da.write_lines)
    da.shutil.copyfile = meter.wrap("copy original", da.shutil.copyfile)
    Store.add_dataset = meter.wrap("store.add_dataset", Store.add_dataset)
    for name in ("load_tokenizer", "render", "token_stats"):
        setattr(finetune.preview, name, meter.wrap(name, getattr(finetune.preview, name)))


def child_ours(path: Path, work: Path, models_dir: Path, options: dict, preview: bool) -> dict:
    import torch

    # Imported before the baseline, as app.py warms them at start-up.
    from transformers import AutoConfig, AutoTokenizer, PreTrainedTokenizerFast  # noqa: F401

    torch.set_num_threads(1)
    import service
    from config import Settings
    from storage.store import Store

    meter = Meter()
    _instrument(meter)
    settings = Settings(data_dir=work / "data", models_dir=models_dir)
    Store(settings.data_dir).init()
    upload = meter.wrap("upload", service.upload_dataset)
    start = time.perf_counter()
    info = upload(settings, path, "bench", options)
    upload_s = time.perf_counter() - start
    out = {
        "baseline_mb": meter.baseline,
        "rows_in": info["rows"] + info["dropped_rows"],
        "rows_kept": info["rows"],
        "dropped": info["dropped_rows"],
        "phases": [("upload", upload_s, meter.peaks["upload"])],
    }
    if preview:
        show = meter.wrap("preview", service.preview_dataset)
        start = time.perf_counter()
        shown = show(settings, info["id"], MODEL, 256)
        preview_s = time.perf_counter() - start
        out["phases"].append(("preview", preview_s, meter.peaks["preview"]))
        out["tokens_mean"] = shown["token_stats"]["tokens_mean"]
        out["tokens_max"] = shown["token_stats"]["tokens_max"]
    meter.sample()
    out["peak_extra_mb"] = meter.extra(meter.peak)
    out["breakdown"] = [
        (f"{name} (rest)" if name in ("upload", "preview") else name, seconds, meter.peaks[name])
        for name, seconds in meter.seconds.items()
    ]
    return out


def child_reference(path: Path, work: Path) -> dict:
    import datasets

    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)
    datasets.disable_progress_bars()
    meter = Meter()
    load = meter.wrap("load", datasets.load_dataset)
    start = time.perf_counter()
    ds = load("json", data_files=str(path), split="train", cache_dir=str(work / "cache"))
    n, first = len(ds), ds[:3]
    seconds = time.perf_counter() - start
    meter.sample()
    assert len(first["messages"]) == 3
    return {
        "baseline_mb": meter.baseline,
        "rows_in": n,
        "phases": [("load", seconds, meter.extra(meter.peak))],
        "peak_extra_mb": meter.extra(meter.peak),
    }


def child_main(kind: str, path: Path, work: Path, models_dir: Path, args) -> dict:
    sys.path.insert(0, str(ROOT))
    work.mkdir(parents=True, exist_ok=True)
    if kind == "reference":
        return child_reference(path, work)
    options = {"on_bad_rows": "refuse"}
    if kind == "lengths":
        options = {"base_model": MODEL, "max_length": 256, "on_bad_rows": "drop"}
    measure = functools.partial(child_ours, path, work, models_dir, options, not args.no_preview)
    if not args.profile:
        return measure()
    import cProfile
    import pstats

    profile = cProfile.Profile()
    result = profile.runcall(measure)
    pstats.Stats(profile).sort_stats("tottime").print_stats(25)
    return result


def run_child(
    kind: str, path: Path, work: Path, models_dir: Path, preview: bool, profile: bool = False
) -> dict:
    cmd = [sys.executable, __file__, "--child", kind, "--file", str(path), "--work", str(work)]
    cmd += ["--models-dir", str(models_dir)] + ([] if preview else ["--no-preview"])
    cmd += ["--profile"] if profile else []
    done = subprocess.run(cmd, capture_output=True, text=True, env=ENV, cwd=ROOT)
    shutil.rmtree(work, ignore_errors=True)
    if done.returncode != 0:
        tail = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "no output"
        return {"error": f"exit {done.returncode}: {tail}", "stderr": done.stderr[-3000:]}
    *printed, last = done.stdout.strip().splitlines()
    return {**json.loads(last), "printed": "\n".join(printed)}


# ---- parent side ----


def _median_result(results: list[dict]) -> dict:
    """The run with the median total time (its breakdown and memory stay consistent)."""
    good = [r for r in results if "error" not in r]
    if not good:
        return results[0]
    good.sort(key=lambda r: sum(p[1] for p in r["phases"]))
    return good[len(good) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=1, help="alternating rounds; median kept")
    parser.add_argument("--out", type=Path, help="folder for the file (kept); default a temp one")
    parser.add_argument("--models-dir", type=Path, default=ROOT / "models")
    parser.add_argument("--profile", action="store_true", help="then cProfile one `ours` run")
    parser.add_argument("--child", choices=("ours", "lengths", "reference"), help=argparse.SUPPRESS)
    parser.add_argument("--file", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--no-preview", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    models_dir = args.models_dir.resolve()

    if args.child:
        print(json.dumps(child_main(args.child, args.file, args.work, models_dir, args)))
        return

    folder = args.out or Path(tempfile.mkdtemp(prefix="adapterlab-dataset-bench-"))
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "chat.jsonl"
    start = time.perf_counter()
    write_chat_file(path, args.rows, args.seed)
    size = path.stat().st_size
    print(
        f"{path}: {args.rows:,} rows, {size / 2**20:.1f} MB ({size / args.rows:.0f} B/row), "
        f"written in {time.perf_counter() - start:.1f} s; os.cpu_count() = {os.cpu_count()}",
        flush=True,
    )
    have_model = (models_dir / MODEL).is_dir()
    kinds = ["ours", "lengths", "reference"]
    if not have_model:
        print(f"note: {models_dir / MODEL} is missing (`make model`): no preview, no length check")
        kinds.remove("lengths")
    runs: dict[str, list[dict]] = {k: [] for k in kinds}
    try:
        for round_ in range(1, args.rounds + 1):
            for kind in kinds:
                work = Path(tempfile.mkdtemp(prefix=f"{kind}-", dir=folder))
                result = run_child(kind, path, work, models_dir, have_model)
                runs[kind].append(result)
                total = sum(p[1] for p in result.get("phases", []))
                what = result.get("error") or f"{total:.2f} s"
                print(f"round {round_} {kind}: {what}", flush=True)
        report({k: _median_result(v) for k, v in runs.items()}, args.rows, args.rounds)
        if args.profile:
            print("\ncProfile of one more `ours` run (its timings are inflated by the profiler):")
            work = Path(tempfile.mkdtemp(prefix="profile-", dir=folder))
            result = run_child("ours", path, work, models_dir, have_model, profile=True)
            print(result.get("printed") or result.get("stderr", ""))
    finally:
        if args.out is None:
            shutil.rmtree(folder, ignore_errors=True)


def report(results: dict[str, dict], rows: int, rounds: int) -> None:
    labels = {"ours": "ours", "lengths": "ours+lengths", "reference": "reference"}
    print(f"\n{'measurement':<30} {'seconds':>8} {'rows/s':>9} {'peak extra MB':>14}")
    totals: dict[str, tuple[float, float]] = {}
    for kind, r in results.items():
        if "error" in r:
            print(f"{labels[kind]:<30} failed: {r['error']}")
            print("  " + r["stderr"].replace("\n", "\n  "))
            continue
        for name, seconds, peak in r["phases"] if len(r["phases"]) > 1 else []:
            print(f"{labels[kind] + ': ' + name:<30} {seconds:8.2f} {'':>9} {peak:14.0f}")
        total = sum(p[1] for p in r["phases"])
        totals[kind] = (total, r["peak_extra_mb"])
        name = labels[kind] + (": " + "+".join(p[0] for p in r["phases"]))
        print(f"{name:<30} {total:8.2f} {rows / total:9,.0f} {r['peak_extra_mb']:14.0f}")
    print(
        f"(median of {rounds} round(s); extra = peak RSS - RSS after imports; baselines: "
        + ", ".join(
            f"{labels[k]} {r['baseline_mb']:.0f} MB" for k, r in results.items() if "error" not in r
        )
        + ")"
    )
    for kind in ("ours", "lengths"):
        r = results.get(kind, {})
        if "dropped" in r:
            print(f"{labels[kind]}: kept {r['rows_kept']:,} of {r['rows_in']:,} rows", end="")
            if "tokens_mean" in r:
                print(f"; tokens/row mean {r['tokens_mean']}, max {r['tokens_max']}", end="")
            print()
    if "reference" in totals:
        ref_s, ref_mb = totals["reference"]
        for kind in ("ours", "lengths"):
            if kind in totals:
                s, mb = totals[kind]
                print(
                    f"{labels[kind]}/reference: time {s / ref_s:.2f}x, "
                    f"extra memory {mb / max(ref_mb, 1):.2f}x"
                )
    for kind in ("ours", "lengths"):
        if kind in totals:
            s, mb = totals[kind]
            verdict = "PASS" if s < GOAL_S and mb < GOAL_MB else "FAIL"
            print(
                f"goal (< {GOAL_S:.0f} s, < {GOAL_MB:.0f} MB extra) {labels[kind]}: {verdict} "
                f"({s:.1f} s, {mb:.0f} MB)"
            )
    for kind in ("ours", "lengths"):
        r = results.get(kind, {})
        if "breakdown" not in r:
            continue
        print(f"\nwhere {labels[kind]}'s time goes (exclusive seconds; peak extra MB while it ran)")
        for name, seconds, peak in sorted(r["breakdown"], key=lambda b: -b[1]):
            if seconds >= 0.005:
                shown = f"{peak:8.0f}" if peak is not None else ""
                print(f"  {name:<34} {seconds:7.2f} {shown}")


if __name__ == "__main__":
    main()
