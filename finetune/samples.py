"""Bundled sample datasets, so a first run needs no upload."""

from __future__ import annotations

import random
from pathlib import Path

ARITHMETIC_SYSTEM = "You are a calculator. Reply with the number only."


def arithmetic_rows(n: int = 2000, seed: int = 0) -> list[dict]:
    """'What is 47 + 85?' -> '132': two-digit addition, subtraction and multiplication."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        a, b = rng.randint(10, 99), rng.randint(10, 99)
        op = rng.choice("+-x")
        answer = a + b if op == "+" else a - b if op == "-" else a * b
        rows.append(
            {
                "messages": [
                    {"role": "system", "content": ARITHMETIC_SYSTEM},
                    {"role": "user", "content": f"What is {a} {op} {b}?"},
                    {"role": "assistant", "content": str(answer)},
                ]
            }
        )
    return rows


def chatterbot_rows() -> list[dict]:
    """English prompt/response pairs from chatterbot-corpus (BSD)."""
    import importlib.util

    import yaml

    spec = importlib.util.find_spec("chatterbot_corpus")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("chatterbot-corpus is not installed")
    folder = Path(spec.origin).parent / "data" / "english"
    rows = []
    for path in sorted(folder.glob("*.yml")):
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        for convo in data.get("conversations") or []:
            turns = [t for t in convo if isinstance(t, str) and t.strip()]
            if len(turns) >= 2:
                rows.append(
                    {
                        "messages": [
                            {"role": "user", "content": turns[0].strip()},
                            {"role": "assistant", "content": turns[1].strip()},
                        ]
                    }
                )
    return rows


SAMPLES = {
    "arithmetic": ("Sample: arithmetic", arithmetic_rows),
    "chatterbot": ("Sample: chatterbot chat pairs", chatterbot_rows),
}
