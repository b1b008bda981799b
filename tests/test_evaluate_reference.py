"""Reference metrics on hand-checkable cases: Chinese is scored on characters (never whitespace tokens, which
score every unspaced Chinese pair 0), English on words, and the reference's perplexity falls under an adapter
trained on it."""

import math
from pathlib import Path

import pytest
from rouge_score.rouge_scorer import RougeScorer

from engine.evaluate.generate import LoadedModels, generate_pairs, load_models
from engine.evaluate.reference import (
    answer_labels,
    answer_nlls,
    reference_metrics,
    score_answer,
)
from engine.evaluate.results import AnswerNLL, GenerationSettings, corpus_perplexity, mean_scores
from engine.evaluate.text import cjk_share, language_of, tokens
from engine.train.prepare import IGNORE_INDEX
from engine.train.tiny import IM_END, build_tiny_model
from tests.evaluation_data import generated_sample
from tests.test_evaluate_generate import qa_samples, trained_adapter
from tests.training_data import SHOP_QA, SHOP_SYSTEM

ORDER = "订单会在48小时内发货。"


def test_identical_chinese_scores_full_marks() -> None:
    scores = score_answer(ORDER, ORDER)
    assert scores.language == "zh"
    assert scores.rouge_l == pytest.approx(1.0)
    assert scores.bleu == pytest.approx(100.0) and scores.chrf == pytest.approx(100.0)
    assert scores.exact_match == 1.0


def test_whitespace_free_chinese_is_not_scored_zero() -> None:
    # The classic bug: whitespace (or rouge-score's default ASCII-only) tokens make each of these one token or none.
    scores = score_answer("订单明天发货", "订单今天发货")
    assert scores.rouge_l > 0.5 and scores.bleu > 0 and scores.chrf > 0
    assert tokens("订单明天发货") == ["订", "单", "明", "天", "发", "货"]
    assert RougeScorer(["rougeL"]).score("订单今天发货", "订单明天发货")["rougeL"].fmeasure == 0.0  # why we tokenise


def test_half_shared_chinese_scores_in_between() -> None:
    # 4 of the 8 characters are shared, in order: the LCS is 4, so ROUGE-L F1 = 4/8.
    scores = score_answer("会在今天收到货品", "会在明日送达货品")
    assert scores.rouge_l == pytest.approx(0.5)
    assert 0 < scores.bleu < 100 and 0 < scores.chrf < 100 and scores.exact_match == 0.0
    unrelated = score_answer("一般三到五天送达。", ORDER)
    assert unrelated.rouge_l == 0.0 and unrelated.bleu < scores.bleu and unrelated.chrf < scores.chrf


def test_english_is_scored_on_words() -> None:
    same = score_answer("The order ships within two days.", "The order ships within two days.")
    assert same.language == "en" and same.rouge_l == pytest.approx(1.0) and same.bleu == pytest.approx(100.0)
    partly = score_answer("The order ships in a week", "The order ships within two days.")
    assert partly.rouge_l == pytest.approx(0.5)  # LCS "the order ships": 3/6 both ways
    assert 0 < partly.bleu < 100 and 0 < partly.chrf < 100 and partly.exact_match == 0.0


def test_exact_match_uses_the_projects_normalisation() -> None:
    assert score_answer("订单会在４８小时内发货.", "订单会在48小时内发货.").exact_match == 1.0  # full-width digits
    assert score_answer("  Hello   WORLD ", "hello world").exact_match == 1.0
    assert score_answer("订单会在48小时内发货", ORDER).exact_match == 0.0  # punctuation is part of the answer


def test_empty_answers() -> None:
    empty = score_answer("", ORDER)
    assert (empty.rouge_l, empty.bleu, empty.chrf, empty.exact_match) == (0.0, 0.0, 0.0, 0.0)
    assert score_answer("", "").exact_match == 1.0


def test_language_is_the_share_of_han_characters() -> None:
    assert cjk_share("订单会在48小时内发货。") == pytest.approx(9 / 11)
    assert cjk_share("Hello, world") == 0.0 and cjk_share("。！") == 0.0
    assert language_of("请在App的设置里找到Order History") == "zh"
    assert language_of("Open Settings > Orders, then tap 退货") == "en"
    assert tokens("iPhone15很好用！") == ["iphone15", "很", "好", "用"]


def test_mean_scores() -> None:
    scores = [score_answer(ORDER, ORDER), score_answer("一般三到五天送达。", ORDER)]
    means = mean_scores(scores)
    assert means["exact_match"] == 0.5 and means["rouge_l"] == pytest.approx(0.5)
    assert mean_scores([]) == {}


def test_perplexity_counts_only_the_answer_and_its_end_token(tmp_path: Path) -> None:
    loaded = load_models(build_tiny_model(tmp_path / "model"), device="cpu")
    prompt = [{"role": "system", "content": SHOP_SYSTEM}, {"role": "user", "content": "多久到货？"}]
    ids, labels = answer_labels(loaded.tokenizer, prompt, "一般三到五天送达。", IM_END)
    counted = [token for token, label in zip(ids, labels, strict=True) if label != IGNORE_INDEX]
    assert loaded.tokenizer.decode(counted) == "一般三到五天送达。" + IM_END
    # Batching (right padding) changes nothing, and corpus perplexity weighs samples by their tokens.
    pairs = [(prompt, "一般三到五天送达。", None), ([{"role": "user", "content": "你好"}], "您好", None)]
    together = answer_nlls(loaded.model, loaded.tokenizer, pairs, batch_size=2)
    alone = [answer_nlls(loaded.model, loaded.tokenizer, [pair])[0] for pair in pairs]
    assert [n.nll for n in together] == pytest.approx([n.nll for n in alone], rel=1e-5)
    assert [n.tokens for n in together] == [n.tokens for n in alone]
    assert together[0].perplexity == pytest.approx(math.exp(together[0].nll / together[0].tokens))
    assert corpus_perplexity([AnswerNLL(2.0, 1), AnswerNLL(4.0, 3)]) == pytest.approx(math.exp(1.5))


@pytest.fixture(scope="module")
def tuned(tmp_path_factory: pytest.TempPathFactory) -> LoadedModels:
    return load_models(*trained_adapter(tmp_path_factory.mktemp("evaluate-reference")), device="cpu")


def test_reference_perplexity_is_lower_under_the_adapter_trained_on_it(tuned: LoadedModels) -> None:
    generation = generate_pairs(tuned, qa_samples(SHOP_QA), GenerationSettings(max_new_tokens=40))
    metrics = reference_metrics(generation.samples, tuned.model, tuned.tokenizer, batch_size=4)
    assert metrics.tuned["perplexity"] < metrics.base["perplexity"] / 10
    assert all(s.tuned_nll.mean_nll < s.base_nll.mean_nll for s in metrics.samples)  # type: ignore[union-attr]
    # It memorised the answers, so it scores far closer to the references than the base does.
    assert metrics.tuned["rouge_l"] > 0.8 and metrics.tuned["rouge_l"] > metrics.base["rouge_l"] + 0.5
    assert metrics.tuned["chrf"] > metrics.base["chrf"] and metrics.tuned["exact_match"] >= 4 / 6
    assert metrics.as_dict()["samples"][0]["base"]["language"] == "zh"


def test_reference_metrics_without_a_model() -> None:
    row = generated_sample(0, "多久到货？", "一般三到五天送达。", "不知道", "一般三到五天送达。", ["物流"])
    metrics = reference_metrics([row])
    assert metrics.tuned["exact_match"] == 1.0 and metrics.base["exact_match"] == 0.0
    assert "perplexity" not in metrics.tuned and metrics.samples[0].tuned_nll is None
