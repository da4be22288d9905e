"""Dataset files: read JSON / JSONL / CSV, detect the schema, normalize rows to chat turns."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FORMATS = ("messages", "alpaca", "prompt_completion")
ROLES = ("system", "user", "assistant")
_MAX_LISTED = 5


class DataError(ValueError):
    """A file that cannot become a dataset; the message names the problem and the rows."""


@dataclass
class Parsed:
    format: str
    columns: list[str]
    rows: list[dict]  # normalized: {"messages": [{"role", "content"}, ...]}
    warnings: list[str] = field(default_factory=list)


def read_records(path: Path, suffix: str) -> tuple[list[Any], list[str]]:
    """The file's records in order, plus warnings (such as a non-UTF-8 encoding)."""
    raw = path.read_bytes()
    warnings: list[str] = []
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        text = raw.decode("utf-16")
    else:
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError:
            text = raw.decode("latin-1")
            warnings.append("The file is not UTF-8; it was read as Latin-1. Check accented text.")
    if not text.strip():
        raise DataError("The file is empty.")
    suffix = suffix.lower()
    if suffix == ".jsonl":
        return _read_jsonl(text), warnings
    if suffix == ".json":
        return _read_json(text), warnings
    if suffix in (".csv", ".tsv"):
        return _read_csv(text, "\t" if suffix == ".tsv" else ","), warnings
    raise DataError(
        f"Files ending in {suffix or '(nothing)'} are not supported: "
        "use .json, .jsonl, .csv or .tsv."
    )


def _read_jsonl(text: str) -> list[Any]:
    records = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise DataError(f"Line {number} is not valid JSON: {exc.msg}.") from None
    return records


def _read_json(text: str) -> list[Any]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        if "\n{" in text.strip():
            try:
                return _read_jsonl(text)  # a .json file holding JSON lines
            except DataError:
                pass
        raise DataError(f"The file is not valid JSON: {exc.msg} at line {exc.lineno}.") from None
    if isinstance(data, dict):
        lists = [v for v in data.values() if isinstance(v, list)]
        if len(lists) != 1:
            raise DataError("The JSON file must hold a list of rows (or an object with one list).")
        data = lists[0]
    if not isinstance(data, list):
        raise DataError("The JSON file must hold a list of rows.")
    return data


def _read_csv(text: str, delimiter: str) -> list[Any]:
    try:
        reader = csv.DictReader(io.StringIO(text), delimiter=delimiter)
        rows = []
        for number, row in enumerate(reader, start=1):
            if None in row:  # DictReader files surplus cells under the key None
                raise DataError(f"Row {number} has more cells than the header has columns.")
            rows.append(row)
        return rows
    except csv.Error as exc:
        raise DataError(f"The file is not valid CSV: {exc}.") from None


def detect_format(columns: list[str]) -> str:
    cols = set(columns)
    if "messages" in cols:
        return "messages"
    if {"instruction", "output"} <= cols:
        return "alpaca"
    if {"prompt", "completion"} <= cols:
        return "prompt_completion"
    raise DataError(
        f"None of the known columns were found (columns: {', '.join(columns) or 'none'}). "
        "Use `messages` (chat turns), `instruction` + `output` (alpaca, optional `input`), "
        "or `prompt` + `completion`."
    )


def _text(row: dict, key: str) -> str | None:
    value = row.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise _RowError(f"'{key}' must be text, got {type(value).__name__}")
    return value


class _RowError(ValueError):
    pass


def _normalize_messages(row: dict) -> list[dict]:
    turns = row.get("messages")
    if isinstance(turns, str):
        try:
            turns = json.loads(turns)  # a CSV cell holding JSON
        except json.JSONDecodeError:
            raise _RowError("'messages' is not a list of turns") from None
    if not isinstance(turns, list) or not turns:
        raise _RowError("'messages' must be a non-empty list of turns")
    out = []
    for i, turn in enumerate(turns, start=1):
        if not isinstance(turn, dict) or "role" not in turn or "content" not in turn:
            raise _RowError(f"turn {i} needs a 'role' and a 'content'")
        role, content = turn["role"], turn["content"]
        if role not in ROLES:
            raise _RowError(f"turn {i} has unknown role {role!r} (use system, user, assistant)")
        if not isinstance(content, str):
            raise _RowError(f"turn {i} content must be text")
        out.append({"role": role, "content": content})
    if out[-1]["role"] != "assistant":
        raise _RowError("the last turn must be the assistant's answer")
    if not out[-1]["content"].strip():
        raise _RowError("the assistant's answer is empty")
    if not any(t["role"] == "user" for t in out):
        raise _RowError("there is no user turn")
    return out


def _normalize_alpaca(row: dict) -> list[dict]:
    instruction, extra, output = (
        _text(row, "instruction"),
        _text(row, "input"),
        _text(row, "output"),
    )
    if not instruction or not instruction.strip():
        raise _RowError("'instruction' is empty")
    if not output or not output.strip():
        raise _RowError("the answer ('output') is empty")
    prompt = instruction if not extra or not extra.strip() else f"{instruction}\n\n{extra}"
    turns = [
        {"role": "user", "content": prompt},
        {"role": "assistant", "content": output},
    ]
    system = _text(row, "system")
    return ([{"role": "system", "content": system}] if system else []) + turns


def _normalize_prompt_completion(row: dict) -> list[dict]:
    prompt, completion = _text(row, "prompt"), _text(row, "completion")
    if not prompt or not prompt.strip():
        raise _RowError("'prompt' is empty")
    if not completion or not completion.strip():
        raise _RowError("the answer ('completion') is empty")
    return [
        {"role": "user", "content": prompt},
        {"role": "assistant", "content": completion},
    ]


_NORMALIZERS = {
    "messages": _normalize_messages,
    "alpaca": _normalize_alpaca,
    "prompt_completion": _normalize_prompt_completion,
}


def parse_file(path: Path, suffix: str) -> Parsed:
    """Read, detect and normalize a whole file; raise DataError listing the bad rows."""
    records, warnings = read_records(path, suffix)
    if not records:
        raise DataError("The file has no rows.")
    not_objects = [i for i, r in enumerate(records, start=1) if not isinstance(r, dict)]
    if not_objects:
        raise DataError(f"Row {not_objects[0]} is not an object with named fields.")
    columns = list(dict.fromkeys(k for r in records for k in r))
    fmt = detect_format(columns)
    normalize = _NORMALIZERS[fmt]
    rows, problems = [], []
    for number, record in enumerate(records, start=1):
        try:
            rows.append({"messages": normalize(record)})
        except _RowError as exc:
            problems.append(f"Row {number}: {exc}")
    if problems:
        more = f" (and {len(problems) - _MAX_LISTED} more)" if len(problems) > _MAX_LISTED else ""
        raise DataError(
            f"{len(problems)} of {len(records)} rows cannot be used. "
            + "; ".join(problems[:_MAX_LISTED])
            + more
            + "."
        )
    return Parsed(format=fmt, columns=columns, rows=rows, warnings=warnings)


def common_system_prompt(rows: list[dict]) -> str:
    """The system message every row opens with, or "" when they differ or have none."""
    prompts = {
        r["messages"][0]["content"] if r["messages"][0]["role"] == "system" else "" for r in rows
    }
    return prompts.pop() if len(prompts) == 1 else ""


def write_rows(rows: list[dict], path: Path) -> None:
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def read_rows(path: Path) -> list[dict]:
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
