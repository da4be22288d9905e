"""Dataset files: formats detected and normalized to chat turns; bad files named and not stored."""

from __future__ import annotations

import json

import pytest

from finetune.data import DataError, parse_file
from webui import actions

MESSAGES = {
    "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi?"},
        {"role": "assistant", "content": "Hello."},
    ]
}
ALPACA = {"instruction": "Add", "input": "2 and 3", "output": "5"}
PROMPT = {"prompt": "Capital of France?", "completion": "Paris"}


def write(tmp_path, name: str, text: str | bytes):
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


def jsonl(*rows) -> str:
    return "\n".join(json.dumps(r) for r in rows) + "\n"


@pytest.mark.parametrize(
    ("name", "text", "fmt", "first"),
    [
        ("a.jsonl", jsonl(MESSAGES, MESSAGES), "messages", MESSAGES["messages"]),
        (
            "a.json",
            json.dumps([ALPACA]),
            "alpaca",
            [{"role": "user", "content": "Add\n\n2 and 3"}, {"role": "assistant", "content": "5"}],
        ),
        (
            "a.json",
            json.dumps({"data": [PROMPT]}),
            "prompt_completion",
            [
                {"role": "user", "content": "Capital of France?"},
                {"role": "assistant", "content": "Paris"},
            ],
        ),
        (
            "a.csv",
            "instruction,output\nSay hi,hi\n",
            "alpaca",
            [{"role": "user", "content": "Say hi"}, {"role": "assistant", "content": "hi"}],
        ),
        (
            "a.tsv",
            "prompt\tcompletion\nHi, you?\tFine.\n",
            "prompt_completion",
            [{"role": "user", "content": "Hi, you?"}, {"role": "assistant", "content": "Fine."}],
        ),
        (
            "a.csv",
            'prompt,completion\n"a, b",c\n',
            "prompt_completion",
            [{"role": "user", "content": "a, b"}, {"role": "assistant", "content": "c"}],
        ),
    ],
)
def test_formats_are_detected_and_normalized(tmp_path, name, text, fmt, first):
    path = write(tmp_path, name, text)
    parsed = parse_file(path, path.suffix)
    assert parsed.format == fmt
    assert parsed.rows[0]["messages"] == first


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("a.jsonl", "", "The file is empty"),
        ("a.jsonl", '{"prompt": "a", "completion": "b"}\n{oops\n', "Line 2 is not valid JSON"),
        ("a.json", "[1, 2", "not valid JSON"),
        ("a.json", "[]", "no rows"),
        ("a.jsonl", jsonl({"question": "a", "answer": "b"}), "None of the known columns"),
        ("a.jsonl", jsonl(PROMPT, {"prompt": "x", "completion": " "}), "Row 2: the answer"),
        ("a.jsonl", jsonl(PROMPT, {"prompt": "x"}), "Row 2: the answer ('completion') is empty"),
        ("a.csv", "instruction,output\nq,\n", "Row 1: the answer ('output') is empty"),
        (
            "a.jsonl",
            jsonl({"messages": [{"role": "user", "content": "hi"}]}),
            "Row 1: the last turn must be the assistant's answer",
        ),
        (
            "a.jsonl",
            jsonl({"messages": [{"role": "bot", "content": "hi"}]}),
            "Row 1: turn 1 has unknown role 'bot'",
        ),
        ("a.jsonl", jsonl([1, 2]), "Row 1 is not an object"),
        ("a.txt", "hello", "not supported"),
        ("a.csv", "prompt,completion\nq,a\nq,a,extra\n", "Row 2 has more cells than the header"),
    ],
)
def test_bad_files_say_what_and_where(tmp_path, name, text, message):
    path = write(tmp_path, name, text)
    with pytest.raises(DataError) as info:
        parse_file(path, path.suffix)
    assert message in str(info.value)


def test_common_system_prompt():
    from finetune.data import common_system_prompt

    chat = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    assert common_system_prompt([MESSAGES, MESSAGES]) == "Be brief."
    assert common_system_prompt([MESSAGES, chat]) == "", "rows differ"
    assert common_system_prompt([chat]) == ""


def test_many_bad_rows_are_counted(tmp_path):
    rows = [PROMPT] + [{"prompt": f"p{i}", "completion": ""} for i in range(8)]
    path = write(tmp_path, "a.jsonl", jsonl(*rows))
    with pytest.raises(DataError, match=r"8 of 9 rows cannot be used.*Row 2:.*\(and 3 more\)"):
        parse_file(path, path.suffix)


def test_encodings(tmp_path):
    text = 'prompt,completion\n"Café?",oui\n'
    utf16 = write(tmp_path, "a.csv", text.encode("utf-16"))
    assert parse_file(utf16, ".csv").rows[0]["messages"][0]["content"] == "Café?"
    bom = write(tmp_path, "b.csv", b"\xef\xbb\xbf" + text.encode())
    assert parse_file(bom, ".csv").columns == ["prompt", "completion"]
    latin = write(tmp_path, "c.csv", text.encode("latin-1"))
    parsed = parse_file(latin, ".csv")
    assert parsed.rows[0]["messages"][0]["content"] == "Café?"
    assert "Latin-1" in parsed.warnings[0]


def _files_under(folder):
    return sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("app.db"))


def test_upload_stores_original_and_rows(settings, store, tmp_path):
    path = write(tmp_path, "my data.jsonl", jsonl(PROMPT, PROMPT))
    info = actions.upload_dataset(settings, path, "")
    assert info["name"] == "my data" and info["rows"] == 2 and info["format"] == "prompt_completion"
    folder = store.dataset_dir(info["id"])
    assert (folder / "original.jsonl").read_bytes() == path.read_bytes()
    assert len((folder / "rows.jsonl").read_text().splitlines()) == 2
    assert actions.preview_dataset(settings, info["id"], 1)[0]["messages"][1]["content"] == "Paris"


def test_same_content_twice_reuses_the_dataset(settings, store, tmp_path):
    first = actions.upload_dataset(settings, write(tmp_path, "a.jsonl", jsonl(PROMPT)), "a")
    second = actions.upload_dataset(settings, write(tmp_path, "b.jsonl", jsonl(PROMPT)), "b")
    assert second["id"] == first["id"]
    assert "uploaded before" in second["warnings"][-1]
    assert len(store.list_datasets()) == 1


def test_bad_upload_changes_nothing(settings, store, tmp_path):
    before = _files_under(settings.data_dir)
    path = write(tmp_path, "bad.jsonl", jsonl(PROMPT, {"prompt": "x", "completion": ""}))
    with pytest.raises(DataError, match="Row 2"):
        actions.upload_dataset(settings, path, "bad")
    assert store.list_datasets() == []
    assert _files_under(settings.data_dir) == before
    assert list((settings.data_dir / "tmp").iterdir()) == []


def test_upload_size_limit(settings, tmp_path):
    from dataclasses import replace

    small = replace(settings, max_upload_mb=0)
    with pytest.raises(ValueError, match="the limit is 0 MB"):
        actions.upload_dataset(small, write(tmp_path, "a.jsonl", jsonl(PROMPT)), "a")


def test_samples_are_stored_once(settings, store):
    first = actions.add_sample(settings, "arithmetic")
    assert first["rows"] == 2000 and first["warnings"] == []
    row = actions.preview_dataset(settings, first["id"], 1)[0]["messages"]
    question, answer = row[1]["content"], row[2]["content"]
    a, op, b = question.removeprefix("What is ").rstrip("?").split()
    assert int(answer) == {"+": int(a) + int(b), "-": int(a) - int(b), "x": int(a) * int(b)}[op]
    assert actions.add_sample(settings, "arithmetic")["id"] == first["id"]
    chat = actions.add_sample(settings, "chatterbot")
    assert chat["rows"] > 1000
    with pytest.raises(ValueError, match="Unknown sample"):
        actions.add_sample(settings, "nope")
