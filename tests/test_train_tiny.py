"""The locally built tiny model: reloads offline as Qwen2, and its tokenizer round-trips Chinese exactly."""

from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig
from typer.testing import CliRunner

from bot.cli import app
from engine.train.tiny import IM_END, build_tiny_model

TEXTS = [
    "您好，订单号TL260329-302614的空气炸锅有异响，这算质量问题吧？",
    "签收后7天内支持无理由退货（商品完好、不影响二次销售），运费由本店承担。",
    "Hello, I'd like an invoice for order #42 — thanks! 😀",
    "  多个  空格\n\n换行\t制表符 “引号” 「括号」 ½ ① Ｆｕｌｌｗｉｄｔｈ",
]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


def test_reloads_as_qwen2_and_round_trips_chinese(tiny: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny)
    assert type(tokenizer).__name__ == "Qwen2Tokenizer"
    for text in TEXTS:
        ids = tokenizer.encode(text, add_special_tokens=False)
        assert tokenizer.decode(ids) == text
        # The pre-tokenizer on reload is the one the BPE was trained with: common words are few tokens.
    assert len(tokenizer.encode(TEXTS[1], add_special_tokens=False)) < len(TEXTS[1])
    messages = [{"role": "user", "content": "你好"}, {"role": "assistant", "content": "您好！"}]
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    assert text == "<|im_start|>user\n你好<|im_end|>\n<|im_start|>assistant\n您好！<|im_end|>\n"
    ids = tokenizer.apply_chat_template(messages, return_dict=True)["input_ids"]
    assert ids.count(tokenizer.convert_tokens_to_ids(IM_END)) == 2
    assert tokenizer.eos_token == IM_END


def test_model_is_small_seeded_and_stops_on_im_end(tiny: Path, tmp_path: Path) -> None:
    model = AutoModelForCausalLM.from_pretrained(tiny)
    assert model.config.model_type == "qwen2"
    assert 100_000 < sum(p.numel() for p in model.parameters()) < 1_000_000
    im_end = AutoTokenizer.from_pretrained(tiny).convert_tokens_to_ids(IM_END)
    assert im_end in GenerationConfig.from_pretrained(tiny).eos_token_id
    again = AutoModelForCausalLM.from_pretrained(build_tiny_model(tmp_path / "again"))
    assert all((a == b).all() for a, b in zip(model.parameters(), again.parameters(), strict=True))


def test_cli_builds_from_a_dataset(tmp_path: Path) -> None:
    data = tmp_path / "data.jsonl"
    data.write_text(
        "\n".join(
            f'{{"messages": [{{"role": "user", "content": "{q}"}}, {{"role": "assistant", "content": "{a}"}}]}}'
            for q, a in [("你好", "您好！"), ("发货了吗", "已经发货了。"), ("怎么退货", "在订单页申请退货。")]
        ),
        encoding="utf-8",
    )
    out = tmp_path / "model"
    result = CliRunner().invoke(app, ["model", "tiny", "--out", str(out), "--data", str(data), "--vocab-size", "300"])
    assert result.exit_code == 0, result.output
    assert "tiny model in" in result.output
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert tokenizer.decode(tokenizer.encode("怎么退货", add_special_tokens=False)) == "怎么退货"
    # A width the attention heads cannot split, or a dataset without text, is said before anything is built.
    odd = CliRunner().invoke(app, ["model", "tiny", "--out", str(tmp_path / "odd"), "--hidden-size", "10"])
    assert odd.exit_code == 2 and "--hidden-size: the width must be a multiple of 4" in odd.output
    empty = tmp_path / "empty.jsonl"
    empty.write_text("", encoding="utf-8")
    nothing = CliRunner().invoke(app, ["model", "tiny", "--out", str(tmp_path / "none"), "--data", str(empty)])
    assert nothing.exit_code == 2 and "empty.jsonl holds no text to train a tokenizer on" in nothing.output
    assert not (tmp_path / "odd").exists() and not (tmp_path / "none").exists()
