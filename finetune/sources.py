"""Where records come from: uploaded files of any common shape, archives, or a Hub dataset.

Everything here turns bytes into a list of records (dicts) and nothing else; which schema the
records follow is data.py's business. Every limit is checked before the work it guards: an
archive's sizes before it is unpacked, a line's length before it is parsed. A file's name only
ever chooses a reader (by its suffix); it never becomes a path.
"""

from __future__ import annotations

import contextlib
import csv
import gc
import gzip
import io
import json
import re
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from errors import UserError

SUFFIXES = (".json", ".jsonl", ".csv", ".tsv", ".parquet", ".txt")
ARCHIVES = (".zip", ".gz")
MAX_ARCHIVE_MEMBERS = 64
MAX_ARCHIVE_RATIO = 200  # unpacked / packed: ordinary text compresses 3-20x; bombs do 1000x
TEXT_MODES = ("blocks", "file")  # .txt: one example per blank-line block, or one per file
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}(/[A-Za-z0-9][\w.-]{0,95})?$")


class DataError(UserError):
    """A file that cannot become a dataset; the message names the problem and the rows."""


@dataclass(frozen=True)
class Limits:
    max_bytes: int = 200 * 2**20  # one file, or one archive's unpacked contents
    max_rows: int = 1_000_000
    max_row_bytes: int = 2**20  # one line / row / text document

    def row_too_long(self, size: int, what: str) -> DataError:
        return DataError(
            f"{what} is {_size(size)} long; the limit is {_size(self.max_row_bytes)} per row. "
            "Is this really one example per line?"
        )


@dataclass
class Records:
    """The records of one source, in order, and what the user should know about reading them."""

    label: str  # for messages only ("data.csv", "archive.zip:b.jsonl")
    records: list[Any]
    warnings: list[str] = field(default_factory=list)


@contextlib.contextmanager
def no_gc() -> Iterator[None]:
    """Pause the cyclic garbage collector while building many small objects that stay alive:
    reading 100k rows otherwise triggers repeated full collections that find nothing."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def kind_of(value: Any) -> str:
    """A JSON value's kind in a user's words ("a number", "null"), never a Python type name."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, int | float):
        return "a number"
    return {str: "text", dict: "an object", list: "a list"}.get(type(value), type(value).__name__)


def _size(n: int) -> str:
    return (
        f"{n / 2**20:.1f} MB" if n >= 2**20 else f"{n / 2**10:.0f} KB" if n >= 2**10 else f"{n} B"
    )


def suffix_of(name: str) -> str:
    """The reader-choosing suffix of a file name: '.jsonl', or '.gz' / '.zip' for archives."""
    return Path(str(name)).suffix.lower()


def read_source(path: Path, name: str, limits: Limits, text_mode: str = "blocks") -> list[Records]:
    """The records in an uploaded file (several when it is an archive of data files)."""
    size = path.stat().st_size
    if size > limits.max_bytes:
        raise DataError(
            f"{name} is {_size(size)}; the limit is {_size(limits.max_bytes)} "
            "(ADAPTERLAB_MAX_UPLOAD_MB)."
        )
    suffix = suffix_of(name)
    if suffix == ".zip":
        return _read_zip(path, name, limits, text_mode)
    if suffix == ".gz":
        inner = name[: -len(".gz")] if name.lower().endswith(".gz") else name
        data = _gunzip(path.read_bytes(), name, limits)
        return [read_bytes(data, inner, limits, text_mode)]
    return [read_bytes(path.read_bytes(), name, limits, text_mode)]


def read_bytes(data: bytes, name: str, limits: Limits, text_mode: str = "blocks") -> Records:
    """One data file's records; name is only used for its suffix and in messages."""
    suffix = suffix_of(name)
    if suffix not in SUFFIXES:
        known = ", ".join(SUFFIXES + ARCHIVES)
        raise DataError(f"{name}: files ending in {suffix or '(nothing)'} are not read ({known}).")
    if not data.strip():
        raise DataError(f"{name} is empty.")
    if suffix == ".parquet":
        return Records(name, _read_parquet(data, name, limits))
    with no_gc():
        return _read_text_file(data, name, suffix, limits, text_mode)


def _read_text_file(data: bytes, name: str, suffix: str, limits: Limits, text_mode: str) -> Records:
    if suffix == ".jsonl" and not data.startswith((b"\xff\xfe", b"\xfe\xff")):
        # The common case, fast and lean: UTF-8 lines straight to json, never one big str.
        with contextlib.suppress(UnicodeDecodeError):  # not UTF-8: decoded with a warning below
            return _limited(
                _read_jsonl_bytes(data.removeprefix(b"\xef\xbb\xbf"), name, limits), name, limits
            )
    text, warnings = decode(data, name)
    if suffix == ".jsonl":
        records = _read_jsonl(text, name, limits)
    elif suffix == ".json":
        records = _read_json(text, name, limits)
    elif suffix in (".csv", ".tsv"):
        records = _read_csv(text, "\t" if suffix == ".tsv" else ",", name, limits)
    else:
        records = _read_text(text, name, limits, text_mode)
    return _limited(Records(name, records, warnings), name, limits)


def _limited(records: Records, name: str, limits: Limits) -> Records:
    if not records.records:
        raise DataError(f"{name} has no rows.")
    if len(records.records) > limits.max_rows:
        raise DataError(
            f"{name} has {len(records.records):,} rows; the limit is {limits.max_rows:,}."
        )
    return records


def decode(data: bytes, name: str) -> tuple[str, list[str]]:
    """UTF-8 (BOM or not), UTF-16 by its BOM, else Windows-1252 (what Excel writes) or Latin-1
    with a warning; binary is refused."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        try:
            return data.decode("utf-16"), []
        except UnicodeDecodeError:
            raise DataError(f"{name} starts like UTF-16 but does not decode as it.") from None
    if b"\x00" in data[:65536]:
        raise DataError(f"{name} looks like a binary file, not text (it holds NUL bytes).")
    try:
        return data.decode("utf-8-sig"), []
    except UnicodeDecodeError as exc:
        first_bad = exc.start
    # Control characters other than tab and line breaks do not occur in text files.
    controls = sum(b < 32 and b not in b"\t\n\r\x0c" for b in data[:65536])
    if controls > 64:
        raise DataError(f"{name} looks like a binary file, not text.")
    try:
        text, encoding = data.decode("cp1252"), "Windows-1252"
    except UnicodeDecodeError:  # five bytes cp1252 leaves undefined
        text, encoding = data.decode("latin-1"), "Latin-1"
    return text, [
        f"{name} is not UTF-8 (first bad byte at offset {first_bad}); it was read as "
        f"{encoding}. Check accented text and quotes in the preview."
    ]


def _read_jsonl_bytes(data: bytes, name: str, limits: Limits) -> Records:
    if b"\x00" in data[:65536]:
        raise DataError(f"{name} looks like a binary file, not text (it holds NUL bytes).")
    # bytes go to json.loads as they are: decoded as UTF-8, strictly, with no big str made
    return Records(name, _jsonl_lines(data.split(b"\n"), name, limits))


def _read_jsonl(text: str, name: str, limits: Limits) -> list[Any]:
    # "\n" only: str.splitlines would also break inside a row at U+2028, U+0085 and others.
    return _jsonl_lines(text.split("\n"), name, limits)


def _jsonl_lines(lines: list[bytes] | list[str], name: str, limits: Limits) -> list[Any]:
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        if len(line) > limits.max_row_bytes:  # bytes, or characters (each one byte or more)
            size = len(line) if isinstance(line, bytes) else len(line.encode("utf-8"))
            raise limits.row_too_long(size, f"{name} line {number}")
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise DataError(f"{name} line {number} is not valid JSON: {_msg(exc)}.") from None
        except RecursionError:
            raise _too_deep(f"{name} line {number}") from None
        if len(records) > limits.max_rows:
            raise DataError(f"{name} has more than {limits.max_rows:,} rows (the limit).")
    return records


def _read_json(text: str, name: str, limits: Limits) -> list[Any]:
    try:
        data = json.loads(text)
    except RecursionError:
        raise _too_deep(name) from None
    except json.JSONDecodeError as exc:
        first_line = text.lstrip().split("\n", 1)[0]
        if "\n" in text.strip() and _parses(first_line):
            return _read_jsonl(text, name, limits)  # a .json file holding JSON lines
        ends_early = exc.pos >= len(text.rstrip()) - 1 or exc.msg.startswith("Unterminated")
        raise DataError(
            f"{name} is not valid JSON: {_msg(exc)} (line {exc.lineno}, "
            f"column {exc.colno})" + ("; is the file cut short?" if ends_early else ".")
        ) from None
    if isinstance(data, dict):
        lists = [k for k, v in data.items() if isinstance(v, list)]
        if len(lists) != 1:
            raise DataError(
                f"{name} holds a JSON object; it must be a list of rows, or an object with "
                f"exactly one list (it has {len(lists)})."
            )
        data = data[lists[0]]
    if not isinstance(data, list):
        raise DataError(f"{name} holds {kind_of(data)}; it must be a list of rows.")
    for number, record in enumerate(data, start=1):
        if isinstance(record, dict | list) and len(json.dumps(record)) > limits.max_row_bytes:
            raise limits.row_too_long(len(json.dumps(record)), f"{name} row {number}")
    return data


def _parses(line: str) -> bool:
    try:
        json.loads(line)
        return True
    except (json.JSONDecodeError, RecursionError):
        return False


def _msg(exc: json.JSONDecodeError) -> str:
    return exc.msg.removesuffix(" at")  # "Unterminated string starting at" + a position


def _too_deep(where: str) -> DataError:
    return DataError(f"{where} nests lists or objects too deeply to be a dataset row.")


def _read_csv(text: str, delimiter: str, name: str, limits: Limits) -> list[Any]:
    csv.field_size_limit(limits.max_row_bytes + 1)
    row_start = 1  # the line the row being read starts on
    try:
        # strict: an unclosed quote is an error, not a cell that swallows the rest of the file
        reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
        header = next(reader, None)
        if not header or not any(h.strip() for h in header):
            raise DataError(f"{name} has no header row.")
        header = [h.strip() for h in header]
        if len(set(header)) != len(header):
            dupes = sorted({h for h in header if header.count(h) > 1})
            raise DataError(f"{name} repeats the column name {dupes[0]!r} in its header.")
        rows, row_start = [], reader.line_num + 1
        for number, cells in enumerate(reader, start=1):
            row_start = reader.line_num + 1  # for the next row
            if not cells:
                continue
            if len(cells) > len(header):
                raise DataError(
                    f"{name} row {number} has {len(cells)} cells; the header has {len(header)}."
                )
            rows.append(dict(zip(header, cells, strict=False)))
            if len(rows) > limits.max_rows:
                raise DataError(f"{name} has more than {limits.max_rows:,} rows (the limit).")
    except csv.Error as exc:
        line = row_start
        if "field larger than field limit" in str(exc):
            raise DataError(
                f"{name} line {line}: a cell is longer than {_size(limits.max_row_bytes)}, the "
                "limit per row. Is a quote left open above it?"
            ) from None
        if "unexpected end of data" in str(exc):
            raise DataError(
                f'{name}: a quoted cell opened by line {line} is never closed (a missing ").'
            ) from None
        raise DataError(f"{name} is not valid CSV at line {line}: {exc}.") from None
    if not rows:
        raise DataError(f"{name} has a header but no rows.")
    return rows


def _read_text(text: str, name: str, limits: Limits, text_mode: str) -> list[Any]:
    if text_mode not in TEXT_MODES:
        raise DataError(f"text_mode must be one of {', '.join(TEXT_MODES)}, got {text_mode!r}.")
    if text_mode == "file":
        parts = [text.strip()]
    else:
        parts = [p.strip() for p in re.split(r"\n[ \t]*\n", text.replace("\r\n", "\n"))]
    records = []
    for number, part in enumerate((p for p in parts if p), start=1):
        if len(part) > limits.max_row_bytes:
            raise limits.row_too_long(len(part.encode("utf-8")), f"{name} text block {number}")
        records.append({"text": part})
    return records


def _read_parquet(data: bytes, name: str, limits: Limits) -> list[Any]:
    if not data.startswith(b"PAR1"):
        raise DataError(f"{name} is not a Parquet file (it lacks the PAR1 mark).")
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(io.BytesIO(data))
        if parquet.metadata.num_rows > limits.max_rows:
            rows = parquet.metadata.num_rows
            raise DataError(f"{name} has {rows:,} rows; the limit is {limits.max_rows:,}.")
        # Compressed columns can unpack to far more than the file: count as batches arrive.
        records, unpacked = [], 0
        for batch in parquet.iter_batches(batch_size=1024):
            unpacked += batch.nbytes
            if unpacked > limits.max_bytes:
                raise DataError(
                    f"{name} unpacks to more than {_size(limits.max_bytes)}, the limit; "
                    "it was not read further."
                )
            if batch.num_rows and batch.nbytes / batch.num_rows > limits.max_row_bytes:
                big = max(range(batch.num_rows), key=lambda i: batch.slice(i, 1).nbytes)
                raise limits.row_too_long(
                    batch.slice(big, 1).nbytes, f"{name} row {len(records) + big + 1}"
                )
            records.extend(batch.to_pylist())
        return records
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"{name} cannot be read as Parquet: {exc}.") from None


def _gunzip(data: bytes, name: str, limits: Limits) -> bytes:
    """Decompress in chunks, stopping as soon as the output passes the limit."""
    out = io.BytesIO()
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(data)) as f:
            while chunk := f.read(2**20):
                out.write(chunk)
                if out.tell() > limits.max_bytes:
                    raise DataError(
                        f"{name} unpacks to more than {_size(limits.max_bytes)}, the limit; "
                        "it was not unpacked."
                    )
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{name} is not a valid gzip file: {exc}.") from None
    return out.getvalue()


def _zip_entries(path: Path) -> int | None:
    """The entry count in a zip's end record, read before zipfile builds an object per entry."""
    with path.open("rb") as f:
        f.seek(0, io.SEEK_END)
        f.seek(max(0, f.tell() - 65557))  # the end record (22 B) plus its longest comment
        tail = f.read()
    at = tail.rfind(b"PK\x05\x06")
    return int.from_bytes(tail[at + 10 : at + 12], "little") if at >= 0 else None


def _read_zip(path: Path, name: str, limits: Limits, text_mode: str) -> list[Records]:
    entries = _zip_entries(path)
    if entries is not None and entries > MAX_ARCHIVE_MEMBERS:
        raise DataError(f"{name} holds {entries} files; the limit is {MAX_ARCHIVE_MEMBERS}.")
    try:
        zf = zipfile.ZipFile(path)
    except zipfile.BadZipFile:
        raise DataError(f"{name} is not a valid zip archive.") from None
    with zf:
        members = [
            m
            for m in zf.infolist()
            if not m.is_dir() and not Path(m.filename).name.startswith((".", "__MACOSX"))
        ]
        data_members = [m for m in members if suffix_of(m.filename) in SUFFIXES]
        if not data_members:
            raise DataError(f"{name} holds no data files ({', '.join(SUFFIXES)}).")
        if len(members) > MAX_ARCHIVE_MEMBERS:
            raise DataError(
                f"{name} holds {len(members)} files; the limit is {MAX_ARCHIVE_MEMBERS}."
            )
        # The sizes the archive declares, checked before anything is unpacked ...
        declared = sum(m.file_size for m in data_members)
        packed = sum(m.compress_size for m in data_members) or 1
        if declared > limits.max_bytes or declared / packed > MAX_ARCHIVE_RATIO:
            raise DataError(
                f"{name} unpacks to {_size(declared)} from {_size(packed)}; the limit is "
                f"{_size(limits.max_bytes)} and a {MAX_ARCHIVE_RATIO}x ratio. It was not unpacked."
            )
        sources, total = [], 0
        for member in sorted(data_members, key=lambda m: m.filename):
            # ... and the bytes actually read, since a declared size can lie.
            try:
                with zf.open(member) as f:
                    data = f.read(limits.max_bytes - total + 1)
            except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as exc:
                raise DataError(f"{name}: {member.filename} is damaged ({exc}).") from None
            except (RuntimeError, NotImplementedError):  # encrypted, or an unknown method
                raise DataError(
                    f"{name}: {member.filename} is encrypted or packed in a way that cannot be "
                    "read; zip it again without a password, with the usual (deflate) method."
                ) from None
            total += len(data)
            if total > limits.max_bytes:
                raise DataError(f"{name} unpacks to more than declared; it was not read.")
            label = f"{name}:{member.filename}"
            sources.append(read_bytes(data, label, limits, text_mode))
    return sources


def read_hub(
    dataset_id: str,
    split: str,
    subset: str,
    limits: Limits,
    reachable: Callable[[], bool],
    first: int | None = None,
) -> Records:
    """Rows of a Hub dataset (no remote code), or a clear message when the Hub is out of reach.

    first: read only that many rows (to look at the columns), and no limit applies.
    """
    dataset_id, split, subset = dataset_id.strip(), (split or "train").strip(), subset.strip()
    if not dataset_id:
        raise DataError("Give a Hub dataset id, like 'owner/name'.")
    if not _HUB_ID.fullmatch(dataset_id) or ".." in dataset_id:
        raise DataError(f"{dataset_id!r} is not a Hub dataset id (like 'owner/name').")
    if not re.fullmatch(r"[\w.\-]{1,64}", split):
        raise DataError(f"{split!r} is not a split name (like 'train' or 'test').")
    if subset and not re.fullmatch(r"[\w.\-]{1,64}", subset):
        raise DataError(f"{subset!r} is not a subset (configuration) name.")
    if not reachable():
        raise DataError(
            "The Hugging Face Hub cannot be reached from this machine, so Hub datasets are not "
            "available. Download the dataset's files elsewhere and upload them here."
        )
    import datasets

    label = f"{dataset_id}" + (f" ({subset})" if subset else "") + f" [{split}]"
    records, size = [], 0
    try:
        # Streamed, so a huge dataset costs only the rows read before a limit stops it.
        stream = datasets.load_dataset(dataset_id, subset or None, split=split, streaming=True)
        for row in stream:
            if first is not None and len(records) == first:
                break
            size += len(json.dumps(row, default=str))
            if len(records) == limits.max_rows or size > limits.max_bytes:
                raise DataError(
                    f"{label} is larger than the limits ({limits.max_rows:,} rows, "
                    f"{_size(limits.max_bytes)}); download part of it and upload that."
                )
            records.append(row)
    except DataError:
        raise
    except Exception as exc:  # the library raises many kinds; the user needs the sentence
        raise DataError(f"The Hub dataset {dataset_id} could not be loaded: {exc}") from None
    return _limited(Records(label, records), label, limits)
