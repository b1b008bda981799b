"""Every import format, in every encoding a user is likely to upload, with Chinese content."""

import codecs
import csv
import io
import json
from pathlib import Path
from typing import Any

import pytest

from engine.data.errors import DataError
from engine.data.formats import FORMATS, load_file

ENCODINGS = ["utf-8", "utf-8-sig", "utf-16-le-bom", "utf-16-be-bom", "utf-16-le", "gb18030"]
REPORTED = {
    "utf-8": "utf-8",
    "utf-8-sig": "utf-8-sig",
    "utf-16-le-bom": "utf-16-le",
    "utf-16-be-bom": "utf-16-be",
    "utf-16-le": "utf-16-le",
    "gb18030": "gb18030",
}


def encode(text: str, encoding: str) -> bytes:
    if encoding == "utf-16-le-bom":
        return codecs.BOM_UTF16_LE + text.encode("utf-16-le")
    if encoding == "utf-16-be-bom":
        return codecs.BOM_UTF16_BE + text.encode("utf-16-be")
    return text.encode(encoding)


def write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.write_bytes(encode(text, encoding))
    return path


def as_jsonl(records: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)


def as_json(records: list[dict[str, Any]]) -> str:
    return json.dumps(records, ensure_ascii=False, indent=2)


ALPACA = [
    {"instruction": "把这句话翻译成英文", "input": "你好，世界", "output": "Hello, world", "tags": ["翻译"]},
    {
        "instruction": "退货政策是什么？",
        "output": "七天无理由退货。",
        "system": "你是客服助手。",
        "history": [["你好", "您好，请问有什么可以帮您？"]],
        "category": "售后",
    },
]
SHAREGPT = [
    {
        "conversations": [
            {"from": "human", "value": "北京今天天气怎么样？"},
            {"from": "function_call", "value": '{"name": "weather", "arguments": {"city": "北京"}}'},
            {"from": "observation", "value": '{"temp": 25}'},
            {"from": "gpt", "value": "北京今天25度，晴。"},
        ],
        "system": "你是天气助手。",
        "tools": '[{"name": "weather", "description": "查询天气", "parameters": {"type": "object"}}]',
        "scenario": "天气",
    },
    {"conversations": [{"from": "human", "value": "你是谁？"}, {"from": "gpt", "value": "我是助手。"}]},
]
OPENAI = [
    {
        "messages": [
            {"role": "system", "content": "你是订单助手。"},
            {"role": "user", "content": "查一下订单123"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {"name": "order", "arguments": '{"id":"123"}'}}
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "已发货"},
            {"role": "assistant", "content": "您的订单已发货。"},
        ],
        "tools": [{"type": "function", "function": {"name": "order", "parameters": {"type": "object"}}}],
        "tag": "订单",
    },
    {"messages": [{"role": "user", "content": "谢谢"}, {"role": "assistant", "content": "不客气！"}]},
]
PROMPT_COMPLETION = [
    {"prompt": "一加一等于几？", "completion": "二。"},
    {
        "prompt": [{"role": "user", "content": "天空是什么颜色？"}],
        "completion": [{"role": "assistant", "content": "蓝色。"}],
    },
]
PREFERENCE = [
    {"prompt": "写一句问候语", "chosen": "您好，很高兴为您服务！", "rejected": "干嘛？", "tags": "礼貌"},
    {
        "prompt": [{"role": "user", "content": "介绍一下你自己"}],
        "chosen": [{"role": "assistant", "content": "我是一个乐于助人的助手。"}],
        "rejected": [{"role": "assistant", "content": "不想说。"}],
    },
    {
        "chosen": [{"role": "user", "content": "1+1等于几?"}, {"role": "assistant", "content": "2"}],
        "rejected": [{"role": "user", "content": "1+1等于几?"}, {"role": "assistant", "content": "3"}],
    },
]
SHAREGPT_PREFERENCE = [
    {
        "conversations": [{"from": "human", "value": "推荐一本书"}],
        "chosen": {"from": "gpt", "value": "《红楼梦》。"},
        "rejected": {"from": "gpt", "value": "不知道。"},
    }
]
ALPACA_PREFERENCE = [{"instruction": "推荐一本书", "input": "", "chosen": "《红楼梦》。", "rejected": "不知道。"}]

CASES = {
    "alpaca": ALPACA,
    "sharegpt": SHAREGPT,
    "openai": OPENAI,
    "prompt_completion": PROMPT_COMPLETION,
    "preference": PREFERENCE,
}


@pytest.mark.parametrize("encoding", ENCODINGS)
@pytest.mark.parametrize("layout", ["json", "jsonl"])
@pytest.mark.parametrize("shape", list(CASES))
def test_every_format_in_every_encoding(tmp_path: Path, shape: str, layout: str, encoding: str) -> None:
    records = CASES[shape]
    text = as_json(records) if layout == "json" else as_jsonl(records)
    path = write(tmp_path / f"data.{layout}", text, encoding)
    result = load_file(path)
    assert result.problems == []
    assert result.format == shape
    assert result.encoding == REPORTED[encoding]
    assert result.records == len(records)
    assert [n for n, _ in result.samples] == list(range(1, len(records) + 1))
    for (_, sample), record in zip(result.samples, records, strict=True):
        assert sample.original == record
        assert sample.original_format == shape
        assert any("\u4e00" <= ch <= "\u9fff" for ch in sample.full_text())  # Chinese survived decoding


def test_alpaca_fields(tmp_path: Path) -> None:
    result = load_file(write(tmp_path / "a.json", as_json(ALPACA)))
    first, second = (s for _, s in result.samples)
    assert [m.content for m in first.messages] == ["把这句话翻译成英文\n你好，世界", "Hello, world"]
    assert first.tags == ["翻译"]
    assert [m.role for m in second.messages] == ["system", "user", "assistant", "user", "assistant"]
    assert second.messages[2].content == "您好，请问有什么可以帮您？"
    assert second.tags == ["售后"]


def test_sharegpt_tools_and_function_calls(tmp_path: Path) -> None:
    sample = load_file(write(tmp_path / "s.jsonl", as_jsonl(SHAREGPT))).samples[0][1]
    assert [m.role for m in sample.messages] == ["system", "user", "assistant", "tool", "assistant"]
    call = sample.messages[2].tool_calls[0]  # type: ignore[index]
    assert call.function == {"name": "weather", "arguments": '{"city": "北京"}'}
    assert sample.tools == [
        {
            "type": "function",
            "function": {"name": "weather", "description": "查询天气", "parameters": {"type": "object"}},
        }
    ]
    assert sample.tags == ["天气"]


def test_openai_tool_calls_keep_ids(tmp_path: Path) -> None:
    sample = load_file(write(tmp_path / "o.jsonl", as_jsonl(OPENAI))).samples[0][1]
    assert sample.messages[2].tool_calls[0].id == "call_1"  # type: ignore[index]
    assert sample.messages[2].tool_calls[0].function["arguments"] == '{"id": "123"}'  # type: ignore[index]
    assert sample.messages[3].tool_call_id == "call_1"
    assert sample.tags == ["订单"]


def test_preference_shapes(tmp_path: Path) -> None:
    result = load_file(write(tmp_path / "p.jsonl", as_jsonl(PREFERENCE)))
    assert result.problems == []
    for _, sample in result.samples:
        assert sample.rejected is not None and sample.rejected.role == "assistant"
        assert sample.messages[-1].role == "assistant"
    implicit = result.samples[2][1]
    assert [m.content for m in implicit.messages] == ["1+1等于几?", "2"]
    assert implicit.rejected.content == "3"  # type: ignore[union-attr]

    for records, shape in ((SHAREGPT_PREFERENCE, "sharegpt"), (ALPACA_PREFERENCE, "alpaca")):
        result = load_file(write(tmp_path / f"{shape}.json", as_json(records)))
        assert result.format == shape
        sample = result.samples[0][1]
        assert sample.messages[-1].content == "《红楼梦》。"
        assert sample.rejected.content == "不知道。"  # type: ignore[union-attr]


def table(rows: list[dict[str, Any]], delimiter: str) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]), delimiter=delimiter, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


@pytest.mark.parametrize("encoding", ["utf-8-sig", "gb18030", "utf-16-le-bom"])
@pytest.mark.parametrize("delimiter", [",", "\t"])
def test_csv_and_tsv_with_json_cells(tmp_path: Path, delimiter: str, encoding: str) -> None:
    rows = [
        {
            "conversations": json.dumps(SHAREGPT[1]["conversations"], ensure_ascii=False),
            "system": "",
            "tags": '["身份", "闲聊"]',
        },
        {
            "conversations": json.dumps(
                [{"from": "human", "value": "多行\n问题，带逗号"}, {"from": "gpt", "value": '答案 "引号"'}],
                ensure_ascii=False,
            ),
            "system": "你是助手。",
            "tags": "杂项",
        },
    ]
    suffix = ".tsv" if delimiter == "\t" else ".csv"
    result = load_file(write(tmp_path / f"t{suffix}", table(rows, delimiter), encoding))
    assert result.problems == []
    assert result.format == "sharegpt"
    first, second = (s for _, s in result.samples)
    assert first.tags == ["身份", "闲聊"]
    assert [m.role for m in first.messages] == ["user", "assistant"]
    assert second.messages[0].content == "你是助手。"
    assert second.messages[1].content == "多行\n问题，带逗号"
    assert second.tags == ["杂项"]
    assert [line for (line,) in [(n,) for n, _ in result.samples]] == [1, 2]


def test_csv_alpaca_with_history_cell(tmp_path: Path) -> None:
    rows = [{"instruction": "继续", "input": "", "output": "好的。", "history": '[["第一问", "第一答"]]'}]
    sample = load_file(write(tmp_path / "a.csv", table(rows, ","))).samples[0][1]
    assert [m.content for m in sample.messages] == ["第一问", "第一答", "继续", "好的。"]


def test_sniffs_layout_when_extension_is_odd(tmp_path: Path) -> None:
    assert load_file(write(tmp_path / "d.txt", as_jsonl(ALPACA))).format == "alpaca"
    assert len(load_file(write(tmp_path / "d.dat", as_json(SHAREGPT))).samples) == 2
    jsonl_named_json = load_file(write(tmp_path / "d.json", as_jsonl(OPENAI)))
    assert jsonl_named_json.problems == [] and len(jsonl_named_json.samples) == 2
    rows = [{"prompt": "你好", "completion": "您好"}]
    assert load_file(write(tmp_path / "d.data", table(rows, "\t"))).format == "prompt_completion"


def test_object_holding_the_array(tmp_path: Path) -> None:
    result = load_file(write(tmp_path / "wrapped.json", json.dumps({"data": ALPACA}, ensure_ascii=False)))
    assert result.problems == [] and len(result.samples) == 2


def test_forced_encoding_and_format(tmp_path: Path) -> None:
    path = write(tmp_path / "gbk.jsonl", as_jsonl(ALPACA), "gb18030")
    result = load_file(path, encoding="gbk", fmt="alpaca")
    assert result.encoding == "gbk" and len(result.samples) == 2
    assert result.samples[0][1].messages[-1].content == "Hello, world"


def write_info(folder: Path, info: dict[str, Any]) -> Path:
    return write(folder / "dataset_info.json", json.dumps(info, ensure_ascii=False))


def test_dataset_info_alpaca_with_column_mapping(tmp_path: Path) -> None:
    records = [{"问题": "你好", "补充": "", "回答": "您好！", "系统": "客服", "标签": "x", "tags": ["问候"]}]
    (tmp_path / "sub").mkdir()
    write(tmp_path / "sub" / "cs.json", as_json(records), "gb18030")
    info = {
        "cs": {
            "file_name": "sub/cs.json",
            "columns": {"prompt": "问题", "query": "补充", "response": "回答", "system": "系统"},
        },
        "hub": {"hf_hub_url": "someone/data"},
    }
    result = load_file(write_info(tmp_path, info))  # the only local entry is picked
    assert result.problems == []
    assert result.format == "alpaca" and result.encoding == "gb18030"
    assert result.path == (tmp_path / "sub" / "cs.json").resolve()
    sample = result.samples[0][1]
    assert [(m.role, m.content) for m in sample.messages] == [
        ("system", "客服"),
        ("user", "你好"),
        ("assistant", "您好！"),
    ]
    assert sample.tags == ["问候"]


def test_dataset_info_sharegpt_with_openai_tags_and_ranking(tmp_path: Path) -> None:
    records = [
        {
            "msgs": [{"role": "user", "content": "你好"}],
            "good": {"role": "assistant", "content": "您好！"},
            "bad": {"role": "assistant", "content": "嗯。"},
        }
    ]
    write(tmp_path / "pref.jsonl", as_jsonl(records), "utf-16-le-bom")
    info = {
        "sft": {"file_name": "other.json"},
        "pref": {
            "file_name": "pref.jsonl",
            "formatting": "sharegpt",
            "ranking": True,
            "columns": {"messages": "msgs", "chosen": "good", "rejected": "bad"},
            "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant"},
        },
    }
    path = write_info(tmp_path, info)
    with pytest.raises(DataError, match="name the dataset"):
        load_file(path)
    result = load_file(path, entry="pref")
    assert result.problems == [] and result.format == "sharegpt"
    sample = result.samples[0][1]
    assert sample.messages[-1].content == "您好！"
    assert sample.rejected.content == "嗯。"  # type: ignore[union-attr]


def test_dataset_info_refuses_unknown_entries_and_escapes(tmp_path: Path) -> None:
    path = write_info(tmp_path, {"a": {"file_name": "../secret.json"}, "b": {"hf_hub_url": "x/y"}})
    with pytest.raises(DataError, match="no dataset named 'c'"):
        load_file(path, entry="c")
    with pytest.raises(DataError, match="outside the folder"):
        load_file(path, entry="a")
    with pytest.raises(DataError, match="no local file_name"):
        load_file(path, entry="b")


def test_format_names() -> None:
    assert FORMATS == ("alpaca", "sharegpt", "openai", "prompt_completion", "preference", "dataset_info")
