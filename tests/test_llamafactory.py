"""LLaMA-Factory's data and recipes, in its own formats (fixtures under tests/llamafactory/, written here in the
shapes of LLaMA-Factory's data/ demos): the same files train the same way, or a sentence says what differs."""

import json
import re
from pathlib import Path

import pytest

from engine.data.formats import load_file
from engine.train.prepare import (
    IGNORE_INDEX,
    PrepareError,
    end_of_turn_token,
    load_tokenizer,
    tokenize_sample,
    tokenize_samples,
)
from engine.train.recipe import Recipe
from engine.train.tiny import build_tiny_model

LF = Path(__file__).with_name("llamafactory")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


def trained_text(tokenizer, input_ids: list[int], labels: list[int]) -> str:
    return tokenizer.decode([t for t, label in zip(input_ids, labels, strict=True) if label != IGNORE_INDEX])


def test_tool_definitions_and_calls_reach_the_trained_tokens_as_llamafactory_writes_them(tiny: Path) -> None:
    samples = [s for _, s in load_file(LF / "dataset_info.json", entry="glaive_toolcall_zh_demo").samples]
    tokenizer = load_tokenizer(tiny)
    eot = end_of_turn_token(tokenizer)
    sample = samples[1]
    item = tokenize_sample(sample, tokenizer, cutoff_len=4096, train_on_prompt=False, eot=eot)
    text = tokenizer.decode(item.input_ids)
    # LLaMA-Factory's QwenToolUtils.tool_formatter (src/llamafactory/data/tool_utils.py, lines 593-599): each
    # tool wrapped as {"type": "function", "function": ...}, json.dumps'd on a line of its own inside <tools>.
    for tool in json.loads(sample.original["tools"]):
        assert "\n" + json.dumps({"type": "function", "function": tool}, ensure_ascii=False) + "\n" in text
    assert "退款原因" in text  # the schema's Chinese descriptions, not \u escapes
    trained = trained_text(tokenizer, item.input_ids, item.labels)
    calls = re.findall(r"<tool_call>\n(.*?)\n</tool_call>", trained, re.S)
    # QwenToolUtils.function_formatter (tool_utils.py, lines 604-608): the arguments as an object, not JSON text
    expected = json.dumps(
        {"name": "申请退款", "arguments": {"order_id": "B2002", "reason": "商品破损"}}, ensure_ascii=False
    )
    assert calls == [expected]
    assert json.loads(calls[0])["arguments"]["reason"] == "商品破损"
    assert "退款已受理，退款单号R77。" in trained  # the answer after the tool's result
    assert '已受理"}' not in trained  # the tool's result is context, not a target
    assert "<tool_response>" in text


def test_a_template_that_drops_tool_definitions_is_refused(tiny: Path) -> None:
    samples = [s for _, s in load_file(LF / "dataset_info.json", entry="glaive_toolcall_zh_demo").samples]
    tokenizer = load_tokenizer(tiny)
    tokenizer.chat_template = (
        "{%- for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + (m['content'] or '') + '<|im_end|>\\n' }}"
        "{%- endfor %}{%- if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{%- endif %}"
    )
    with pytest.raises(PrepareError, match="does not write tool definitions"):
        tokenize_samples(samples, tokenizer, Recipe())
