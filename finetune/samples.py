"""Bundled sample datasets, so a first run needs no upload. Built from text the packages ship.

Each sample builds (train records, held-out eval records or []) in one of the upload schemas,
and is stored through the same upload path as a user's file.
"""

from __future__ import annotations

import importlib.util
import json
import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ARITHMETIC_SYSTEM = "You are a calculator. Reply with the number only."
CLASSIFICATION_TOPICS = ("ai", "coding", "emotion", "money", "science")

Rows = list[dict]  # records in one of the upload schemas


@dataclass(frozen=True)
class Sample:
    label: str
    build: Callable[[], tuple[Rows, Rows]]


def _arithmetic_row(a: int, op: str, b: int) -> dict:
    answer = a + b if op == "+" else a - b if op == "-" else a * b
    return {
        "messages": [
            {"role": "system", "content": ARITHMETIC_SYSTEM},
            {"role": "user", "content": f"What is {a} {op} {b}?"},
            {"role": "assistant", "content": str(answer)},
        ],
        "operation": op,  # a column to split an evaluation by
    }


def arithmetic(n: int = 2000, n_eval: int = 200, seed: int = 0) -> tuple[Rows, Rows]:
    """'What is 47 + 85?' -> '132': two-digit +, - and x (as in GOAT), eval on unseen sums."""
    rng = random.Random(seed)
    seen: dict[tuple[int, str, int], None] = {}
    while len(seen) < n + n_eval:
        seen.setdefault((rng.randint(10, 99), rng.choice("+-x"), rng.randint(10, 99)))
    problems = list(seen)
    return [_arithmetic_row(*p) for p in problems[:n]], [_arithmetic_row(*p) for p in problems[n:]]


def _chatterbot_files() -> list[Path]:
    spec = importlib.util.find_spec("chatterbot_corpus")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("chatterbot-corpus is not installed")
    return sorted((Path(spec.origin).parent / "data" / "english").glob("*.yml"))


def _conversations(path: Path) -> list[list[str]]:
    import yaml

    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    return [
        [t.strip() for t in convo if isinstance(t, str) and t.strip()]
        for convo in data.get("conversations") or []
    ]


def _unique(rows: Rows) -> Rows:
    """The corpora repeat themselves (chatterbot's tech_support half its lines): keep the first."""
    return list({json.dumps(r, sort_keys=True): r for r in rows}.values())


def chatterbot() -> tuple[Rows, Rows]:
    """English prompt/response pairs from chatterbot-corpus (BSD)."""
    rows = [
        {
            "messages": [
                {"role": "user", "content": turns[0]},
                {"role": "assistant", "content": turns[1]},
            ]
        }
        for path in _chatterbot_files()
        for turns in _conversations(path)
        if len(turns) >= 2
    ]
    return _unique(rows), []


def topics() -> tuple[Rows, Rows]:
    """Classification: a chatterbot-corpus line -> its topic file, every fifth row held out."""
    rows = []
    for path in _chatterbot_files():
        if path.stem in CLASSIFICATION_TOPICS:
            rows += [{"text": turns[0], "label": path.stem} for turns in _conversations(path)]
    unique = list({r["text"]: r for r in rows}.values())  # one label per text
    return [r for i, r in enumerate(unique) if i % 5], unique[::5]


def doc_titles() -> tuple[Rows, Rows]:
    """Seq2seq: a section of Python's reference manual (pydoc_data) -> its title."""
    from pydoc_data.topics import topics as sections

    rows = []
    for text in sections.values():
        lines = text.strip().splitlines()
        if len(lines) < 3 or not re.fullmatch(r"\*+", lines[1].strip()):
            continue
        body = " ".join(" ".join(lines[2:]).split())[:600]
        rows.append({"input": body, "target": lines[0].strip()})
    rows = _unique(rows)
    return [r for i, r in enumerate(rows) if i % 8], rows[::8]


SAMPLES: dict[str, Sample] = {
    "arithmetic": Sample("Sample: arithmetic", arithmetic),
    "chatterbot": Sample("Sample: chatterbot chat pairs", chatterbot),
    "topics": Sample("Sample: topic classification", topics),
    "doc_titles": Sample("Sample: Python docs -> title (seq2seq)", doc_titles),
}
