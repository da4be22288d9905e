"""How each method's default learning rate was chosen: a sweep around it, on the bundled model.

    python bench/learning_rates.py                         (every method x 3 rates: ~45 min)
    python bench/learning_rates.py --methods lora,ia3 --factors 0.25,0.5,1,2,4 --steps 30

Each (method, rate) trains once through finetune.train (bench/methods.py's child: a fresh
process, one torch thread) on the arithmetic sample for the same steps, one pass over new rows,
so the mean loss of the last five steps is already a held-out estimate: that is what ranks the
rates. The registry's default (finetune/methods.py LEARNING_RATES) should be the best or next to
it; the table says which rate won for each method. Not a test.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.methods import MODEL, device, run_child  # noqa: E402
from finetune.methods import METHODS, get_method  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models-dir", type=Path, default=ROOT / "models")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--factors", default="0.3,1,3", help="x each method's default rate")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=128)
    args = parser.parse_args()
    args.models_dir = args.models_dir.resolve()
    args.eval = 0  # ranked by loss: no generation
    methods = [get_method(m.strip()).id for m in args.methods.split(",") if m.strip()]
    factors = [float(f) for f in args.factors.split(",")]
    if not (args.models_dir / MODEL).is_dir():
        raise SystemExit(f"{args.models_dir / MODEL} is missing: run `make model` first")
    print(f"command: {shlex.join(['python', 'bench/learning_rates.py', *sys.argv[1:]])}")
    print(
        f"device: {device()}\ndata: arithmetic sample, {args.steps} steps x batch {args.batch}, "
        "ranked by the mean loss of the last 5 steps (rows not seen before)",
        flush=True,
    )
    table: dict[str, list[tuple[float, float | None]]] = {}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="adapterlab-rates-") as work:
        args.work = Path(work)
        for method_id in methods:
            default = get_method(method_id).learning_rate
            for factor in factors:
                rate = float(f"{default * factor:.3g}")
                result = run_child(method_id, args, rate)
                loss = result.get("loss_tail")
                table.setdefault(method_id, []).append((rate, loss))
                shown = f"{loss:.4f}" if loss is not None else result.get("error", "failed")
                print(f"{method_id} lr {rate:.2e}: {shown}", flush=True)
    print(f"\n{'method':<14}{'default':>10}  losses by rate (best starred)")
    for method_id, rows in table.items():
        scored = [(rate, loss) for rate, loss in rows if loss is not None]
        best = min(scored, key=lambda r: r[1])[0] if scored else None
        cells = "  ".join(
            f"{rate:.1e}: {loss:.3f}{'*' if rate == best else ' '}"
            if loss is not None
            else f"{rate:.1e}: failed"
            for rate, loss in rows
        )
        print(f"{method_id:<14}{get_method(method_id).learning_rate:>10.1e}  {cells}")
    print(f"(total {(time.perf_counter() - started) / 60:.0f} min)")


if __name__ == "__main__":
    main()
