"""Malformed uploads: each is refused with a message naming its problem, and nothing is stored.

Every case goes through the real upload action (service.upload_dataset) with its own
data dir. Run: pytest tests/test_malformed.py -q
"""

from __future__ import annotations

import gzip
import io
import json
import os
import random
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest

from finetune.data import BadRows, read_rows
from finetune.sources import DataError
from service.uploads import upload_dataset

PC = {"prompt": "Capital of France?", "completion": "Paris"}
PC2 = {"prompt": "Capital of Peru?", "completion": "Lima"}
ALPACA = {"instruction": "Add 2 and 3", "output": "5"}
SQLITE_SUFFIXES = (".db", ".db-wal", ".db-shm", ".db-journal")
MB = 2**20


def write(folder: Path, name: str, data: bytes | str) -> Path:
    """The file as an upload arrives: bytes on disk; its name picks the reader."""
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data if isinstance(data, bytes) else data.encode())
    return path


def jsonl(*rows) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


def chat(*turns: tuple[str, object]) -> dict:
    return {"messages": [{"role": role, "content": content} for role, content in turns]}


def sharegpt(*turns: tuple[str, str]) -> dict:
    return {"conversations": [{"from": who, "value": value} for who, value in turns]}


def zipped(members: dict[str, bytes | str], method: int = zipfile.ZIP_DEFLATED) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", method) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return out.getvalue()


def rows_of(n: int) -> str:
    return jsonl(*({"prompt": f"Question {i}?", "completion": f"Answer {i}."} for i in range(n)))


def repeated(size: int) -> bytes:
    """Valid-looking JSON lines that compress about 1000x: what an archive bomb holds."""
    line = b'{"text": "aaaaaaaaaaaaaaaa"}\n'
    return line * (size // len(line))


def broken_zip(damage: str) -> bytes:
    """A zip whose directory is sound but whose one member cannot be read as stored."""
    method = zipfile.ZIP_DEFLATED if damage == "deflate" else zipfile.ZIP_STORED
    data = bytearray(zipped({"rows.jsonl": rows_of(200)}, method))
    start = 30 + len("rows.jsonl")  # the member's bytes follow its local header
    central = data.find(b"PK\x01\x02")
    if damage == "deflate":
        data[start + 5 : start + 40] = b"\xff" * 35
    elif damage == "crc":
        data[start + 5] ^= 0x20
    elif damage == "encrypted":  # the "encrypted" flag, in both headers
        data[6] |= 1
        data[central + 8] |= 1
    elif damage == "method":  # compression method 99 (AES), which zipfile cannot read
        data[8] = data[central + 10] = 99
    return bytes(data)


@dataclass(frozen=True)
class Case:
    id: str
    name: str  # the uploaded file's name; "" uploads no file (a Hub id case)
    data: bytes | str | Callable[[], bytes | str] | None  # callable: built only when run
    message: str | tuple[str, ...]  # distinctive parts of the message the user sees
    error: type[ValueError] = DataError
    options: dict | None = None
    settings: dict = field(default_factory=dict)  # overrides, e.g. smaller limits
    eval_file: tuple[str, str] | None = None
    bad: tuple[int, str] | None = None  # BadRows: (row, column) of the first problem


def rows_case(case_id: str, data: str, message: str, row: int, column: str, **kw) -> Case:
    return Case(case_id, "data.jsonl", data, message, BadRows, bad=(row, column), **kw)


def binary_junk() -> bytes:
    return b"\x00" + random.Random(0).randbytes(4096)


def high_bytes() -> bytes:
    """Invalid UTF-8 and mostly unprintable as Latin-1, but no NUL byte."""
    return (bytes(range(1, 9)) + bytes(range(0x80, 0x100))) * 20


FILES = [
    Case("empty-file", "data.jsonl", b"", "data.jsonl is empty."),
    Case("whitespace-only", "data.jsonl", " \n\t\n  \r\n", "data.jsonl is empty."),
    Case("missing-upload", "gone.jsonl", None, "An uploaded file did not arrive", ValueError),
    Case("no-file-no-hub-id", "", None, "Choose a file to upload", ValueError),
    Case("unsupported-exe", "setup.exe", b"MZ\x90\x00", "setup.exe: files ending in .exe are not"),
    Case("unsupported-pdf", "paper.pdf", "%PDF-1.4\n", "paper.pdf: files ending in .pdf are not"),
    Case("no-suffix", "README", "hello", "README: files ending in (nothing) are not read"),
    Case(
        "binary-garbage-as-jsonl",
        "data.jsonl",
        binary_junk,
        "data.jsonl looks like a binary file, not text (it holds NUL bytes).",
    ),
    Case(
        "png-named-csv",
        "data.csv",
        b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x10\x00\x00\x00\x10\x08\x06",
        "data.csv looks like a binary file, not text (it holds NUL bytes).",
    ),
    Case(
        "invalid-utf8-binary",
        "data.jsonl",
        high_bytes,
        "data.jsonl looks like a binary file, not text.",
    ),
    Case(
        "utf16-bom-broken",
        "data.jsonl",
        b"\xff\xfe" + "hi".encode("utf-16-le") + b"\x00",
        "data.jsonl starts like UTF-16 but does not decode as it.",
    ),
    Case(
        "parquet-without-mark",
        "data.parquet",
        "prompt,completion\na,b\n",
        "data.parquet is not a Parquet file (it lacks the PAR1 mark).",
    ),
    Case(
        "parquet-corrupt",
        "data.parquet",
        b"PAR1" + b"x" * 64 + b"PAR1",
        "data.parquet cannot be read as Parquet",
    ),
]

TEXT = [
    Case(
        "csv-header-only", "data.csv", "prompt,completion\n", "data.csv has a header but no rows."
    ),
    Case("csv-blank-header", "data.csv", ",,\nx,y,z\n", "data.csv has no header row."),
    Case(
        "csv-duplicate-header",
        "data.csv",
        "prompt,completion,prompt\na,b,c\n",
        "data.csv repeats the column name 'prompt' in its header.",
    ),
    Case(
        "csv-row-with-extra-cell",
        "data.csv",
        "prompt,completion\na,b\nc,d,e\n",
        "data.csv row 2 has 3 cells; the header has 2.",
    ),
    Case(
        "tsv-row-with-extra-cell",
        "data.tsv",
        "prompt\tcompletion\na\tb\tc\n",
        "data.tsv row 1 has 3 cells; the header has 2.",
    ),
    Case(
        "jsonl-bad-line",
        "data.jsonl",
        jsonl(PC) + '{"prompt": \n',
        "data.jsonl line 2 is not valid JSON",
    ),
    Case(
        "json-truncated-array",
        "data.json",
        json.dumps([PC, PC2])[:-1],
        ("data.json is not valid JSON", "is the file cut short?"),
    ),
    Case("json-number", "data.json", "42", "data.json holds a number; it must be a list of rows."),
    Case(
        "json-string",
        "data.json",
        '"hello"',
        "data.json holds text; it must be a list of rows.",
    ),
    Case(
        "json-object-two-lists",
        "data.json",
        json.dumps({"train": [PC], "test": [PC2]}),
        "or an object with exactly one list (it has 2).",
    ),
    Case(
        "json-object-no-list",
        "data.json",
        json.dumps(PC),
        "or an object with exactly one list (it has 0).",
    ),
    Case(
        "json-list-of-numbers",
        "data.json",
        "[1, 2, 3]",
        "data.json row 1 is a number, not an object with named fields",
    ),
    Case(
        "jsonl-row-not-object",
        "data.jsonl",
        jsonl(PC, "just a string"),
        ("data.jsonl row 2 is", "not an object with named fields"),
    ),
    Case(
        "no-schema-fits",
        "data.jsonl",
        jsonl({"foo": 1, "bar": 2}),
        "No known schema fits the columns (foo, bar).",
    ),
]

LIMITS = [
    Case(
        "line-of-10mb",
        "data.jsonl",
        lambda: '{"text": "' + "x" * (10 * MB) + '"}\n',
        "data.jsonl line 1 is 10.0 MB long; the limit is 1.0 MB per row.",
    ),
    Case(
        "json-row-of-2mb",
        "data.json",
        lambda: json.dumps([{"text": "x" * (2 * MB)}]),
        "data.json row 1 is 2.0 MB long; the limit is 1.0 MB per row.",
    ),
    Case(
        "over-upload-limit",
        "data.jsonl",
        lambda: rows_of(40_000),
        ("data.jsonl is ", "MB; the limit is 1.0 MB (ADAPTERLAB_MAX_UPLOAD_MB)."),
        settings={"max_upload_mb": 1},
    ),
    Case(
        "too-many-rows-jsonl",
        "data.jsonl",
        rows_of(5),
        "data.jsonl has more than 3 rows (the limit).",
        settings={"max_rows": 3},
    ),
    Case(
        "too-many-rows-json",
        "data.json",
        json.dumps([PC, PC2, ALPACA, PC, PC2]),
        "data.json has 5 rows; the limit is 3.",
        settings={"max_rows": 3},
    ),
    Case(
        "too-many-rows-csv",
        "data.csv",
        "prompt,completion\n" + "".join(f"q{i},a{i}\n" for i in range(5)),
        "data.csv has more than 3 rows (the limit).",
        settings={"max_rows": 3},
    ),
]

ARCHIVES = [
    Case(
        "zip-bomb-over-size-limit",
        "bomb.zip",
        lambda: zipped({"rows.jsonl": repeated(5 * MB)}),
        ("bomb.zip unpacks to 5.0 MB from", "It was not unpacked."),
        settings={"max_upload_mb": 1},
    ),
    Case(
        "zip-bomb-over-ratio",
        "bomb.zip",
        lambda: zipped({"rows.jsonl": repeated(2 * MB)}),
        ("bomb.zip unpacks to 2.0 MB from", "200x ratio. It was not unpacked."),
    ),
    Case(
        "zip-without-data-files",
        "data.zip",
        lambda: zipped({"README.md": "hi", "img.png": b"\x89PNG", "__MACOSX/._a.jsonl": "{}"}),
        "data.zip holds no data files",
    ),
    Case(
        "zip-corrupt",
        "data.zip",
        b"PK\x03\x04" + b"\x00garbage" * 10,
        "data.zip is not a valid zip archive.",
    ),
    Case(
        "zip-member-corrupt-deflate",
        "data.zip",
        lambda: broken_zip("deflate"),
        ("data.zip: ", "is damaged"),
    ),
    Case(
        "zip-member-bad-crc",
        "data.zip",
        lambda: broken_zip("crc"),
        ("data.zip: ", "is damaged"),
    ),
    Case(
        "zip-member-encrypted",
        "data.zip",
        lambda: broken_zip("encrypted"),
        ("data.zip: ", "is encrypted or packed"),
    ),
    Case(
        "zip-member-unknown-method",
        "data.zip",
        lambda: broken_zip("method"),
        ("data.zip: ", "is encrypted or packed"),
    ),
    Case(
        "zip-too-many-members",
        "data.zip",
        lambda: zipped({f"part-{i}.jsonl": jsonl(PC) for i in range(65)}),
        "data.zip holds 65 files; the limit is 64.",
    ),
    Case(
        "zip-member-bad-json",
        "data.zip",
        lambda: zipped({"rows.jsonl": "{nope\n"}),
        "data.zip:rows.jsonl line 1 is not valid JSON",
    ),
    Case(
        "zip-member-path-traversal",
        "data.zip",
        lambda: zipped({"../../evil.jsonl": "{nope\n"}),
        "data.zip:../../evil.jsonl line 1 is not valid JSON",
    ),
    Case(
        "gz-bomb",
        "data.jsonl.gz",
        lambda: gzip.compress(repeated(3 * MB)),
        "data.jsonl.gz unpacks to more than 1.0 MB, the limit; it was not unpacked.",
        settings={"max_upload_mb": 1},
    ),
    Case(
        "gz-corrupt",
        "data.jsonl.gz",
        b"\x1f\x8b\x08\x00" + b"garbage" * 10,
        "data.jsonl.gz is not a valid gzip file",
    ),
    Case(
        "gz-bad-checksum",
        "data.jsonl.gz",
        lambda: gzip.compress(rows_of(50).encode())[:-8] + b"\x00" * 8,
        "data.jsonl.gz is not a valid gzip file: CRC check failed",
    ),
    Case(
        "gz-truncated",
        "data.jsonl.gz",
        lambda: gzip.compress(rows_of(50).encode())[:-12],
        "data.jsonl.gz is not a valid gzip file",
    ),
    Case(
        "gz-of-unsupported-file",
        "tool.exe.gz",
        lambda: gzip.compress(b"MZ\x90\x00"),
        "tool.exe: files ending in .exe are not read",
    ),
]

ROWS = [
    rows_case(
        "mixed-schemas",
        jsonl(PC, ALPACA),
        "Row 1 (instruction): is missing",
        1,
        "instruction",
    ),
    rows_case(
        "null-field",
        jsonl(PC, {"prompt": None, "completion": "x"}),
        "Row 2 (prompt): is null",
        2,
        "prompt",
    ),
    rows_case(
        "list-where-text-belongs",
        jsonl({"prompt": ["a", "b"], "completion": "x"}),
        "Row 1 (prompt): must be text, got a list",
        1,
        "prompt",
    ),
    rows_case(
        "turn-content-not-text",
        jsonl(chat(("user", 42), ("assistant", "x"))),
        "Row 1 (messages): turn 1 content must be text, got a number",
        1,
        "messages",
    ),
    rows_case(
        "unknown-role",
        jsonl(chat(("user", "Hi"), ("bot", "Hello"))),
        "turn 2 has unknown role 'bot'",
        1,
        "messages",
    ),
    rows_case(
        "assistant-first",
        jsonl(chat(("assistant", "Hello"), ("user", "Hi"))),
        "wrong role order: turn 1 is assistant where user should come",
        1,
        "messages",
    ),
    rows_case(
        "two-user-turns",
        jsonl(chat(("user", "Hi"), ("user", "Hi?"), ("assistant", "Hello"))),
        "wrong role order: turn 2 is user where assistant should come",
        1,
        "messages",
    ),
    rows_case(
        "system-not-first",
        jsonl(chat(("user", "Hi"), ("system", "Be brief."), ("assistant", "Hello"))),
        "wrong role order: a system turn is only allowed first",
        1,
        "messages",
    ),
    rows_case(
        "ends-on-user-turn",
        jsonl(chat(("user", "Hi"), ("assistant", "Hello"), ("user", "And?"))),
        "must end with the assistant's answer",
        1,
        "messages",
    ),
    rows_case(
        "system-turn-only",
        jsonl(chat(("system", "Be brief."))),
        "Row 1 (messages): has no user turn",
        1,
        "messages",
    ),
    rows_case(
        "empty-last-answer",
        jsonl(chat(("user", "Hi"), ("assistant", "  "))),
        "turn 2 (assistant) is empty",
        1,
        "messages",
    ),
    rows_case(
        "empty-completion",
        jsonl({"prompt": "Hi", "completion": ""}),
        "Row 1 (completion): is empty",
        1,
        "completion",
    ),
    rows_case(
        "messages-not-a-list",
        jsonl({"messages": {"role": "user", "content": "Hi"}}),
        "must be a non-empty list of turns",
        1,
        "messages",
    ),
    rows_case(
        "messages-text-not-json",
        jsonl({"messages": "Hi there"}),
        "is text that is not a JSON list of turns",
        1,
        "messages",
    ),
    rows_case(
        "turn-without-content",
        jsonl({"messages": [{"role": "user"}]}),
        "turn 1 needs 'role' and 'content'",
        1,
        "messages",
    ),
    rows_case("exact-duplicate", jsonl(PC, PC2, PC), "Row 3: exact duplicate of row 1", 3, ""),
    rows_case(
        "label-not-in-set",
        jsonl({"text": "Great film", "label": "pos"}, {"text": "Meh", "label": "meh"}),
        "Row 2 (label): label 'meh' is not one of: neg, pos",
        2,
        "label",
        options={"labels": ["pos", "neg"]},
    ),
    rows_case(
        "label-is-object",
        jsonl({"text": "Great film", "label": {"name": "pos"}}),
        "Row 1 (label): must be a text or whole-number label, got an object",
        1,
        "label",
    ),
    Case(
        "too-many-labels",
        "data.jsonl",
        jsonl(*({"text": f"text {i}", "label": f"label-{i}"} for i in range(101))),
        "The label column has 101 different values; a classification set has at most 100.",
    ),
    rows_case(
        "sharegpt-unknown-from",
        jsonl(sharegpt(("human", "Hi"), ("robot", "Hello"))),
        "Row 1 (conversations): turn 2 has unknown role 'robot'",
        1,
        "conversations",
    ),
    rows_case(
        "eval-file-bad-row",
        jsonl(PC),
        "eval file row 2 (completion): is missing",
        2,
        "completion",
        eval_file=("held-out.jsonl", jsonl(PC2, {"prompt": "Capital of Chile?"})),
    ),
    Case(
        "eval-file-bad-json",
        "data.jsonl",
        jsonl(PC),
        "held-out.jsonl line 1 is not valid JSON",
        eval_file=("held-out.jsonl", "{nope\n"),
    ),
    Case(
        "name-with-parent-dirs",
        "../../evil.jsonl",
        "{nope\n",
        "evil.jsonl line 1 is not valid JSON",
    ),
]

OPTIONS = [
    Case(
        "unknown-option",
        "data.jsonl",
        jsonl(PC),
        "options.shuffle: unknown field (known: base_model, dry_run, format,",
        ValueError,
        options={"shuffle": True},
    ),
    Case(
        "bad-on-bad-rows",
        "data.jsonl",
        jsonl(PC),
        "options.on_bad_rows: must be one of refuse, drop; got 'skip'",
        ValueError,
        options={"on_bad_rows": "skip"},
    ),
    Case(
        "unknown-format",
        "data.jsonl",
        jsonl(PC),
        "options.format: 'csvish' is not one of messages,",
        ValueError,
        options={"format": "csvish"},
    ),
    Case(
        "bad-text-mode",
        "data.txt",
        "Some text.\n",
        "options.text_mode: must be one of blocks, file; got 'lines'",
        ValueError,
        options={"text_mode": "lines"},
    ),
    Case(
        "labels-not-strings",
        "data.jsonl",
        jsonl({"text": "t", "label": "1"}),
        "options.labels: must be a list of names, got [1, 2]",
        ValueError,
        options={"labels": [1, 2]},
    ),
    Case(
        "max-length-too-small",
        "data.jsonl",
        jsonl(PC),
        "options.max_length: must be from 16 to 131072, got 8",
        ValueError,
        options={"max_length": 8},
    ),
    Case(
        "mapping-to-missing-column",
        "data.jsonl",
        jsonl(PC),
        "mapping.prompt: the file has no column 'question' (columns: prompt, completion).",
        options={"format": "prompt_completion", "mapping": {"prompt": "question"}},
    ),
    Case(
        "mapping-of-unknown-field",
        "data.jsonl",
        jsonl(PC),
        "mapping: prompt_completion has no field 'answer'",
        options={"format": "prompt_completion", "mapping": {"answer": "completion"}},
    ),
    Case(
        "format-without-its-columns",
        "data.jsonl",
        jsonl(PC),
        "The classification schema needs a column for 'text', 'label'",
        options={"format": "classification"},
    ),
]

HUB = [
    Case(
        "hub-id-offline",
        "",
        None,
        "The Hugging Face Hub cannot be reached from this machine",
        options={"hub_id": "owner/name"},
    ),
    Case(
        "hub-id-not-an-id",
        "",
        None,
        "'../etc' is not a Hub dataset id (like 'owner/name').",
        options={"hub_id": "../etc"},
    ),
    Case(
        "hub-split-not-a-split",
        "",
        None,
        "'../train' is not a split name",
        options={"hub_id": "owner/name", "hub_split": "../train"},
    ),
    Case(
        "hub-id-and-files",
        "data.jsonl",
        jsonl(PC),
        "Give files or a Hub dataset id, not both.",
        ValueError,
        options={"hub_id": "owner/name"},
    ),
]

CASES = FILES + TEXT + LIMITS + ARCHIVES + ROWS + OPTIONS + HUB


def param(case: Case):
    return pytest.param(case, id=case.id)


def state(root: Path) -> set[str]:
    """Every path under root but the database files, which any call may touch."""
    return {
        p.relative_to(root).as_posix()
        for p in root.rglob("*")
        if not p.name.endswith(SQLITE_SUFFIXES)
    }


@pytest.mark.parametrize("case", [param(c) for c in CASES])
def test_malformed_upload_is_refused_and_nothing_is_stored(
    case, settings, store, tmp_path, offline_hub
):
    settings = replace(settings, **case.settings)
    uploads = tmp_path / "uploads" / "a" / "b"
    uploads.mkdir(parents=True)
    files = eval_files = None
    if case.name:
        files = uploads / case.name
        if case.data is not None:
            data = case.data() if callable(case.data) else case.data
            files = write(uploads, case.name, data)
    if case.eval_file:
        eval_files = write(uploads, *case.eval_file)
    before, around = state(tmp_path), set(os.listdir(tmp_path.parent))

    with pytest.raises(case.error) as raised:
        upload_dataset(settings, files, options=case.options, eval_files=eval_files)

    message = str(raised.value)
    for part in (case.message,) if isinstance(case.message, str) else case.message:
        assert part in message
    if case.bad is not None:
        first = raised.value.problems[0]
        assert (first.row, first.column) == case.bad
        assert raised.value.total >= len(raised.value.problems)
    assert store.list_datasets() == []
    assert list((settings.data_dir / "tmp").iterdir()) == []
    assert list((settings.data_dir / "datasets").iterdir()) == []
    assert state(tmp_path) == before
    assert set(os.listdir(tmp_path.parent)) == around


def test_the_storage_check_sees_a_stored_upload(settings, store, tmp_path):
    path = write(tmp_path / "uploads", "data.jsonl", jsonl(PC, PC2))
    before = state(tmp_path)
    info = upload_dataset(settings, path)
    assert [d.id for d in store.list_datasets()] == [info["id"]]
    assert state(tmp_path) - before
    assert list((settings.data_dir / "tmp").iterdir()) == []


def test_zip_bomb_is_refused_before_anything_is_unpacked(settings, tmp_path, monkeypatch):
    path = write(tmp_path, "bomb.zip", zipped({"rows.jsonl": repeated(5 * MB)}))

    def refuse(*args, **kwargs):
        raise AssertionError("a member was opened")

    monkeypatch.setattr(zipfile.ZipFile, "open", refuse)
    with pytest.raises(DataError, match="It was not unpacked"):
        upload_dataset(replace(settings, max_upload_mb=1), path)


def test_drop_stores_the_good_rows_and_lists_the_bad(settings, store, tmp_path):
    rows = [
        PC,
        {"prompt": "Capital of Chile?"},
        PC2,
        {"prompt": None, "completion": "Quito"},
        PC,
        {"prompt": "Capital of Spain?", "completion": "Madrid"},
    ]
    path = write(tmp_path, "data.jsonl", jsonl(*rows))

    info = upload_dataset(settings, path, options={"on_bad_rows": "drop"})

    assert [(b["row"], b["column"]) for b in info["bad_rows"]] == [
        (2, "completion"),
        (4, "prompt"),
        (5, ""),
    ]
    assert info["rows"] == 3
    assert info["dropped_rows"] == 3
    stored = store.get_dataset(info["id"])
    assert (stored.rows, stored.dropped_rows) == (3, 3)
    kept = read_rows(store.dataset_dir(stored.id) / "rows.jsonl")
    assert [r["messages"][-1]["content"] for r in kept] == ["Paris", "Lima", "Madrid"]
    assert list((settings.data_dir / "tmp").iterdir()) == []


def test_drop_with_every_row_bad_is_refused(settings, store, tmp_path):
    path = write(
        tmp_path, "data.jsonl", jsonl({"prompt": "a"}, {"prompt": None, "completion": "b"})
    )
    before = state(tmp_path)

    with pytest.raises(BadRows, match="2 of 2 rows cannot be used") as raised:
        upload_dataset(settings, path, options={"on_bad_rows": "drop"})

    assert [(p.row, p.column) for p in raised.value.problems] == [(1, "completion"), (2, "prompt")]
    assert store.list_datasets() == []
    assert list((settings.data_dir / "tmp").iterdir()) == []
    assert state(tmp_path) == before
