"""import → export → import gives the same samples, for every format that can hold them."""

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from engine.data.errors import DataError
from engine.data.export import EXPORT_FORMATS, export_samples
from engine.data.formats import load_file
from engine.data.sample import Sample
from engine.files import write_atomic


def msg(role: str, content: str | None, **extra: Any) -> dict[str, Any]:
    return {"role": role, "content": content, **extra}


CHAT = Sample(
    messages=[
        msg("system", "你是客服助手。"),
        msg("user", "你好"),
        msg("assistant", "您好，请问有什么可以帮您？"),
        msg("user", "退货政策是什么？\n谢谢"),
        msg("assistant", "七天无理由退货。"),
    ],
    tags=["售后", "退货"],
)
SIMPLE = Sample(messages=[msg("user", "一加一等于几？"), msg("assistant", "二。")])
TOOLS = Sample(
    messages=[
        msg("user", "查一下订单123"),
        msg(
            "assistant",
            None,
            tool_calls=[{"id": "call_1", "function": {"name": "order", "arguments": '{"id": "123"}'}}],
        ),
        msg("tool", "已发货", tool_call_id="call_1"),
        msg("assistant", "您的订单已发货。"),
    ],
    tools=[{"type": "function", "function": {"name": "order", "parameters": {"type": "object"}}}],
    tags=["订单"],
)
PREFERENCE = [
    Sample(
        messages=[msg("system", "礼貌一些。"), msg("user", "写一句问候语"), msg("assistant", "您好！")],
        rejected=msg("assistant", "干嘛？"),
        tags=["礼貌"],
    ),
    Sample(
        messages=[
            msg("user", "推荐一本书"),
            msg("assistant", "《红楼梦》。"),
            msg("user", "还有呢？"),
            msg("assistant", "《西游记》。"),
        ],
        rejected=msg("assistant", "没了。"),
    ),
]

GROUPS = {
    "sft": [CHAT, SIMPLE],
    "tools": [TOOLS, SIMPLE],
    "preference": PREFERENCE,
}
CANNOT = {("alpaca", "tools")}  # alpaca has no place for tool calls: see test_alpaca_refuses_tool_calls


def reimport(paths: list[Path], fmt: str, name: str) -> list[Sample]:
    # llamafactory writes [data, dataset_info.json]: read it the way LLaMA-Factory would
    result = load_file(paths[1], entry=name) if fmt == "llamafactory" else load_file(paths[0])
    assert result.problems == []
    assert result.encoding == "utf-8"
    return [s for _, s in result.samples]


def same(a: list[Sample], b: list[Sample]) -> None:
    assert [s.content_key() for s in a] == [s.content_key() for s in b]
    assert [s.tags for s in a] == [s.tags for s in b]


@pytest.mark.parametrize(("fmt", "group"), [(f, g) for f in EXPORT_FORMATS for g in GROUPS if (f, g) not in CANNOT])
def test_round_trip(tmp_path: Path, fmt: str, group: str) -> None:
    samples = GROUPS[group]
    paths = export_samples(samples, fmt, tmp_path / "out", name="cs")
    for path in paths:
        text = path.read_text(encoding="utf-8")
        assert "\\u" not in text  # written as UTF-8, not escaped
    again = reimport(paths, fmt, "cs")
    same(samples, again)
    # and a second trip changes nothing
    same(again, reimport(export_samples(again, fmt, tmp_path / "out2", name="cs"), fmt, "cs"))


@pytest.mark.parametrize("fmt", ["sharegpt", "openai", "llamafactory"])
def test_round_trip_from_imported_files(tmp_path: Path, fmt: str) -> None:
    source = tmp_path / "in.jsonl"
    records = [
        {
            "conversations": [
                {"from": "human", "value": "北京天气？"},
                {
                    "from": "function_call",
                    "value": '[{"name": "weather", "arguments": {"city": "北京"}}, {"name": "time", "arguments": {}}]',
                },
                {"from": "observation", "value": "晴，25度"},
                {"from": "gpt", "value": "北京今天晴。"},
            ],
            "system": "天气助手",
            "tools": '[{"name": "weather", "description": "查天气", "parameters": {}}]',
            "category": "天气",
        }
    ]
    source.write_bytes("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode("gb18030"))
    first = [s for _, s in load_file(source).samples]
    assert len(first) == 1
    again = reimport(export_samples(first, fmt, tmp_path / "out", name="w"), fmt, "w")
    if fmt == "openai":  # OpenAI's format links a tool's result to its call by id: the export gives them ids
        assert [c.id for c in again[0].messages[2].tool_calls] == ["call_1", "call_2"]
        assert again[0].messages[3].tool_call_id == "call_1"
        for message in again[0].messages:
            message.tool_call_id = None
            for call in message.tool_calls or []:
                call.id = None
    same(first, again)


def test_alpaca_refuses_tool_calls(tmp_path: Path) -> None:
    out = tmp_path / "a.json"
    with pytest.raises(DataError) as caught:
        export_samples([SIMPLE, TOOLS], "alpaca", out)
    (problem,) = caught.value.problems
    assert problem.record == 2
    assert f"sample 2 ({TOOLS.content_hash[:12]})" in problem.problem
    assert "alpaca" in problem.problem and "tool call" in problem.problem
    assert not out.exists() and list(tmp_path.iterdir()) == []  # nothing half-written


def test_sharegpt_refuses_turns_that_do_not_alternate(tmp_path: Path) -> None:
    twice = Sample(messages=[msg("user", "在吗"), msg("user", "你好"), msg("assistant", "在。")])
    with pytest.raises(DataError, match="alternation"):
        export_samples([twice], "sharegpt", tmp_path / "s.json")
    # openai holds it as it is
    paths = export_samples([twice], "openai", tmp_path / "o.jsonl")
    same([twice], reimport(paths, "openai", "x"))


def test_llamafactory_dataset_info(tmp_path: Path) -> None:
    out = tmp_path / "lf"
    out.mkdir()
    (out / "dataset_info.json").write_text(json.dumps({"old": {"file_name": "old.json"}}), encoding="utf-8")
    data, info_path = export_samples(PREFERENCE, "llamafactory", out, name="pref")
    assert data == out / "pref.json"
    info = json.loads(info_path.read_text(encoding="utf-8"))
    assert info["old"] == {"file_name": "old.json"}  # other entries are kept
    entry = info["pref"]
    assert entry["file_name"] == "pref.json" and entry["formatting"] == "sharegpt" and entry["ranking"] is True
    assert entry["columns"] == {
        "messages": "conversations",
        "system": "system",
        "chosen": "chosen",
        "rejected": "rejected",
    }
    assert entry["tags"]["role_tag"] == "from" and entry["tags"]["function_tag"] == "function_call"
    records = json.loads(data.read_text(encoding="utf-8"))
    assert records[0]["chosen"] == {"from": "gpt", "value": "您好！"}
    assert records[1]["system"] == ""  # every record has every mapped column

    export_samples([CHAT], "llamafactory", out, name="sft")
    info = json.loads(info_path.read_text(encoding="utf-8"))
    assert set(info) == {"old", "pref", "sft"} and info["sft"]["ranking"] is False


def test_llamafactory_refuses_mixed_preference(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="cannot be exported"):
        export_samples([SIMPLE, PREFERENCE[0]], "llamafactory", tmp_path / "lf")
    assert not (tmp_path / "lf").exists()


def test_exports_into_a_folder_by_name(tmp_path: Path) -> None:
    (path,) = export_samples([SIMPLE], "openai", tmp_path / "new" / "train", name="cs_v1")
    assert path == tmp_path / "new" / "train" / "cs_v1.jsonl"
    (path,) = export_samples([SIMPLE], "alpaca", tmp_path / "new" / "train", name="cs_v1")
    assert path.name == "cs_v1.json"


def test_write_is_atomic(tmp_path: Path) -> None:
    target = tmp_path / "data.json"
    target.write_text("old", encoding="utf-8")

    def parts() -> Iterator[str]:
        yield "[\n"
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        write_atomic(target, parts())
    assert target.read_text(encoding="utf-8") == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["data.json"]  # no temporary file left behind


def test_unknown_export_format(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="unknown export format 'csv'"):
        export_samples([SIMPLE], "csv", tmp_path / "x")
