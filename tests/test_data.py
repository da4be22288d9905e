"""Datasets: every file shape and schema is detected, mapped, normalized and stored (or refused)."""

from __future__ import annotations

import gzip
import io
import json
import zipfile
from dataclasses import replace

import pytest

import service
from finetune.data import SCHEMAS, BadRows, apply_policy, common_system_prompt, parse
from finetune.preview import load_tokenizer, render
from finetune.sources import DataError, Limits, Records, read_source
from storage.store import InUse

MESSAGES = {
    "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi?"},
        {"role": "assistant", "content": "Hello."},
    ]
}
ALPACA = {"instruction": "Add", "input": "2 and 3", "output": "5"}
PROMPT = {"prompt": "Capital of France?", "completion": "Paris"}
CHAT = [
    {"role": "user", "content": "Capital of France?"},
    {"role": "assistant", "content": "Paris"},
]


def write(tmp_path, name: str, data: str | bytes):
    path = tmp_path / name
    path.write_bytes(data if isinstance(data, bytes) else data.encode())
    return path


def jsonl(*rows) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


def parquet(rows: list[dict]) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), out)
    return out.getvalue()


def read(path, text_mode="blocks"):
    return read_source(path, path.name, Limits(), text_mode)


# Each schema: a source row, the schema id detected, and the chat turns (or text) it becomes.
SCHEMA_CASES = {
    "messages": (MESSAGES, "messages", MESSAGES["messages"]),
    "sharegpt": (
        {"conversations": [{"from": "human", "value": "Hi?"}, {"from": "gpt", "value": "Yo."}]},
        "sharegpt",
        [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Yo."}],
    ),
    "alpaca": (
        {**ALPACA, "system": "Be exact."},
        "alpaca",
        [
            {"role": "system", "content": "Be exact."},
            {"role": "user", "content": "Add\n\n2 and 3"},
            {"role": "assistant", "content": "5"},
        ],
    ),
    "prompt_completion": (PROMPT, "prompt_completion", CHAT),
    "seq2seq": (
        {"dialogue": "A: hi\nB: hello", "summary": "They greet."},
        "seq2seq",
        [
            {"role": "user", "content": "A: hi\nB: hello"},
            {"role": "assistant", "content": "They greet."},
        ],
    ),
    "classification": (
        {"text": "I love it", "label": "pos"},
        "classification",
        [
            {"role": "system", "content": "Classify the text. Reply with one label: pos."},
            {"role": "user", "content": "I love it"},
            {"role": "assistant", "content": "pos"},
        ],
    ),
    "text": ({"text": "Once upon a time."}, "text", "Once upon a time."),
}


def test_every_schema_has_a_case():
    assert set(SCHEMA_CASES) == set(SCHEMAS)


@pytest.mark.parametrize("case", list(SCHEMA_CASES))
@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".parquet"])
def test_schema_round_trip(tmp_path, tiny_model, case, suffix):
    """File -> detected schema -> normalized row -> the chat template's text, for each schema."""
    record, schema_id, expected = SCHEMA_CASES[case]
    data = {
        ".jsonl": lambda: jsonl(record),
        ".json": lambda: json.dumps([record]),
        ".parquet": lambda: parquet([record]),
    }[suffix]()
    parsed = parse(read(write(tmp_path, "f" + suffix, data)))
    assert (parsed.format, parsed.problems) == (schema_id, [])
    row = parsed.rows[0]
    assert row == ({"text": expected} if schema_id == "text" else {"messages": expected})

    tokenizer = load_tokenizer(str(tiny_model))
    (example,) = render(tokenizer, row, max_length=512)
    text = "".join(s["text"] for s in example["segments"])
    loss = "".join(s["text"] for s in example["segments"] if s["kind"] == "loss")
    if schema_id == "text":
        assert text == expected + "<|im_end|>" and loss == text
    else:
        assert text == "".join(
            f"<|im_start|>{t['role']}\n{t['content']}<|im_end|>\n" for t in expected
        )
        assert loss == expected[-1]["content"] + "<|im_end|>\n"


@pytest.mark.parametrize(
    ("name", "data", "fmt"),
    [
        ("a.csv", "instruction,output\nSay hi,hi\n", "alpaca"),
        ("a.tsv", "prompt\tcompletion\nHi, you?\tFine.\n", "prompt_completion"),
        ("a.csv", 'question,answer\n"a, b",c\n', "prompt_completion"),
        ("a.csv", "article,highlights\nLong text.,Short.\n", "seq2seq"),
        ("a.csv", "sentence,label\nGreat film,1\n", "classification"),
        ("a.json", json.dumps({"data": [PROMPT]}), "prompt_completion"),
        ("a.json", jsonl(PROMPT, PROMPT), "prompt_completion"),  # JSON lines in a .json
        (
            "a.csv",
            'messages\n"[{""role"": ""user"", ""content"": ""q""}, '
            '{""role"": ""assistant"", ""content"": ""a""}]"\n',
            "messages",
        ),
    ],
)
def test_delimited_and_json_variants(tmp_path, name, data, fmt):
    assert parse(read(write(tmp_path, name, data))).format == fmt


def test_messages_vs_sharegpt_is_told_by_the_turns(tmp_path):
    sharegpt_in_messages = {
        "messages": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]
    }
    assert parse([Records("a", [sharegpt_in_messages])]).format == "sharegpt"
    chat_in_conversations = {"conversations": MESSAGES["messages"]}
    assert parse([Records("a", [chat_in_conversations])]).format == "messages"


def test_text_files_blocks_or_whole_file(tmp_path):
    path = write(tmp_path, "notes.txt", "First block\nstill first.\n\n  \nSecond block.\n")
    assert [r["text"] for r in parse(read(path)).rows] == [
        "First block\nstill first.",
        "Second block.",
    ]
    whole = parse(read(path, text_mode="file"))
    assert len(whole.rows) == 1 and whole.format == "text"


def test_multi_turn_and_ordering_problems():
    multi = {
        "messages": [
            {"role": "user", "content": "a"},
            {"role": "assistant", "content": "b"},
            {"role": "user", "content": "c"},
            {"role": "assistant", "content": "d"},
        ]
    }
    two_users = {"messages": [{"role": "user", "content": "a"}] * 2 + [CHAT[1]]}
    late_system = {"messages": [*CHAT, {"role": "system", "content": "s"}, CHAT[1]]}
    parsed = parse([Records("f", [multi, two_users, late_system])])
    assert parsed.rows == [multi]
    assert [(p.row, p.column) for p in parsed.problems] == [(2, "messages"), (3, "messages")]
    assert "turn 2 is user where assistant should come" in parsed.problems[0].problem
    assert "a system turn is only allowed first" in parsed.problems[1].problem


def test_mapping_overrides_detection():
    records = [{"q": "Capital of France?", "a": "Paris", "prompt": "ignored", "completion": "x"}]
    parsed = parse([Records("f", records)], "prompt_completion", {"prompt": "q", "completion": "a"})
    assert parsed.rows[0]["messages"] == CHAT
    assert parsed.mapping == {"prompt": "q", "completion": "a"}
    with pytest.raises(DataError, match="needs a column for 'target'"):
        parse([Records("f", records)], "seq2seq", {"input": "q"})
    with pytest.raises(DataError, match=r"mapping\.prompt: the file has no column .nope."):
        parse([Records("f", records)], "prompt_completion", {"prompt": "nope"})
    with pytest.raises(DataError, match="No known schema fits the columns \\(q, a\\)"):
        parse([Records("f", [{"q": "x", "a": "y"}])])


def test_problems_name_row_and_column_and_duplicates_are_caught():
    records = [PROMPT, {"prompt": "x", "completion": " "}, {"prompt": "y"}, PROMPT]
    parsed = parse([Records("f", records)])
    assert [(p.row, p.column, p.problem) for p in parsed.problems] == [
        (2, "completion", "is empty"),
        (3, "completion", "is missing"),
        (4, "", "exact duplicate of row 1"),
    ]
    with pytest.raises(
        BadRows, match=r"3 of 4 rows cannot be used: Row 2 \(completion\): is empty"
    ):
        apply_policy(parsed, "refuse")


def test_classification_labels():
    records = [{"text": f"t{i}", "label": lab} for i, lab in enumerate(["a", "b", 3, "c"])]
    parsed = parse([Records("f", records)], labels=["a", "b", "3"])
    assert parsed.labels == ["3", "a", "b"]
    assert [(p.row, p.problem) for p in parsed.problems] == [
        (4, "label 'c' is not one of: 3, a, b")
    ]
    too_many = [{"text": f"t{i}", "label": f"l{i}"} for i in range(101)]
    with pytest.raises(DataError, match="101 different values"):
        parse([Records("f", too_many)])


def test_encodings(tmp_path):
    text = 'prompt,completion\n"Café?",oui\n'
    utf16 = parse(read(write(tmp_path, "a.csv", text.encode("utf-16"))))
    assert utf16.rows[0]["messages"][0]["content"] == "Café?"
    bom = parse(read(write(tmp_path, "b.csv", b"\xef\xbb\xbf" + text.encode())))
    assert bom.columns == ["prompt", "completion"]
    latin = parse(read(write(tmp_path, "c.csv", text.encode("latin-1"))))
    assert latin.rows[0]["messages"][0]["content"] == "Café?"
    assert "read as Windows-1252" in latin.warnings[0]


def test_windows_1252_text_and_odd_line_breaks(tmp_path):
    """Excel's quotes and ellipsis (0x80-0x9F), and U+2028 inside a row, are text, not breaks."""
    rows = [{"prompt": f"It’s “fine”… {i}", "completion": "ok"} for i in range(80)]
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    cp1252 = parse(read(write(tmp_path, "a.jsonl", text.encode("cp1252"))))
    assert cp1252.rows[0]["messages"][0]["content"] == "It’s “fine”… 0"
    assert "read as Windows-1252" in cp1252.warnings[0]
    line_sep = {"prompt": "one\u2028two\u0085three", "completion": "ok"}
    text = json.dumps(line_sep, ensure_ascii=False) + "\n" + json.dumps(PROMPT) + "\n"
    for name in ("b.jsonl", "b.json"):
        assert len(parse(read(write(tmp_path, name, text.encode()))).rows) == 2


def test_hostile_shapes_get_messages(tmp_path):
    with pytest.raises(DataError, match="nests lists or objects too deeply"):
        read(write(tmp_path, "deep.json", "[" * 200_000))
    with pytest.raises(DataError, match="line 1 nests lists or objects too deeply"):
        read(write(tmp_path, "deep.jsonl", "[" * 200_000))
    # 400 rows of one 64 KB string each, stored once by dictionary encoding: a tiny file.
    path = write(tmp_path, "big.parquet", parquet([{"text": "x" * 65536}] * 400))
    assert path.stat().st_size < 100_000
    with pytest.raises(DataError, match=r"unpacks to more than 1\.0 MB"):
        read_source(path, path.name, Limits(max_bytes=2**20))
    with pytest.raises(DataError, match=r"big\.parquet row 1 is 64 KB long"):
        read_source(path, path.name, Limits(max_row_bytes=1000))


def test_archives_are_read_member_by_member(tmp_path):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("part1.jsonl", jsonl(PROMPT))
        zf.writestr("sub/part2.csv", "prompt,completion\nq,a\n")
        zf.writestr("README.md", "ignored")
    sources = read(write(tmp_path, "data.zip", buffer.getvalue()))
    assert [s.label for s in sources] == ["data.zip:part1.jsonl", "data.zip:sub/part2.csv"]
    assert len(parse(sources).rows) == 2
    gz = read(write(tmp_path, "rows.jsonl.gz", gzip.compress(jsonl(PROMPT).encode())))
    assert parse(gz).rows[0]["messages"] == CHAT


def test_common_system_prompt():
    assert common_system_prompt([MESSAGES, MESSAGES]) == "Be brief."
    assert common_system_prompt([MESSAGES, {"messages": CHAT}]) == "", "rows differ"
    assert common_system_prompt([{"text": "x"}]) == ""


# ---- the upload action: storage ----


def _files_under(folder):
    return sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("app.db"))


def test_upload_stores_original_rows_mapping_and_stats(settings, store, tmp_path):
    path = write(tmp_path, "my data.csv", "q,a\nCapital of France?,Paris\nq2,a2\n")
    info = service.upload_dataset(
        settings,
        [str(path)],
        "",
        {"format": "prompt_completion", "mapping": {"prompt": "q", "completion": "a"}},
    )
    assert (info["name"], info["rows"], info["format"]) == ("my data", 2, "prompt_completion")
    assert info["mapping"] == {"prompt": "q", "completion": "a"} and info["bad_rows"] == []
    assert info["stats"]["turns_mean"] == 2.0
    folder = store.dataset_dir(info["id"])
    assert (folder / "original-1.csv").read_bytes() == path.read_bytes()
    assert json.loads((folder / "rows.jsonl").read_text().splitlines()[0])["messages"] == CHAT
    again = service.list_datasets(settings)[0]
    assert again["mapping"] == info["mapping"] and again["sources"] == ["my data.csv"]


def test_several_files_and_an_eval_file(settings, store, tmp_path):
    a = write(tmp_path, "a.jsonl", jsonl(PROMPT))
    b = write(tmp_path, "b.csv", "prompt,completion\nq,a\n")
    held = write(tmp_path, "held.jsonl", jsonl({"prompt": "e", "completion": "f"}))
    info = service.upload_dataset(settings, [a, b], "two", None, [held])
    assert (info["rows"], info["eval_rows"]) == (2, 1)
    folder = store.dataset_dir(info["id"])
    assert sorted(p.name for p in folder.iterdir()) == [
        "eval-3.jsonl",
        "eval.jsonl",
        "original-1.jsonl",
        "original-2.csv",
        "problems.json",
        "rows.jsonl",
    ]


def test_drop_keeps_good_rows_and_records_the_bad(settings, store, tmp_path):
    path = write(tmp_path, "a.jsonl", jsonl(PROMPT, {"prompt": "x"}, PROMPT))
    info = service.upload_dataset(settings, path, "", {"on_bad_rows": "drop"})
    assert (info["rows"], info["dropped_rows"]) == (1, 2)
    assert [(p["row"], p["column"]) for p in info["bad_rows"]] == [(2, "completion"), (3, "")]
    preview = service.preview_dataset(settings, info["id"])
    assert preview["bad_rows"] == info["bad_rows"] and preview["rows"][0]["messages"] == CHAT


def test_rows_too_long_for_the_model(settings, tiny_model, tmp_path):
    long = {"prompt": "what is the answer " * 40, "completion": "fine"}
    path = write(tmp_path, "a.jsonl", jsonl(PROMPT, long))
    options = {"base_model": str(tiny_model), "max_length": 64}
    with pytest.raises(BadRows, match=r"Row 2: is \d+ tokens of .*; max length 64"):
        service.upload_dataset(settings, path, "", options)
    info = service.upload_dataset(settings, path, "", {**options, "on_bad_rows": "drop"})
    assert info["rows"] == 1 and info["bad_rows"][0]["row"] == 2


def test_same_content_twice_offers_the_existing_dataset(settings, store, tmp_path):
    first = service.upload_dataset(settings, write(tmp_path, "a.jsonl", jsonl(PROMPT)), "a")
    second = service.upload_dataset(settings, write(tmp_path, "b.jsonl", jsonl(PROMPT)), "b")
    assert second["id"] == first["id"] and second["existing"] and not first["existing"]
    assert "uploaded before as 'a'" in second["warnings"][-1]
    assert len(store.list_datasets()) == 1


def test_refused_upload_changes_nothing(settings, store, tmp_path):
    before = _files_under(settings.data_dir)
    path = write(tmp_path, "bad.jsonl", jsonl(PROMPT, {"prompt": "x", "completion": ""}))
    with pytest.raises(BadRows, match="Row 2"):
        service.upload_dataset(settings, path, "bad")
    assert store.list_datasets() == []
    assert _files_under(settings.data_dir) == before
    assert list((settings.data_dir / "tmp").iterdir()) == []


def test_upload_size_limit(settings, tmp_path):
    small = replace(settings, max_upload_mb=0)
    with pytest.raises(DataError, match="the limit is 0 B"):
        service.upload_dataset(small, write(tmp_path, "a.jsonl", jsonl(PROMPT)), "a")


def test_delete_unless_a_job_may_still_read_it(settings, store, tmp_path):
    info = service.upload_dataset(settings, write(tmp_path, "a.jsonl", jsonl(PROMPT)), "a")
    used = service.upload_dataset(settings, write(tmp_path, "b.jsonl", jsonl(ALPACA)), "b")
    job = store.add_job("j", {"dataset_id": used["id"]}, used["id"])
    for state in ("queued", "running", "interrupted"):
        set_state(store, job.id, state)
        with pytest.raises(InUse, match=f"\\({job.id}\\)"):
            service.delete_dataset(settings, used["id"])
    assert store.dataset_dir(used["id"]).exists()
    assert service.delete_dataset(settings, info["id"]) == {"deleted": info["id"]}
    assert not store.dataset_dir(info["id"]).exists()
    with pytest.raises(LookupError):
        service.delete_dataset(settings, info["id"])

    set_state(store, job.id, "succeeded")  # a finished job keeps its record, not the data
    service.delete_dataset(settings, used["id"])
    assert service.list_datasets(settings) == []
    assert store.get_job(job.id).dataset_id == used["id"]
    again = service.upload_dataset(settings, write(tmp_path, "b.jsonl", jsonl(ALPACA)), "b")
    assert again["id"] != used["id"] and not again["existing"], "a deleted dataset is not reused"
    assert list((settings.data_dir / "tmp").iterdir()) == []


def set_state(store, job_id, state):
    """A job put in a state directly: which transition led there is not what is tested."""
    import sqlite3

    with sqlite3.connect(store.db_path) as db:
        db.execute("UPDATE jobs SET state = ? WHERE id = ?", (state, job_id))


@pytest.mark.parametrize(
    ("key", "fmt", "has_eval"),
    [
        ("arithmetic", "messages", True),
        ("chatterbot", "messages", False),
        ("topics", "classification", True),
        ("doc_titles", "seq2seq", True),
    ],
)
def test_samples_are_stored_once(settings, key, fmt, has_eval):
    first = service.add_sample(settings, key)
    assert first["format"] == fmt and first["rows"] > 50 and first["warnings"] == []
    assert bool(first["eval_rows"]) == has_eval and first["dropped_rows"] == 0
    assert service.add_sample(settings, key)["id"] == first["id"]


def test_arithmetic_sample_is_right_and_its_eval_is_unseen(settings, store):
    info = service.add_sample(settings, "arithmetic")
    folder = store.dataset_dir(info["id"])
    questions = {}
    for name in ("rows.jsonl", "eval.jsonl"):
        rows = [json.loads(line)["messages"] for line in (folder / name).read_text().splitlines()]
        for row in rows:
            a, op, b = row[1]["content"].removeprefix("What is ").rstrip("?").split()
            expected = {"+": int(a) + int(b), "-": int(a) - int(b), "x": int(a) * int(b)}[op]
            assert int(row[2]["content"]) == expected
        questions[name] = {row[1]["content"] for row in rows}
    assert len(questions["eval.jsonl"]) == 200
    assert not questions["rows.jsonl"] & questions["eval.jsonl"]


def test_unknown_sample(settings):
    with pytest.raises(ValueError, match="Unknown sample 'nope'"):
        service.add_sample(settings, "nope")


def test_detection_follows_the_majority_of_rows():
    records = [{"prompt": f"p{i}", "completion": "c"} for i in range(5)] + [ALPACA]
    parsed = parse([Records("f", records)])
    assert parsed.format == "prompt_completion" and len(parsed.rows) == 5
    assert [(p.row, p.column) for p in parsed.problems] == [(6, "prompt")]


def test_unclosed_csv_quote_is_named(tmp_path):
    with pytest.raises(DataError, match="opened by line 2 is never closed"):
        read(write(tmp_path, "a.csv", 'prompt,completion\n"a,b\nc,d\n'))


def test_eval_file_problems_say_eval(settings, tmp_path):
    train = write(tmp_path, "a.jsonl", jsonl(PROMPT))
    broken = write(tmp_path, "a2.jsonl", "{nope\n")
    with pytest.raises(DataError, match=r"^Eval file: a2\.jsonl line 1 is not valid JSON"):
        service.upload_dataset(settings, train, "", None, broken)
    other = write(tmp_path, "alpaca.jsonl", jsonl(ALPACA))
    with pytest.raises(DataError, match="Eval file: it needs the training file's columns"):
        service.upload_dataset(settings, train, "", None, other)
    same = write(tmp_path, "same.jsonl", jsonl(PROMPT))
    info = service.upload_dataset(settings, train, "", None, same)
    assert "1 eval rows also appear in the training rows" in info["warnings"][0]
    with pytest.raises(DataError, match="Allowed labels apply to classification data"):
        service.upload_dataset(settings, train, "", {"labels": ["a"]})


def test_dry_run_reports_without_storing(settings, store, tmp_path):
    path = write(tmp_path, "a.jsonl", jsonl(PROMPT, {"prompt": "x"}))
    report = service.upload_dataset(settings, path, "", {"dry_run": True})
    assert report["stored"] is False and report["format"] == "prompt_completion"
    assert (report["rows"], report["bad_row_count"]) == (1, 1)
    assert report["bad_rows"] == [
        {"row": 2, "column": "completion", "problem": "is missing", "source": ""}
    ]
    assert store.list_datasets() == []


def test_options_are_checked_by_name(settings, tmp_path):
    path = write(tmp_path, "a.jsonl", jsonl(PROMPT))
    for options, message in (
        ({"base_model": 5}, "options.base_model: must be text"),
        ({"dry_run": "yes"}, "options.dry_run: must be true or false, got 'yes'"),
        ({"nope": 1}, "options.nope: unknown field"),
    ):
        with pytest.raises(ValueError, match=message):
            service.upload_dataset(settings, path, "", options)


def test_a_model_without_a_tokenizer_is_named(settings, tmp_path):
    folder = settings.models_dir / "no-tokenizer"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text('{"model_type": "llama"}')
    path = write(tmp_path, "a.jsonl", jsonl(PROMPT))
    info = service.upload_dataset(settings, path, "")
    with pytest.raises(ValueError, match="The tokenizer of no-tokenizer cannot be loaded"):
        service.preview_dataset(settings, info["id"], "no-tokenizer")
