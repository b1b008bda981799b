"""Quality filters: each rule in Chinese and English, positive and negative, order and counts."""

from pathlib import Path

import pytest

from engine.data.filters import (
    FilterConfig,
    apply_filters,
    count_tokens,
    estimate_tokens,
    find_sensitive,
    is_valid_resident_id,
    load_tokenizer,
    luhn_valid,
)
from engine.data.sample import Message, Sample

VALID_ID = "11010519491231002X"  # a valid MOD 11-2 checksum
INVALID_ID = "110105194912310021"  # same number, wrong check character
VALID_CARD = "6222021234567890128"  # Luhn-valid, 19 digits
INVALID_CARD = "6222021234567890127"

ZH_Q = "请问我的订单什么时候发货？我是上周五在你们的官方旗舰店下的单。"
ZH_A = "您好，您的订单已经在今天上午发出，预计三到五个工作日送达，请留意快递员的电话，如有问题请随时联系我们。"
EN_Q = "When will my order ship? I placed it last Friday on your official store."
EN_A = (
    "Your order shipped this morning and should arrive within three to five business days; "
    "keep your phone nearby for the courier and contact us if anything goes wrong."
)


def qa(question: str, answer: str, system: str | None = None) -> Sample:
    messages = [Message(role="system", content=system)] if system else []
    messages += [Message(role="user", content=question), Message(role="assistant", content=answer)]
    return Sample(messages=messages)


def run(samples: list[Sample], **config: object):
    return apply_filters(samples, FilterConfig(**config))


def test_clean_samples_are_kept_untouched() -> None:
    samples = [qa(ZH_Q, ZH_A), qa(EN_Q, EN_A)]
    out = run(samples)
    assert out.kept_indices == [0, 1]
    assert out.removed == {} and out.masked_counts == {} and out.counts_by_rule() == {}
    assert out.samples == samples


# --- length ---------------------------------------------------------------------------------------


def test_empty_and_short_answers() -> None:
    out = run([qa(ZH_Q, "   "), qa(ZH_Q, "好"), qa(EN_Q, "ok"), qa(EN_Q, "Sure.")], min_answer_chars=3)
    assert out.removed[0].rule == "empty_answer"
    assert out.removed[1].rule == "too_short"
    assert out.removed[1].reason == "answer has 1 characters, minimum is 3"
    assert out.removed[2].rule == "too_short"
    assert out.kept_indices == [3]


def test_long_prompt_and_answer_by_characters() -> None:
    out = run([qa("问" * 100, ZH_A), qa(EN_Q, "a" * 300), qa(EN_Q, EN_A)], max_prompt_chars=80, max_answer_chars=200)
    assert out.removed[0].rule == "too_long" and out.removed[0].reason == "prompt has 100 characters, maximum is 80"
    assert out.removed[1].rule == "too_long" and "answer has 300 characters, maximum is 200" in out.removed[1].reason
    assert out.kept_indices == [2]


def test_token_estimate_counts_cjk_characters_and_words() -> None:
    assert estimate_tokens("你好世界") == 4
    assert estimate_tokens("hello world") == 3  # 2 words * 1.3, rounded up
    assert estimate_tokens("你好，world!") == 2 + 2 + 2  # 2 CJK, 2 symbols, 1 word -> 2
    out = run([qa(ZH_Q, "字" * 60), qa(EN_Q, " ".join(["word"] * 40))], max_answer_tokens=50)
    assert out.removed[0].reason == "answer has 60 tokens (estimated), maximum is 50"
    assert out.removed[1].reason == "answer has 52 tokens (estimated), maximum is 50"


def _tiny_tokenizer(tmp_path: Path) -> Path:
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.WordLevelTrainer(special_tokens=["[UNK]"])
    tok.train_from_iterator(["the order has shipped", "please wait a moment", "你 好"], trainer)
    path = tmp_path / "tokenizer.json"
    tok.save(str(path))
    return path


def test_token_limits_with_a_local_tokenizer(tmp_path: Path) -> None:
    path = _tiny_tokenizer(tmp_path)
    tokenizer = load_tokenizer(path)
    assert load_tokenizer(tmp_path).encode("the order").ids == tokenizer.encode("the order").ids
    assert count_tokens("the order has shipped", tokenizer) == 4
    samples = [
        qa("where is it", "the order has shipped"),  # conversation: 3 + 4 = 7 tokens
        qa("where is my order please tell me now", "the order has shipped"),  # 8 + 4 = 12
    ]
    out = apply_filters(samples, FilterConfig(max_total_tokens=10), tokenizer=tokenizer)
    assert out.kept_indices == [0]
    assert out.removed[1].rule == "too_many_tokens"
    assert out.removed[1].reason == "conversation has 12 tokens, maximum is 10"
    out = apply_filters(samples, FilterConfig(min_answer_tokens=5), tokenizer=tokenizer)
    assert out.removed[0].reason == "answer has 4 tokens, minimum is 5"


def test_load_tokenizer_refuses_missing_paths(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load_tokenizer(tmp_path / "nope")
    with pytest.raises(FileNotFoundError):
        load_tokenizer(tmp_path)  # an empty folder


# --- degenerate answers ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "answer",
    [
        "好的。好的。好的。",
        "好的！好的！好的！好的",
        "I can help. I can help. I can help.",
        "哈哈哈哈哈哈哈哈",
        "ok ok ok ok ok ok",
    ],
)
def test_repetitive_answers_are_dropped(answer: str) -> None:
    out = run([qa(ZH_Q, answer)])
    assert out.removed[0].rule == "repetitive_answer"


@pytest.mark.parametrize(
    "answer",
    [
        ZH_A,
        EN_A,
        "请稍等。我帮您查一下。请稍等。订单已经发出。",  # a repeated sentence, but not the answer's bulk
        "第一步，打开设置。第二步，点击账户。第三步，选择退出登录。",
    ],
)
def test_normal_answers_are_not_repetitive(answer: str) -> None:
    assert 0 not in run([qa(ZH_Q, answer)]).removed


def test_answer_copying_the_question() -> None:
    long_q = ZH_Q + "订单号是一串很长的编号，收货地址是北京市海淀区中关村大街，麻烦帮我查一下物流信息，谢谢！"
    out = run(
        [
            qa(ZH_Q, ZH_Q),
            qa(EN_Q, "  " + EN_Q.upper() + " "),  # same after normalisation
            qa(long_q, long_q.replace("上周五", "上周六")),  # near-identical
            qa(ZH_Q, ZH_A),
        ]
    )
    assert [out.removed[i].rule for i in (0, 1, 2)] == ["answer_copies_prompt"] * 3
    assert "identical to the question" in out.removed[1].reason
    assert "near copy" in out.removed[2].reason
    assert out.kept_indices == [3]


# --- sensitive content --------------------------------------------------------------------------


def test_resident_id_checksum() -> None:
    assert is_valid_resident_id(VALID_ID) and is_valid_resident_id(VALID_ID.lower())
    assert not is_valid_resident_id(INVALID_ID)
    assert find_sensitive(f"我的身份证号是{VALID_ID}，请核实", "id_card") == [(7, 25)]
    assert find_sensitive(f"我的身份证号是{INVALID_ID}，请核实", "id_card") == []
    assert find_sensitive(f"编号{VALID_ID}9", "id_card") == []  # part of a longer number


def test_bank_card_luhn() -> None:
    assert luhn_valid(VALID_CARD) and luhn_valid("4111111111111111")
    assert not luhn_valid(INVALID_CARD)
    assert find_sensitive(f"卡号{VALID_CARD}已绑定", "bank_card") == [(2, 21)]
    assert find_sensitive("card 4111 1111 1111 1111 is linked", "bank_card") == [(5, 24)]
    assert find_sensitive(f"卡号{INVALID_CARD}已绑定", "bank_card") == []
    assert find_sensitive(f"身份证{VALID_ID}", "bank_card") == []  # an ID is not a card


def test_phone_numbers_next_to_chinese_and_not_inside_longer_numbers() -> None:
    assert find_sensitive("请拨打13812345678联系我", "phone") == [(3, 14)]
    assert find_sensitive("电话：+86 138-1234-5678。", "phone") == [(3, 20)]
    assert find_sensitive("call me at 139 1234 5678 tomorrow", "phone") == [(11, 24)]
    assert find_sensitive("订单号202313812345678900", "phone") == []  # embedded in a longer number
    assert find_sensitive("订单号1381234567899", "phone") == []  # 13 digits
    assert find_sensitive("金额12345678901元", "phone") == []  # 11 digits, but not a 13x-19x prefix


def test_email_and_api_keys() -> None:
    assert find_sensitive("邮箱是zhang.san@example.com谢谢", "email") == [(3, 24)]
    assert find_sensitive("no address here @ all", "email") == []
    key_texts = [
        "my key is sk-proj-abcdefghijklmnopqrstuvwxyz123456",
        "token ghp_" + "a1B2" * 9,
        "xoxb-1234567890-abcdefghij in the config",
        "aws AKIAIOSFODNN7EXAMPLE",
        "Authorization: Bearer abcdefghijklmnop1234",
        "秘钥是0F9tJ-sJpH3PDADccLJljKM7DKuwFH9U6Ld6DMPJ1ig请保管好",
    ]
    for text in key_texts:
        assert find_sensitive(text, "api_key"), text
    not_keys = [
        "MyVariableName2023ForTestingPurposes",  # an identifier
        "550e8400-e29b-41d4-a716-446655440000",  # a UUID
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",  # a hex digest
        "how-to-install-python-on-windows-10-step-by-step",
        "sk-short",
    ]
    for text in not_keys:
        assert find_sensitive(text, "api_key") == [], text


def test_masking_replaces_text_in_every_message() -> None:
    sample = qa(f"我的手机是13812345678，身份证{VALID_ID}", "好的，已经记录您的信息 zhang@example.com，稍后联系您。")
    out = run([sample])
    assert out.kept_indices == [0]
    masked = out.samples[0]
    assert masked.messages[0].content == "我的手机是[PHONE]，身份证[ID_CARD]"
    assert masked.messages[1].content == "好的，已经记录您的信息 [EMAIL]，稍后联系您。"
    assert out.masked_counts == {"phone": 1, "id_card": 1, "email": 1}
    assert sample.messages[0].content.startswith("我的手机是138")  # the input is not mutated


def test_sensitive_actions_drop_and_off() -> None:
    samples = [qa(f"card {VALID_CARD} please", EN_A), qa(f"卡号 {VALID_CARD}", ZH_A)]
    out = run(samples, bank_card="drop")
    assert [r.rule for r in out.removed.values()] == ["bank_card", "bank_card"]
    assert out.removed[0].reason == "a user message contains a bank card number"
    assert VALID_CARD not in out.removed[0].reason  # reasons never echo the secret
    out = run(samples, bank_card="off")
    assert out.removed == {} and out.samples == samples


def test_blocked_words_case_insensitive_in_both_languages() -> None:
    samples = [qa(ZH_Q, ZH_A + "竞品A更差"), qa(EN_Q, EN_A + " Unlike ACME Corp."), qa(EN_Q, EN_A)]
    out = run(samples, blocked_words=["竞品A", "acme corp"])
    assert [out.removed[i].rule for i in (0, 1)] == ["blocked_word", "blocked_word"]
    assert out.kept_indices == [2]
    out = run(samples, blocked_words=["竞品A", "acme corp"], blocked_word="mask")
    assert out.samples[1].messages[1].content.endswith("Unlike [BLOCKED].")


# --- duplicates ---------------------------------------------------------------------------------


def test_exact_duplicates_after_normalisation_keep_the_first() -> None:
    samples = [
        qa(ZH_Q, ZH_A),
        qa(EN_Q, EN_A),
        qa(ZH_Q.replace("？", "?"), ZH_A, system="You are a helpful assistant."),  # full-width folded
        qa(EN_Q.upper(), "  " + EN_A),
    ]
    out = run(samples)
    assert out.kept_indices == [0, 1]
    assert out.removed[2].rule == "exact_duplicate" and out.removed[2].reason == "same text as sample #1"
    assert out.removed[3].reason == "same text as sample #2"


def test_near_duplicates_within_batch_and_against_existing() -> None:
    existing = [qa(EN_Q, EN_A)]
    samples = [
        qa(ZH_Q, ZH_A),
        qa(ZH_Q, ZH_A.replace("三到五", "三至五")),  # near-dup of sample 0
        qa(EN_Q, EN_A.replace("three", "3")),  # near-dup of the existing sample
        qa(EN_Q, EN_A),  # exact dup of the existing sample
        qa("What is your return policy?", "You can return any item within 30 days of delivery for a full refund."),
    ]
    out = apply_filters(samples, FilterConfig(), existing=existing)
    assert out.kept_indices == [0, 4]
    assert out.removed[1].rule == "near_duplicate" and out.removed[1].reason.startswith("near-duplicate of sample #1")
    assert out.removed[2].reason.startswith("near-duplicate of existing sample #1")
    assert out.removed[3].rule == "exact_duplicate" and out.removed[3].reason == "same text as existing sample #1"
    out = apply_filters(samples, FilterConfig(near_dup_threshold=None, exact_dedup=False), existing=existing)
    assert out.removed == {}


def test_a_sample_dropped_early_does_not_use_up_its_duplicate_group() -> None:
    # Sample 0 is removed for its phone number; its duplicate, sample 1, masks to the same text
    # but is the first *surviving* one, so it is kept (and 2 is then its duplicate).
    samples = [
        qa(f"我的电话是13812345678，{ZH_Q}", ZH_A + "好"),
        qa(ZH_Q, ZH_A),
        qa(ZH_Q, ZH_A.replace("三到五", "三至五")),
    ]
    out = run(samples, phone="drop")
    assert out.removed[0].rule == "phone"
    assert out.kept_indices == [1]
    assert out.removed[2].rule == "near_duplicate" and "sample #2" in out.removed[2].reason


def test_masked_samples_are_deduplicated_as_masked() -> None:
    samples = [qa(f"我的电话是13812345678，{ZH_Q}", ZH_A), qa(f"我的电话是13987654321，{ZH_Q}", ZH_A)]
    out = run(samples)
    assert out.removed[1].rule == "exact_duplicate"
    assert out.masked_counts == {"phone": 1}  # counted over kept samples only


def test_counts_by_rule_follow_rule_order() -> None:
    samples = [
        qa(ZH_Q, ZH_A),
        qa(ZH_Q, ZH_A),  # exact_duplicate
        qa(EN_Q, ""),  # empty_answer
        qa(EN_Q, "I can help. I can help. I can help."),  # repetitive_answer
        qa(EN_Q, "x"),  # too_short
        qa(EN_Q, EN_A),
    ]
    out = run(samples)
    assert out.counts_by_rule() == {"empty_answer": 1, "too_short": 1, "repetitive_answer": 1, "exact_duplicate": 1}
    assert list(out.counts_by_rule()) == ["empty_answer", "too_short", "repetitive_answer", "exact_duplicate"]
    assert out.kept_indices == [0, 5]
    assert len(out.samples) == len(samples)
    assert [s.answer_text() for s in out.kept()] == [ZH_A, EN_A]


def test_config_rejects_unknown_fields_and_bad_threshold() -> None:
    with pytest.raises(ValueError):
        FilterConfig(min_answer_char=3)
    with pytest.raises(ValueError):
        FilterConfig(near_dup_threshold=1.5)
    with pytest.raises(ValueError):
        FilterConfig(phone="hide")
