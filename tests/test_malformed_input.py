"""Bad input: each problem names the file, the line or record, the field, and what was expected."""

import json
import os
import time
import tracemalloc
from pathlib import Path
from typing import Any

import pytest

from engine.data.errors import DataError, RecordProblem
from engine.data.formats import load_file
from engine.data.readers import ReadLimits, read_records


def jsonl(path: Path, records: list[Any]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def only(problems: list[RecordProblem]) -> RecordProblem:
    assert len(problems) == 1, problems
    return problems[0]


GOOD = {"instruction": "你好", "output": "您好"}


def test_truncated_json_array_keeps_records_before_the_break(tmp_path: Path) -> None:
    text = json.dumps([GOOD, GOOD, GOOD], ensure_ascii=False, indent=2)
    path = tmp_path / "cut.json"
    path.write_text(text[: len(text) * 3 // 4], encoding="utf-8")  # broken inside the third record
    result = load_file(path)
    assert len(result.samples) == 2
    p = only(result.problems)
    assert p.kind == "bad_json" and p.record == 3 and p.line is not None
    assert "truncated" in p.problem and f"line {p.line}, column" in p.problem
    assert str(p).startswith(f"{path}, line {p.line}:")


def test_json_file_cut_after_a_record(tmp_path: Path) -> None:
    path = tmp_path / "cut.json"
    path.write_text('[\n{"instruction": "a", "output": "b"},\n', encoding="utf-8")
    result = load_file(path)
    assert len(result.samples) == 1
    p = only(result.problems)
    assert p.kind == "bad_json" and "missing ']'" in p.problem and "line 3" in p.problem


def test_malformed_jsonl_lines_are_problems_with_line_numbers(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(
        json.dumps(GOOD, ensure_ascii=False)
        + "\n\n"
        + '{"instruction": "x", "output": \n'
        + "[1, 2]\n"
        + json.dumps(GOOD, ensure_ascii=False)
        + "\n",
        encoding="utf-8",
    )
    result = load_file(path)
    assert [n for n, _ in result.samples] == [1, 4]
    bad_json, not_object = result.problems
    assert (bad_json.kind, bad_json.line, bad_json.record) == ("bad_json", 3, 2)
    assert "invalid JSON at column" in bad_json.problem
    assert (not_object.kind, not_object.line) == ("wrong_type", 4)
    assert not_object.problem == "expected an object (one record), got a list"


def test_wrong_types_name_the_field_path(tmp_path: Path) -> None:
    record = {"conversations": [{"from": "human", "value": "几点了？"}, {"from": "gpt", "value": 3}]}
    p = only(load_file(jsonl(tmp_path / "w.jsonl", [record])).problems)
    assert (p.kind, p.field, p.line) == ("wrong_type", "conversations[1].value", 1)
    assert p.problem == "expected a string, got a number"
    assert "line 1, field 'conversations[1].value': expected a string, got a number" in str(p)

    record = {"instruction": "问", "output": "答", "history": "not a list"}
    p = only(load_file(jsonl(tmp_path / "h.jsonl", [record])).problems)
    assert (p.field, p.problem) == ("history", "expected a list, got a string")

    record = {"messages": [{"role": "robot", "content": "嗨"}]}
    p = only(load_file(jsonl(tmp_path / "r.jsonl", [record])).problems)
    assert p.field == "messages[0].role" and "unknown role 'robot'" in p.problem


def test_missing_fields(tmp_path: Path) -> None:
    result = load_file(jsonl(tmp_path / "m.jsonl", [GOOD, {"instruction": "只有问题"}]))
    p = only(result.problems)
    assert (p.kind, p.field, p.record, p.line) == ("missing_field", "output", 2, 2)
    assert p.problem == "missing field 'output'"

    record = {"conversations": [{"from": "human"}, {"from": "gpt", "value": "答"}]}
    p = only(load_file(jsonl(tmp_path / "v.jsonl", [record])).problems)
    assert (p.kind, p.field) == ("missing_field", "conversations[0].value")


def test_empty_conversations_and_missing_turns(tmp_path: Path) -> None:
    records = [
        {"conversations": []},
        {"conversations": [{"from": "human", "value": "只有问题"}]},
        {"conversations": [{"from": "gpt", "value": "只有回答"}]},
        {"instruction": "   ", "output": "答"},
    ]
    problems = load_file(jsonl(tmp_path / "e.jsonl", records), fmt="sharegpt").problems
    kinds = [(p.record, p.kind, p.problem) for p in problems]
    assert kinds[:3] == [
        (1, "empty_conversation", "empty conversation"),
        (2, "no_assistant", "conversation has no assistant turn"),
        (3, "no_user", "conversation has no user turn"),
    ]
    p = only(load_file(jsonl(tmp_path / "blank.jsonl", [records[3]])).problems)
    assert (p.kind, p.field) == ("empty_value", "instruction")


def test_mixed_formats_name_the_odd_records(tmp_path: Path) -> None:
    sharegpt = {"conversations": [{"from": "human", "value": "问"}, {"from": "gpt", "value": "答"}]}
    path = jsonl(tmp_path / "mixed.jsonl", [GOOD, sharegpt, GOOD, GOOD, sharegpt])
    result = load_file(path)
    assert result.format == "alpaca"
    assert [n for n, _ in result.samples] == [1, 3, 4]
    assert [(p.record, p.line, p.kind) for p in result.problems] == [(2, 2, "mixed_format"), (5, 5, "mixed_format")]
    assert (
        "looks like sharegpt" in result.problems[0].problem
        and "records that differ: 2, 5" in result.problems[0].problem
    )

    # named explicitly: every record is checked against that format
    result = load_file(path, fmt="alpaca")
    assert [(p.record, p.kind, p.field) for p in result.problems] == [
        (2, "missing_field", "instruction"),
        (5, "missing_field", "instruction"),
    ]


def test_records_of_no_known_shape(tmp_path: Path) -> None:
    result = load_file(jsonl(tmp_path / "u.jsonl", [{"q": "问", "a": "答"}]))
    p = only(result.problems)
    assert p.kind == "unknown_format" and "(a, q)" in p.problem
    assert result.format == "unknown"


def test_latin1_file_is_refused_with_offset_and_line(tmp_path: Path) -> None:
    path = tmp_path / "latin1.jsonl"
    text = json.dumps({"instruction": "hello", "output": "ok"}) + "\n" + '{"instruction": "café", "output": "x"}\n'
    path.write_bytes(text.encode("latin-1"))
    with pytest.raises(DataError) as caught:
        load_file(path)
    p = only(caught.value.problems)
    offset = text.encode("latin-1").index(b"\xe9")
    assert (p.kind, p.line, p.file) == ("encoding", 2, str(path))
    assert f"at byte {offset} (line 2)" in p.problem and "--encoding" in p.problem and "GB18030" in p.problem
    assert str(path) in str(caught.value)
    # and with the encoding named, it reads
    result = load_file(path, encoding="latin-1")
    assert result.samples[1][1].messages[0].content == "café"


def test_random_bytes_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "noise.json"
    path.write_bytes(bytes([0x5B, 0x0A, 0x80, 0xFF, 0xFE, 0x81, 0x0A, 0xC3, 0x28]) * 10)
    with pytest.raises(DataError) as caught:
        load_file(path)
    assert caught.value.problems[0].kind == "encoding"


def test_forced_wrong_encoding_reports_where_it_broke(tmp_path: Path) -> None:
    path = tmp_path / "gb.jsonl"
    lines = [json.dumps({"instruction": "hi", "output": "ok"})] * 3 + [json.dumps(GOOD, ensure_ascii=False)]
    path.write_bytes("\n".join(lines).encode("gb18030"))
    with pytest.raises(DataError) as caught:
        load_file(path, encoding="utf-8")
    p = only(caught.value.problems)
    assert p.kind == "encoding" and p.line == 4 and "not valid utf-8" in p.problem
    with pytest.raises(DataError, match="unknown encoding"):
        load_file(path, encoding="no-such-codec")


def test_sparse_10gb_file_is_refused_without_reading(tmp_path: Path) -> None:
    path = tmp_path / "huge.jsonl"
    with path.open("wb") as f:
        f.truncate(10 * 1024**3)  # sparse: costs no disk
    started = time.perf_counter()
    with pytest.raises(DataError) as caught:
        load_file(path)
    assert time.perf_counter() - started < 1
    p = only(caught.value.problems)
    assert p.kind == "too_large" and "10.0 GiB" in p.problem and str(path) in str(caught.value)


@pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="needs /dev/zero")
def test_bytes_are_counted_while_reading() -> None:
    # stat says 0 bytes for a device; counting while reading still stops it
    limits = ReadLimits(max_bytes=1 << 20, max_record_bytes=1 << 10)
    with pytest.raises(DataError) as caught:
        list(read_records(Path("/dev/zero"), kind="jsonl", encoding="utf-8", limits=limits))
    assert caught.value.problems[0].kind == "too_large"


def test_over_long_jsonl_line_is_skipped_without_holding_it(tmp_path: Path) -> None:
    path = tmp_path / "long.jsonl"
    long_record = {"instruction": "长" * (8 << 20), "output": "答"}  # ~24 MiB of UTF-8
    with path.open("w", encoding="utf-8") as f:
        f.write(json.dumps(GOOD, ensure_ascii=False) + "\n")
        f.write(json.dumps(long_record, ensure_ascii=False) + "\n")
        f.write(json.dumps(GOOD, ensure_ascii=False) + "\n")
    del long_record
    limits = ReadLimits(max_record_bytes=1 << 20)
    tracemalloc.start()
    try:
        items = list(read_records(path, encoding="utf-8", limits=limits))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20  # the 24 MiB line was never held whole
    problem = items[1]
    assert isinstance(problem, RecordProblem)
    assert (problem.kind, problem.line, problem.record) == ("too_large", 2, 2)
    assert "longer than 1.0 MiB" in problem.problem
    result = load_file(path, limits=limits)
    assert [n for n, _ in result.samples] == [1, 3]


def test_over_long_json_record_and_csv_line(tmp_path: Path) -> None:
    limits = ReadLimits(max_record_bytes=1000)
    path = tmp_path / "a.json"
    path.write_text(json.dumps([GOOD, {"instruction": "x" * 2000, "output": "y"}]), encoding="utf-8")
    p = only(load_file(path, limits=limits).problems)
    assert (p.kind, p.record) == ("too_large", 2)

    path = tmp_path / "a.csv"
    path.write_text("instruction,output\n你好,您好\n" + "x" * 2000 + ",y\n再见,拜拜\n", encoding="utf-8")
    result = load_file(path, limits=limits)
    assert [n for n, _ in result.samples] == [1, 3]
    assert [(p.kind, p.line) for p in result.problems] == [("too_large", 3)]


def test_too_many_records(tmp_path: Path) -> None:
    path = jsonl(tmp_path / "many.jsonl", [GOOD] * 5)
    with pytest.raises(DataError, match="more than 3 records"):
        load_file(path, limits=ReadLimits(max_records=3))


def test_csv_row_with_wrong_cell_count(tmp_path: Path) -> None:
    path = tmp_path / "cells.csv"
    path.write_text("instruction,output\n问,答\n只有一格\n", encoding="utf-8")
    result = load_file(path)
    p = only(result.problems)
    assert (p.kind, p.line, p.record) == ("bad_csv", 3, 2)
    assert "expected 2 cells" in p.problem


def test_csv_cell_with_broken_json(tmp_path: Path) -> None:
    path = tmp_path / "broken.csv"
    path.write_text('conversations\n"[{""from"": ""human"""\n', encoding="utf-8")
    p = only(load_file(path).problems)
    assert (p.kind, p.field, p.line) == ("bad_json", "conversations", 2)


def test_file_level_failures(tmp_path: Path) -> None:
    with pytest.raises(DataError) as caught:
        load_file(tmp_path / "missing.jsonl")
    assert caught.value.problems[0].kind == "missing_file"
    with pytest.raises(DataError, match="unknown format 'yaml'"):
        load_file(jsonl(tmp_path / "x.jsonl", [GOOD]), fmt="yaml")
    empty = tmp_path / "empty.json"
    empty.write_text("  \n", encoding="utf-8")
    assert only(load_file(empty).problems).kind == "empty_file"


DEEP = "[" * 100_000 + "]" * 100_000  # Python's JSON reader gives up past about a thousand levels


def test_a_jsonl_line_nested_100000_deep_is_a_record_problem(tmp_path: Path) -> None:
    good = json.dumps(GOOD, ensure_ascii=False)
    path = tmp_path / "deep.jsonl"
    path.write_text(f"{good}\n{DEEP}\n{good}\n", encoding="utf-8")
    result = load_file(path)
    assert len(result.samples) == 2
    p = only(result.problems)
    assert (p.kind, p.record, p.line) == ("too_deep", 2, 2) and "nested deeper than 64 levels" in p.problem
    assert str(p).startswith(f"{path}, line 2:")


def test_nesting_inside_a_field_names_the_field(tmp_path: Path) -> None:
    shallow_enough_to_parse = {**GOOD, "tools": json.loads("[" * 500 + "]" * 500)}
    result = load_file(jsonl(tmp_path / "deep_field.jsonl", [GOOD, shallow_enough_to_parse]))
    p = only(result.problems)
    assert (p.kind, p.line, p.field) == ("too_deep", 2, "tools")
    assert "field 'tools'" in str(p)


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("array.json", f"[{json.dumps(GOOD)}, {DEEP}, {json.dumps(GOOD)}]"),
        ("object.json", '{"data": ' + DEEP + "}"),
        ("tools.csv", f'instruction,output,tools\nhi,hello,"{DEEP}"\n'),
        ("call.jsonl", json.dumps({"messages": [{"role": "function", "content": DEEP}]}) + "\n"),
    ],
)
def test_deep_nesting_anywhere_in_a_file_is_a_problem_not_a_crash(tmp_path: Path, name: str, text: str) -> None:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    result = load_file(path)  # never a RecursionError
    assert result.problems and all(p.file == str(path) for p in result.problems)


@pytest.mark.parametrize("skip_invalid", [False, True])
def test_tuneloop_refuses_deep_nesting_with_exit_2(tmp_path: Path, skip_invalid: bool) -> None:
    from typer.testing import CliRunner

    from bot.cli import app

    path = tmp_path / "deep.jsonl"
    path.write_text(DEEP + "\n", encoding="utf-8")
    options = ["--skip-invalid", "--rejects", str(tmp_path / "rejects.jsonl")] if skip_invalid else []
    result = CliRunner().invoke(app, ["data", "import", str(path), "--project", "shop", *options])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and not isinstance(result.exception, RecursionError)
    assert f"{path.name}, line 1: JSON nested deeper than 64 levels" in " ".join(result.output.split())
