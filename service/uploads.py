"""Uploading a dataset (files, a .zip, a Hub dataset, a bundled sample), as the Data tab and the
API call it.

An upload is read, checked and normalized completely before anything is written; then its
folder and its row appear together, or not at all. A refusal is a UserError naming the field.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from config import Settings
from errors import UserError
from finetune.data import (
    DETECT_SAMPLE,
    ON_BAD_ROWS,
    SCHEMAS,
    BadRows,
    Parsed,
    Problem,
    apply_policy,
    content_stats,
    detect,
    parse,
    problems_json,
    write_lines,
    write_rows,
)
from finetune.fields import Field, Request, SpecError
from finetune.models import hub_reachable
from finetune.samples import SAMPLES
from finetune.sources import (
    TEXT_MODES,
    DataError,
    Limits,
    Records,
    read_hub,
    read_source,
    suffix_of,
)
from service.datasets import (
    BAD_ROWS_KEPT,
    DEFAULT_MAX_LENGTH,
    dataset_info,
    stored_problems,
    tokenizer_of,
)
from storage.store import EVAL_FILE, PROBLEMS_FILE, ROWS_FILE, Store


@dataclass(frozen=True)
class UploadOptions(Request):
    """How to read an upload; every field optional. Unknown keys are refused, not ignored."""

    format: str = ""  # a schema id; "" detects it
    mapping: dict[str, str] = field(default_factory=dict)  # schema field -> column
    on_bad_rows: str = "refuse"  # or "drop"
    labels: list[str] = field(default_factory=list)  # classification: the allowed labels
    text_mode: str = "blocks"  # .txt files: "blocks" (blank-line separated) or "file"
    base_model: str = ""  # given: rows longer than max_length in its tokens are bad rows
    max_length: int = DEFAULT_MAX_LENGTH
    hub_id: str = ""  # a Hub dataset instead of files
    hub_split: str = "train"
    hub_subset: str = ""
    dry_run: bool = False  # check and report only: nothing is stored, bad rows never refuse

    FIELDS = (
        Field("format", "Format", str, "", max_chars=100),
        Field("mapping", "Column mapping", dict, {}),
        Field("on_bad_rows", "Bad rows", str, "refuse", choices=ON_BAD_ROWS),
        Field("labels", "Labels", list, [], optional=True, max_items=10_000),
        Field("text_mode", "Text files", str, "blocks", choices=TEXT_MODES),
        Field("base_model", "Base model", str, "", max_chars=500),
        Field("max_length", "Max length", int, DEFAULT_MAX_LENGTH, minimum=16, maximum=131072),
        Field("hub_id", "Hub dataset", str, "", max_chars=200),
        Field("hub_split", "Hub split", str, "train", max_chars=100),
        Field("hub_subset", "Hub subset", str, "", max_chars=100),
        Field("dry_run", "Check only", bool, False),
    )

    def check(self, where: str) -> None:
        if self.format and self.format not in SCHEMAS:
            raise SpecError(f"{where}.format: {self.format!r} is not one of {', '.join(SCHEMAS)}.")

    def key(self) -> str:
        """What, besides the bytes, decides the stored rows (part of the content hash)."""
        parts = self.to_dict()
        parts.pop("dry_run")
        if not self.base_model:
            parts.pop("max_length")
        return json.dumps(parts, sort_keys=True)


def limits(settings: Settings) -> Limits:
    return Limits(
        max_bytes=settings.max_upload_mb * 2**20,
        max_rows=settings.max_rows,
        max_row_bytes=settings.max_row_kb * 2**10,
    )


def _file_list(files: Any) -> list[tuple[Path, str]]:
    """(path on disk, name shown) for each upload. The name only picks a reader and is shown."""
    if files is None or files == "":
        return []
    items = files if isinstance(files, list | tuple) else [files]
    out = []
    for item in items:
        path = Path(item if isinstance(item, str | Path) else getattr(item, "name", ""))
        if not str(item) or not path.is_file():
            raise UserError("An uploaded file did not arrive; try again.")
        out.append((path, path.name))
    return out


def read_sources(settings: Settings, files: Any, opts: UploadOptions) -> list[Records]:
    if opts.hub_id:
        if _file_list(files):
            raise UserError("Give files or a Hub dataset id, not both.")
        return [
            read_hub(opts.hub_id, opts.hub_split, opts.hub_subset, limits(settings), hub_reachable)
        ]
    listed = _file_list(files)
    if not listed:
        raise UserError("Choose a file to upload (or give a Hub dataset id).")
    sources: list[Records] = []
    for path, name in listed:
        sources.extend(read_source(path, name, limits(settings), opts.text_mode))
    total = sum(len(s.records) for s in sources)
    if total > settings.max_rows:
        raise DataError(
            f"The files hold {total:,} rows together; the limit is {settings.max_rows:,}."
        )
    return sources


def inspect_columns(settings: Settings, files: Any, options: dict | None = None) -> dict[str, Any]:
    """The columns of an upload (files, or a Hub dataset's first rows) and the schema and
    mapping detected, for the mapping control."""
    opts = UploadOptions.parse(options, "options")
    if opts.hub_id:
        sources = [
            read_hub(
                opts.hub_id,
                opts.hub_split,
                opts.hub_subset,
                limits(settings),
                hub_reachable,
                first=DETECT_SAMPLE,
            )
        ]
    else:
        sources = read_sources(settings, files, opts)
    records = [r for s in sources for r in s.records[:DETECT_SAMPLE] if isinstance(r, dict)]
    columns = list(dict.fromkeys(k for r in records for k in r))
    try:
        schema_id, mapping = detect(columns, records)
    except DataError:
        schema_id, mapping = "", {}
    return {"columns": columns, "format": schema_id, "mapping": mapping}


def _check_lengths(settings: Settings, parsed: Parsed, opts: UploadOptions) -> None:
    """Chat rows longer than max_length in the chosen model's tokens become bad rows."""
    if not opts.base_model or parsed.format == "text":  # text is cut into chunks, not truncated
        return
    from finetune.preview import token_lengths

    tokenizer = tokenizer_of(settings, opts.base_model)
    if tokenizer.chat_template is None and any("messages" in r for r in parsed.rows):
        raise UserError(
            f"options.base_model: {opts.base_model} has no chat template, so chat rows cannot "
            "be measured in its tokens; pick a chat model, or no model (no length check)."
        )
    lengths = token_lengths(tokenizer, parsed.rows)
    bad = {
        key: Problem(
            key[1],
            "",
            f"is {n} tokens of {opts.base_model}; "
            f"max length {opts.max_length} would cut its answer",
            key[0],
        )
        for key, n in zip(parsed.keys, lengths, strict=True)
        if n > opts.max_length
    }
    if bad:
        parsed.drop(bad)


def _parse_all(
    settings: Settings, files: Any, eval_files: Any, opts: UploadOptions
) -> tuple[Parsed, Parsed | None, list[Records]]:
    sources = read_sources(settings, files, opts)
    parsed = parse(sources, opts.format, opts.mapping, opts.labels)
    _check_lengths(settings, parsed, opts)
    if not opts.dry_run:
        apply_policy(parsed, opts.on_bad_rows)
    eval_parsed, eval_sources = None, []
    if _file_list(eval_files):
        try:
            eval_sources = read_sources(
                settings, eval_files, UploadOptions(text_mode=opts.text_mode)
            )
            present = columns_of(eval_sources)
            required = [parsed.mapping[f] for f in SCHEMAS[parsed.format].fields]
            missing = [column for column in required if column not in present]
            if missing:
                raise DataError(
                    f"it needs the training file's columns; {', '.join(missing)} is missing."
                )
            # The eval file follows the train file's schema, mapping and labels.
            eval_parsed = parse(eval_sources, parsed.format, parsed.mapping, parsed.labels)
            _check_lengths(settings, eval_parsed, opts)
            if not opts.dry_run:
                apply_policy(eval_parsed, opts.on_bad_rows)
        except BadRows as exc:
            raise BadRows([_in_eval(p) for p in exc.problems], exc.total) from None
        except DataError as exc:
            raise DataError(f"Eval file: {exc}") from None
        total = len(parsed.rows) + len(eval_parsed.rows)
        if total > settings.max_rows:
            raise DataError(
                f"Training and eval rows are {total:,}; the limit is {settings.max_rows:,}."
            )
        shared = len(set(parsed.lines) & set(eval_parsed.lines))
        if shared:
            eval_parsed.warnings.append(
                f"{shared:,} eval rows also appear in the training rows, so eval loss there "
                "measures memory, not generalization."
            )
    return parsed, eval_parsed, sources + eval_sources


def columns_of(sources: list[Records]) -> set[str]:
    return {k for s in sources for r in s.records if isinstance(r, dict) for k in r}


def _in_eval(problem: Problem) -> Problem:
    return Problem(problem.row, problem.column, problem.problem, problem.source or "eval file")


def _digest(
    files: list[tuple[Path, str]], eval_files: list[tuple[Path, str]], key: str, hub_lines=()
) -> str:
    """The upload's bytes (a Hub dataset's rows) and the options that shaped its rows."""
    h = hashlib.sha256()
    for group in (files, eval_files):
        for path, _ in group:
            with path.open("rb") as f:
                while chunk := f.read(2**20):
                    h.update(chunk)
            h.update(b"\x00file\x00")
        h.update(b"\x00eval\x00")
    for line in hub_lines:  # a Hub id names no fixed content: its rows are the content
        h.update(line.encode() + b"\n")
    h.update(key.encode())
    return h.hexdigest()


def upload_dataset(
    settings: Settings,
    files: Any,
    name: str = "",
    options: dict[str, Any] | None = None,
    eval_files: Any = None,
) -> dict[str, Any]:
    """Validate an upload completely, then store it; a refused or broken upload stores nothing.

    Returns the dataset's info plus `bad_rows` (the rows dropped, with row numbers and columns)
    and `existing` (True when the same content was uploaded before: that dataset is returned).
    """
    opts = UploadOptions.parse(options, "options")
    parsed, eval_parsed, sources = _parse_all(settings, files, eval_files, opts)
    problems = parsed.problems + [
        _in_eval(p) for p in (eval_parsed.problems if eval_parsed else [])
    ]
    if opts.dry_run:
        return _checked_only(parsed, eval_parsed, problems)
    store = Store(settings.data_dir)
    listed, eval_listed = _file_list(files), _file_list(eval_files)
    digest = _digest(listed, eval_listed, opts.key(), parsed.lines if opts.hub_id else ())
    existing = store.find_dataset_by_hash(digest)
    if existing is not None:
        info = dataset_info(existing)
        info["warnings"] = [
            *existing.warnings,
            f"The same content was uploaded before as '{existing.name}'; that dataset is used.",
        ]
        problems_before = stored_problems(store, existing.id)
        return {**info, "bad_rows": problems_before, "existing": True, "stored": True}
    default_name = opts.hub_id or (Path(listed[0][1]).stem if listed else "") or "dataset"
    staging = store.tmp_dir()
    try:
        originals = _stage(staging, listed, eval_listed, parsed, eval_parsed, problems)
        stats = content_stats(parsed.rows)
        if parsed.labels:
            stats["labels"] = parsed.labels
        dataset = store.add_dataset(
            staging,
            name=(name or "").strip()[:200] or default_name[:200],
            format=parsed.format,
            rows=len(parsed.rows),
            columns=parsed.columns,
            warnings=parsed.warnings + (eval_parsed.warnings if eval_parsed else []),
            source_file=originals[0] if originals else "",
            content_hash=digest,
            mapping=parsed.mapping,
            eval_rows=len(eval_parsed.rows) if eval_parsed else 0,
            dropped_rows=len(problems),
            sources=[s.label for s in sources],
            stats=stats,
        )
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return {
        **dataset_info(dataset),
        "bad_rows": problems_json(problems[:BAD_ROWS_KEPT]),
        "existing": False,
        "stored": True,
    }


def _checked_only(parsed: Parsed, eval_parsed: Parsed | None, problems: list[Problem]) -> dict:
    """What a dry run reports: the upload as it would be stored."""
    return {
        "stored": False,
        "format": parsed.format,
        "mapping": parsed.mapping,
        "columns": parsed.columns,
        "rows": len(parsed.rows),
        "eval_rows": len(eval_parsed.rows) if eval_parsed else 0,
        "bad_row_count": len(problems),
        "bad_rows": problems_json(problems[:BAD_ROWS_KEPT]),
        "warnings": parsed.warnings + (eval_parsed.warnings if eval_parsed else []),
    }


def _stage(
    staging: Path,
    listed: list[tuple[Path, str]],
    eval_listed: list[tuple[Path, str]],
    parsed: Parsed,
    eval_parsed: Parsed | None,
    problems: list[Problem],
) -> list[str]:
    """The dataset's folder, written in staging: the originals under our names, the rows, the
    eval rows and the bad rows -> the originals' names."""
    originals = []
    for i, (path, shown) in enumerate(listed + eval_listed, start=1):
        kind = "eval" if i > len(listed) else "original"
        stored = f"{kind}-{i}{suffix_of(shown)}"  # our name; the user's only picked a reader
        shutil.copyfile(path, staging / stored)
        originals.append(stored)
    write_lines(parsed.lines, staging / ROWS_FILE)
    if eval_parsed is not None:
        write_lines(eval_parsed.lines, staging / EVAL_FILE)
    (staging / PROBLEMS_FILE).write_text(
        json.dumps(problems_json(problems[:BAD_ROWS_KEPT]), ensure_ascii=False),
        encoding="utf-8",
    )
    return originals


def add_sample(settings: Settings, sample: str) -> dict[str, Any]:
    """Store a bundled sample as a dataset (once; later calls return the same one)."""
    if sample not in SAMPLES:
        raise UserError(f"Unknown sample {sample!r} (known: {', '.join(SAMPLES)}).")
    entry = SAMPLES[sample]
    try:
        train, held_out = entry.build()
    except (ImportError, OSError) as exc:
        raise UserError(
            f"The {sample} sample cannot be built here ({exc}); run `make run`."
        ) from None
    store = Store(settings.data_dir)
    staging = store.tmp_dir()
    try:
        path = staging / f"{sample}.jsonl"
        write_rows(train, path)
        eval_path = None
        if held_out:
            eval_path = staging / f"{sample}-eval.jsonl"
            write_rows(held_out, eval_path)
        info = upload_dataset(settings, path, entry.label, {}, eval_path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    info["warnings"] = [w for w in info["warnings"] if "uploaded before" not in w]
    return info
