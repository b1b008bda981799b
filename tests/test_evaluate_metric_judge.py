"""The metric judge: reference metrics mapped onto the judge's 1–5 scale, in the LLM judge's result type, so
the gate and the weakest samples read it unchanged; Chinese answers are scored on characters."""

import pytest

from engine.evaluate.gate import GateInputs, decide
from engine.evaluate.metric_judge import METRIC_JUDGE_TITLE, METRIC_VERSION, metric_judge
from engine.evaluate.reference import reference_metrics
from engine.evaluate.weakest import judge_scores, weakest_samples
from tests.evaluation_data import generated_sample

ZH_REFERENCE = "签收后七天内可以无理由退货，运费由买家承担。"
EN_REFERENCE = "You can return it within seven days of delivery."

SAMPLES = [
    # 0: tuned repeats the reference exactly; base says something unrelated
    generated_sample(0, "可以退货吗？", ZH_REFERENCE, "请联系客服处理。", ZH_REFERENCE, ["退货"]),
    # 1: tuned says nearly the same in Chinese, without a single space
    generated_sample(1, "怎么退货？", ZH_REFERENCE, "", "签收七天内可以无理由退货，运费买家承担。", ["退货"]),
    # 2: English, tuned unrelated
    generated_sample(2, "Can I return it?", EN_REFERENCE, EN_REFERENCE, "The weather is sunny today.", ["returns"]),
]


def judged():
    return metric_judge(SAMPLES, reference_metrics(SAMPLES))


def test_identical_answer_scores_five_and_unrelated_near_one() -> None:
    result = judged()
    first, english = result.samples[0], result.samples[2]
    assert first.tuned.overall == 5.0 and first.tuned.scores == {"rouge_l": 5.0, "chrf": 5.0, "bleu": 5.0}
    assert english.base.overall == 5.0
    assert first.base.overall < 1.5 and english.tuned.overall < 1.5
    assert result.samples[1].base.overall == 1.0  # an empty answer
    assert all(
        1.0 <= s <= 5.0 for sample in result.samples for j in (sample.base, sample.tuned) for s in j.scores.values()
    )


def test_chinese_is_scored_on_characters() -> None:
    close = judged().samples[1].tuned
    assert close.overall > 4.0 and close.scores["rouge_l"] > 4.5
    assert close.reason.startswith("ROUGE-L 0.95, chrF 69.3") and close.reason.endswith("against the reference.")


def test_result_has_the_llm_judges_shape_and_aggregates() -> None:
    result = judged()
    assert (result.model, result.prompt_version) == ("reference-metrics", METRIC_VERSION)
    assert list(result.rubric) == ["rouge_l", "chrf", "bleu"]
    assert result.graded == {"base": 3, "tuned": 3} and result.invalid == 0 and result.pairs == 0
    tuned_overalls = [s.tuned.overall for s in result.samples]
    assert result.overall_mean == pytest.approx(sum(tuned_overalls) / 3)
    assert result.win_rate is None
    assert all(j.kind == "grade" and j.valid for s in result.samples for j in s.judgements())
    assert result.summary()["judge_model"] == "reference-metrics"
    assert "Metric judge" in METRIC_JUDGE_TITLE and "1–5" in METRIC_JUDGE_TITLE


def test_feeds_the_gate_and_the_weakest_samples() -> None:
    result = judged()
    decision = decide(GateInputs.from_judge(result, judge_kind="metric"))
    assert decision.check("win_rate").status == "not_measured"  # blocks the gate unless the project waives it
    assert decision.check("invalid_rate").status == "not_applicable"
    assert decision.check("overall").status == "failed"  # mean of 5.0, ~4.3 and ~1.2 is below 4.0

    scores, reasons = judge_scores(result)
    assert scores == {s.index: s.tuned.overall for s in result.samples}
    report = weakest_samples(SAMPLES, scores, reasons, k=1)
    assert report.weakest[0].index == 2 and report.weakest[0].reason.startswith("ROUGE-L 0.00")


def test_samples_without_metrics_are_refused() -> None:
    with pytest.raises(ValueError, match=r"\[2\]"):
        metric_judge(SAMPLES, reference_metrics(SAMPLES[:2]))
