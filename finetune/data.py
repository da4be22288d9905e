"""Schemas: detect which one records follow, map their columns, normalize and check every row.

A normalized row is one of two shapes, the two TRL trains on:
  {"messages": [{"role", "content"}, ...]}   chat turns; loss on the last assistant answer
  {"text": "..."}                            plain text; loss on every token
Seven schemas map onto them. Problems are collected per row (row number, source column, what is
wrong) so that the user can see them all and choose to drop those rows or refuse the file.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from finetune.sources import DataError, Records, kind_of, no_gc

ROLES = ("system", "user", "assistant")
ON_BAD_ROWS = ("refuse", "drop")
MAX_LABELS = 100
_LISTED = 5


class _RowError(ValueError):
    def __init__(self, column: str, problem: str):
        super().__init__(problem)
        self.column, self.problem = column, problem


@dataclass(frozen=True)
class Problem:
    row: int  # 1-based, within its source
    column: str  # the source column (or "" for the whole row)
    problem: str
    source: str = ""

    def __str__(self) -> str:
        where = f"{self.source} row {self.row}" if self.source else f"Row {self.row}"
        return f"{where}" + (f" ({self.column})" if self.column else "") + f": {self.problem}"


class BadRows(DataError):
    """The file has rows that cannot be used and the user chose to refuse it."""

    def __init__(self, problems: list[Problem], total: int):
        self.problems, self.total = problems, total
        listed = "; ".join(str(p) for p in problems[:_LISTED])
        more = f" (and {len(problems) - _LISTED} more)" if len(problems) > _LISTED else ""
        super().__init__(
            f"{len(problems)} of {total} rows cannot be used: {listed}{more}. "
            "Fix them, or choose to drop bad rows."
        )


@dataclass(frozen=True)
class Schema:
    id: str
    label: str
    fields: tuple[str, ...]  # required, in order
    optional: tuple[str, ...]
    aliases: tuple[tuple[str, ...], ...]  # column sets that detect it, one name per field
    normalize: Callable[[dict, dict[str, str]], dict]


# ---- normalizers: record + mapping (field -> column) -> normalized row, or _RowError ----


def _text(record: dict, mapping: dict[str, str], name: str, required: bool = True) -> str:
    column = mapping.get(name, "")
    value = record.get(column) if column else None
    if value is None:
        if required:
            raise _RowError(column or name, "is missing" if column not in record else "is null")
        return ""
    if not isinstance(value, str):
        raise _RowError(column, f"must be text, got {kind_of(value)}")
    if required and not value.strip():
        raise _RowError(column, "is empty")
    return value


def _turns(record: dict, mapping: dict[str, str], sharegpt: bool) -> list[dict]:
    field_name = "conversations" if sharegpt else "messages"
    column = mapping[field_name]
    turns = record.get(column)
    if isinstance(turns, str):
        try:
            turns = json.loads(turns)  # a CSV cell holding JSON
        except json.JSONDecodeError:
            raise _RowError(column, "is text that is not a JSON list of turns") from None
    if turns is None:
        raise _RowError(column, "is missing")
    if not isinstance(turns, list) or not turns:
        raise _RowError(column, "must be a non-empty list of turns")
    role_key, content_key = ("from", "value") if sharegpt else ("role", "content")
    out = []
    system = record.get(mapping.get("system", "")) if sharegpt and mapping.get("system") else None
    if isinstance(system, str) and system.strip():
        out.append({"role": "system", "content": system})
    for i, turn in enumerate(turns, start=1):
        if not isinstance(turn, dict) or role_key not in turn or content_key not in turn:
            raise _RowError(column, f"turn {i} needs '{role_key}' and '{content_key}'")
        role, content = turn[role_key], turn[content_key]
        role = _SHAREGPT_ROLES.get(str(role).lower(), role) if sharegpt else role
        if role not in ROLES:
            raise _RowError(column, f"turn {i} has unknown role {turn[role_key]!r}")
        if not isinstance(content, str):
            raise _RowError(column, f"turn {i} content must be text, got {kind_of(content)}")
        if role != "system" and not content.strip():
            raise _RowError(column, f"turn {i} ({role}) is empty")
        out.append({"role": role, "content": content})
    _check_order(out, column)
    return out


_SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "chatgpt": "assistant",
    "model": "assistant",
    "system": "system",
}


def _check_order(turns: list[dict], column: str) -> None:
    """An optional system turn first, then user/assistant alternating, ending on an answer."""
    start = 1 if turns[0]["role"] == "system" else 0
    for i, turn in enumerate(turns[start:], start=start):
        expected = "user" if (i - start) % 2 == 0 else "assistant"
        if turn["role"] != expected:
            what = (
                "a system turn is only allowed first"
                if turn["role"] == "system"
                else f"turn {i + 1} is {turn['role']} where {expected} should come"
            )
            raise _RowError(column, f"wrong role order: {what}")
    if len(turns) == start:
        raise _RowError(column, "has no user turn")
    if turns[-1]["role"] != "assistant":
        raise _RowError(column, "must end with the assistant's answer")
    if not turns[-1]["content"].strip():
        raise _RowError(column, "the last answer is empty")


def _chat(user: str, answer: str, system: str = "") -> dict:
    turns = [{"role": "system", "content": system}] if system.strip() else []
    return {
        "messages": [
            *turns,
            {"role": "user", "content": user},
            {"role": "assistant", "content": answer},
        ]
    }


def _messages(record, mapping):
    return {"messages": _turns(record, mapping, sharegpt=False)}


def _sharegpt(record, mapping):
    return {"messages": _turns(record, mapping, sharegpt=True)}


def _alpaca(record, mapping):
    instruction = _text(record, mapping, "instruction")
    extra = _text(record, mapping, "input", required=False)
    answer = _text(record, mapping, "output")
    system = _text(record, mapping, "system", required=False)
    prompt = f"{instruction}\n\n{extra}" if extra.strip() else instruction
    return _chat(prompt, answer, system)


def _prompt_completion(record, mapping):
    return _chat(_text(record, mapping, "prompt"), _text(record, mapping, "completion"))


def _seq2seq(record, mapping):
    return _chat(_text(record, mapping, "input"), _text(record, mapping, "target"))


def _classification(record, mapping):
    text = _text(record, mapping, "text")
    column = mapping["label"]
    label = record.get(column)
    if label is None:
        raise _RowError(column, "is missing" if column not in record else "is null")
    if isinstance(label, bool) or not isinstance(label, str | int):
        raise _RowError(column, f"must be a text or whole-number label, got {kind_of(label)}")
    label = str(label).strip()
    if not label:
        raise _RowError(column, "is empty")
    return _chat(text, label)


def _plain_text(record, mapping):
    return {"text": _text(record, mapping, "text")}


SCHEMAS: dict[str, Schema] = {
    s.id: s
    for s in (
        Schema(
            "messages",
            "chat messages (role/content)",
            ("messages",),
            (),
            (("messages",), ("conversations",), ("conversation",)),
            _messages,
        ),
        Schema(
            "sharegpt",
            "ShareGPT conversations (from/value)",
            ("conversations",),
            ("system",),
            (("conversations",), ("conversation",), ("messages",)),
            _sharegpt,
        ),
        Schema(
            "alpaca",
            "alpaca instruction / input / output",
            ("instruction", "output"),
            ("input", "system"),
            (("instruction", "output"), ("instruction", "response")),
            _alpaca,
        ),
        Schema(
            "prompt_completion",
            "prompt / completion",
            ("prompt", "completion"),
            (),
            (("prompt", "completion"), ("prompt", "response"), ("question", "answer")),
            _prompt_completion,
        ),
        Schema(
            "seq2seq",
            "input -> target (e.g. dialogue -> summary)",
            ("input", "target"),
            (),
            (
                ("input", "target"),
                ("source", "target"),
                ("dialogue", "summary"),
                ("document", "summary"),
                ("article", "highlights"),
                ("article", "summary"),
                ("text", "summary"),
                ("input", "output"),
            ),
            _seq2seq,
        ),
        Schema(
            "classification",
            "text / label",
            ("text", "label"),
            (),
            (("text", "label"), ("sentence", "label"), ("text", "category"), ("text", "labels")),
            _classification,
        ),
        Schema(
            "text",
            "plain text (continued pretraining)",
            ("text",),
            (),
            (("text",), ("content",), ("document",)),
            _plain_text,
        ),
    )
}


def _turn_keys(records: list[dict], column: str) -> set[str]:
    """The keys of the first turn found in a list-of-turns column (tells messages from ShareGPT)."""
    for record in records[:100]:
        turns = record.get(column)
        if isinstance(turns, str) and turns.lstrip().startswith("["):
            try:
                turns = json.loads(turns)
            except json.JSONDecodeError:
                continue
        if isinstance(turns, list) and turns and isinstance(turns[0], dict):
            return set(turns[0])
    return set()


DETECT_SAMPLE = 1000  # rows looked at to detect the schema


def detect(columns: list[str], records: list[dict]) -> tuple[str, dict[str, str]]:
    """The schema (and mapping: schema field -> column) that the most rows fit; on a tie, the
    more specific schema (the order of SCHEMAS)."""
    present = set(columns)
    sample = [r for r in records[:DETECT_SAMPLE] if isinstance(r, dict)]
    best, best_rows = None, -1  # a schema whose columns exist wins even if no row fits it
    for schema in SCHEMAS.values():
        for alias in schema.aliases:
            if not set(alias) <= present:
                continue
            if schema.id in ("messages", "sharegpt"):
                keys = _turn_keys(records, alias[0])
                is_sharegpt = {"from", "value"} <= keys
                if keys and is_sharegpt != (schema.id == "sharegpt"):
                    continue
            fits = sum(all(r.get(c) is not None for c in alias) for r in sample)
            if fits > best_rows:
                mapping = dict(zip(schema.fields, alias, strict=True))
                mapping.update({f: f for f in schema.optional if f in present})
                best, best_rows = (schema.id, mapping), fits
    if best is not None:
        return best
    raise DataError(
        f"No known schema fits the columns ({', '.join(columns) or 'none'}). Choose the schema "
        "and map its fields to your columns, or use one of: `messages`, ShareGPT "
        "`conversations`, `instruction` + `output`, `prompt` + `completion`, `input` + `target`, "
        "`text` + `label`, or `text` alone."
    )


def check_mapping(schema_id: str, mapping: dict[str, str], columns: list[str]) -> dict[str, str]:
    """A user's mapping, checked against the schema's fields and the file's columns."""
    if schema_id not in SCHEMAS:
        raise DataError(f"Unknown schema {schema_id!r} (known: {', '.join(SCHEMAS)}).")
    schema = SCHEMAS[schema_id]
    if not isinstance(mapping, dict):
        raise DataError("The mapping must be an object of schema field -> column name.")
    known = schema.fields + schema.optional
    for key, column in mapping.items():
        if key not in known:
            raise DataError(
                f"mapping: {schema_id} has no field {key!r} (its fields: {', '.join(known)})."
            )
        if not isinstance(column, str) or (column and column not in columns):
            raise DataError(
                f"mapping.{key}: the file has no column {column!r} (columns: {', '.join(columns)})."
            )
    out = {f: f for f in known if f in columns}  # same-named columns map themselves ...
    out.update({k: v for k, v in mapping.items() if v})  # ... unless the user says otherwise
    missing = [f for f in schema.fields if f not in out]
    if missing:
        raise DataError(
            f"The {schema_id} schema needs a column for {', '.join(map(repr, missing))}; "
            f"map it to one of: {', '.join(columns)}."
        )
    return out


@dataclass
class Parsed:
    """What a file became: its schema, the good rows, and every problem found."""

    format: str
    mapping: dict[str, str]
    columns: list[str]
    total: int
    rows: list[dict]  # normalized, good rows only
    lines: list[str]  # the same rows serialized (JSON Lines), for writing and duplicate checks
    problems: list[Problem]
    warnings: list[str] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)  # classification only

    keys: list[tuple[str, int]] = field(default_factory=list, repr=False)  # (source, row)

    def drop(self, bad: dict[tuple[str, int], Problem]) -> None:
        """Remove rows found bad later (too long for the model), keyed by (source, row)."""
        keep = [i for i, key in enumerate(self.keys) if key not in bad]
        self.rows = [self.rows[i] for i in keep]
        self.lines = [self.lines[i] for i in keep]
        self.keys = [self.keys[i] for i in keep]
        self.problems = sorted([*self.problems, *bad.values()], key=lambda p: (p.source, p.row))


def parse(
    sources: list[Records],
    schema_id: str = "",
    mapping: dict[str, str] | None = None,
    labels: list[str] | None = None,
) -> Parsed:
    """Detect (or take) the schema, normalize every record, and list every row problem."""
    with no_gc():
        return _parse(sources, schema_id, mapping, labels)


def _parse(
    sources: list[Records], schema_id: str, mapping: dict[str, str] | None, labels: list[str] | None
) -> Parsed:
    records = [r for s in sources for r in s.records]
    if not records:
        raise DataError("There are no rows.")
    for source in sources:
        for number, record in enumerate(source.records, start=1):
            if not isinstance(record, dict):
                raise DataError(
                    f"{source.label} row {number} is {kind_of(record)}, not an object with named "
                    "fields; every row must have the same named fields."
                )
    columns = list(dict.fromkeys(k for r in records for k in r))
    if schema_id or mapping:
        schema_id = schema_id or detect(columns, records)[0]
        mapping = check_mapping(schema_id, mapping or {}, columns)
    else:
        schema_id, mapping = detect(columns, records)
    normalize = SCHEMAS[schema_id].normalize
    if labels and schema_id != "classification":
        raise DataError(f"Allowed labels apply to classification data; this is {schema_id}.")
    label_set = set(labels or [])
    used = set(mapping.values())
    many = len(sources) > 1
    parsed = Parsed(schema_id, mapping, columns, len(records), [], [], [])
    seen: dict[str, tuple[str, int]] = {}
    for source in sources:
        name = source.label if many else ""
        for number, record in enumerate(source.records, start=1):
            try:
                row = normalize(record, mapping)
            except _RowError as exc:
                parsed.problems.append(Problem(number, exc.column, exc.problem, name))
                continue
            if label_set and schema_id == "classification":
                label = row["messages"][-1]["content"]
                if label not in label_set:
                    parsed.problems.append(
                        Problem(
                            number,
                            mapping["label"],
                            f"label {label!r} is not one of: {', '.join(sorted(label_set))}",
                            name,
                        )
                    )
                    continue
            key = json.dumps(row, ensure_ascii=False)  # what trains: duplicates by it alone
            first = seen.setdefault(key, (name, number))
            if first != (name, number):
                where = f"{first[0]} row {first[1]}" if first[0] else f"row {first[1]}"
                parsed.problems.append(Problem(number, "", f"exact duplicate of {where}", name))
                continue
            meta = row_meta(record, used)
            if meta:
                row["meta"] = meta
            line = json.dumps(row, ensure_ascii=False) if meta else key
            parsed.rows.append(row)
            parsed.lines.append(line)
            parsed.keys.append((name, number))
    for source in sources:
        parsed.warnings.extend(source.warnings)
    if schema_id == "classification":
        _label_rows(parsed, label_set)
    return parsed


MAX_META_COLUMNS = 16
MAX_META_CHARS = 200


def row_meta(record: dict, used: set[str]) -> dict[str, Any]:
    """The record's other columns (short text, numbers, true/false), kept beside the row: an
    evaluation can be split by one of them (e.g. the arithmetic sample's operation)."""
    meta = {}
    for column, value in record.items():
        if column in used or len(meta) >= MAX_META_COLUMNS:
            continue
        if isinstance(value, bool | int | float) or (
            isinstance(value, str) and len(value) <= MAX_META_CHARS
        ):
            meta[column] = value
    return meta


def group_columns(rows: list[dict]) -> list[str]:
    """Columns kept beside the rows (row_meta) that an evaluation can be split by."""
    return sorted({column for row in rows for column in row.get("meta", {})})


def _label_rows(parsed: Parsed, label_set: set[str]) -> None:
    """Classification: state the label set in a system turn, so the model learns to pick one."""
    counts = Counter(r["messages"][-1]["content"] for r in parsed.rows)
    labels = sorted(label_set or counts)
    if len(labels) > MAX_LABELS:
        raise DataError(
            f"The label column has {len(labels)} different values; a classification set has at "
            f"most {MAX_LABELS}. Is '{parsed.mapping['label']}' really the label?"
        )
    parsed.labels = labels
    system = f"Classify the text. Reply with one label: {', '.join(labels)}."
    for i, row in enumerate(parsed.rows):
        row["messages"].insert(0, {"role": "system", "content": system})
        parsed.lines[i] = json.dumps(row, ensure_ascii=False)


def apply_policy(parsed: Parsed, on_bad_rows: str) -> None:
    """Refuse a file with bad rows (the default); with "drop", refuse it only if none is good."""
    if on_bad_rows not in ON_BAD_ROWS:
        raise DataError(
            f"on_bad_rows must be one of {', '.join(ON_BAD_ROWS)}, got {on_bad_rows!r}."
        )
    if parsed.problems and on_bad_rows == "refuse":
        raise BadRows(parsed.problems, parsed.total)
    if not parsed.rows:
        raise BadRows(parsed.problems, parsed.total)


def problems_json(problems: list[Problem]) -> list[dict]:
    return [asdict(p) for p in problems]


def content_stats(rows: list[dict]) -> dict[str, Any]:
    """Model-independent numbers: rows, turns per row, characters per row."""
    if not rows:
        return {"rows": 0}
    turns = [len(r["messages"]) if "messages" in r else 1 for r in rows]
    chars = [
        sum(len(t["content"]) for t in r["messages"]) if "messages" in r else len(r["text"])
        for r in rows
    ]
    return {
        "rows": len(rows),
        "group_columns": group_columns(rows),
        "turns_mean": round(sum(turns) / len(turns), 2),
        "turns_max": max(turns),
        "chars_mean": round(sum(chars) / len(chars), 1),
        "chars_max": max(chars),
    }


def common_system_prompt(rows: list[dict]) -> str:
    """The system message every row opens with, or "" when they differ or have none."""
    prompts = {
        r["messages"][0]["content"]
        if "messages" in r and r["messages"][0]["role"] == "system"
        else ""
        for r in rows
    }
    return prompts.pop() if len(prompts) == 1 else ""


def write_lines(lines: list[str], path: Path) -> None:
    with path.open("w", encoding="utf-8") as f:
        for line in lines:
            f.write(line + "\n")


def write_rows(rows: list[dict], path: Path) -> None:
    write_lines([json.dumps(row, ensure_ascii=False) for row in rows], path)


def read_rows(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with no_gc(), path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def sample_rows(path: Path, first: int, sample: int, seed: int = 0) -> tuple[list, list, int]:
    """The first rows, a seeded random sample of rows, and the count, parsing only those."""
    with path.open("rb") as f:
        lines = [line for line in f.read().split(b"\n") if line.strip()]
    picked = lines if len(lines) <= sample else random.Random(seed).sample(lines, sample)
    with no_gc():
        return [json.loads(x) for x in lines[:first]], [json.loads(x) for x in picked], len(lines)
