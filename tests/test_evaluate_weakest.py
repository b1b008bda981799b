"""The weakest samples: lowest score first with ties by index, k of them, grouped by their first (Chinese)
tag, a per-tag summary whose numbers are checked by hand, and a short Markdown message carrying it."""

import pytest

from engine.evaluate.judge import Judgement, JudgeResult, SampleJudgement
from engine.evaluate.results import GeneratedSample
from engine.evaluate.weakest import judge_scores, shorten, sub_scenario, weakest_samples
from engine.llm import Usage
from tests.evaluation_data import generated_sample


def sample(index: int, tags: list[str], question: str | None = None) -> GeneratedSample:
    question = question or f"问题{index}: 耳机坏了能退吗?"
    return generated_sample(
        index, question, f"参考{index}: 签收七天内可以无理由退货。", f"基座{index}", f"微调{index}", tags
    )


TAGS = {0: ["退货"], 1: ["退货", "物流"], 2: ["物流"], 3: ["物流"], 4: [], 5: ["退货"], 6: ["退货"], 7: ["退货"]}
SCORES = {0: 2.0, 1: 3.0, 2: 4.5, 3: 2.5, 4: 5.0, 5: 3.0, 6: None, 7: 3.5, 99: 1.0}
SAMPLES = [sample(i, tags) for i, tags in TAGS.items()]


def test_lowest_first_ties_by_index_and_k() -> None:
    report = weakest_samples(SAMPLES, SCORES, k=4)
    assert [w.index for w in report.weakest] == [0, 3, 1, 5]  # 1 and 5 tie on 3.0: index decides
    assert [w.score for w in report.weakest] == [2.0, 2.5, 3.0, 3.0]
    # the order the samples come in does not matter
    assert [w.index for w in weakest_samples(SAMPLES[::-1], SCORES, k=4).weakest] == [0, 3, 1, 5]
    assert len(weakest_samples(SAMPLES, SCORES).weakest) == 7  # k=10 default, 7 scored
    assert weakest_samples(SAMPLES, SCORES, k=0).weakest == []
    with pytest.raises(ValueError):
        weakest_samples(SAMPLES, SCORES, k=-1)


def test_a_weak_sample_carries_its_texts_score_and_reason() -> None:
    report = weakest_samples(SAMPLES, SCORES, reasons={0: "没有说明退货期限"}, k=2)
    first = report.weakest[0]
    assert (first.index, first.tag, first.score, first.reason) == (0, "退货", 2.0, "没有说明退货期限")
    assert first.question == "问题0: 耳机坏了能退吗?" and first.reference.startswith("参考0")
    assert (first.base_answer, first.tuned_answer, first.tags) == ("基座0", "微调0", ["退货"])
    assert report.weakest[1].reason is None


def test_unscored_samples_are_counted_not_ranked() -> None:
    report = weakest_samples(SAMPLES, {**SCORES, 2: float("nan")})
    assert report.unscored == [2, 6] and report.scored == 6
    assert 99 not in [w.index for w in report.weakest]  # a score for no sample is ignored


def test_grouped_by_first_tag_with_chinese_tags() -> None:
    assert (
        sub_scenario(["退货", "物流"]) == "退货"
        and sub_scenario([]) == "untagged"
        and sub_scenario([" "]) == "untagged"
    )
    report = weakest_samples(SAMPLES, SCORES, k=4)
    assert list(report.groups) == ["退货", "物流"]  # the tag of the lowest sample first
    assert [w.index for w in report.groups["退货"]] == [0, 1, 5]  # sample 1 is 退货 first, 物流 second
    assert [w.index for w in report.groups["物流"]] == [3]


def test_tag_summary_numbers() -> None:
    report = weakest_samples(SAMPLES, SCORES, k=4)
    # 退货: 2.0, 3.0, 3.0, 3.5 (6 unscored) -> mean 11.5 / 4 = 2.875, all 4 below 4.0
    # 物流: 4.5, 2.5 -> mean 3.5, 1 below; untagged: 5.0 -> mean 5.0, none below, not weak
    assert [t.tag for t in report.tags] == ["退货", "物流", "untagged"]
    returns, shipping, untagged = report.tags
    assert (returns.count, returns.mean, returns.below, returns.share_below, returns.weak) == (4, 2.875, 4, 1.0, True)
    assert (shipping.count, shipping.mean, shipping.below, shipping.share_below) == (2, 3.5, 1, 0.5)
    assert (untagged.count, untagged.mean, untagged.below, untagged.weak) == (1, 5.0, 0, False)
    assert report.summary == [
        "退货 questions: mean 2.9 over 4 samples, 4 below 4.0",
        "物流 questions: mean 3.5 over 2 samples, 1 below 4.0",
    ]
    assert untagged.line == "untagged questions: mean 5.0 over 1 sample, 0 below 4.0"
    # the summary covers every scored sample, not only the k shown
    assert weakest_samples(SAMPLES, SCORES, k=1).summary == report.summary


def test_threshold_and_metric_scale() -> None:
    scores = {0: 0.25, 1: 0.5, 2: 0.75}
    report = weakest_samples([sample(0, ["退货"]), sample(1, ["退货"]), sample(2, ["物流"])], scores, threshold=0.6)
    assert report.summary == ["退货 questions: mean 0.38 over 2 samples, 2 below 0.60"]


def test_shorten() -> None:
    assert shorten("  请提供\n订单号 ") == "请提供 订单号"
    assert shorten("退" * 200) == "退" * 119 + "…" and len(shorten("退" * 200)) == 120
    assert shorten(None) == ""


def test_nothing_weak_and_nothing_scored() -> None:
    nothing_weak = weakest_samples(SAMPLES, dict.fromkeys(TAGS, 4.5))
    assert nothing_weak.summary == [] and nothing_weak.tags  # scored, and no sub-scenario below the threshold
    empty = weakest_samples(SAMPLES, {})
    assert empty.weakest == [] and empty.tags == [] and empty.unscored == list(range(8)) and empty.scored == 0


def grade(overall: float | None, reason: str | None) -> Judgement:
    return Judgement(
        kind="grade",
        subject="tuned",
        model="m",
        prompt_version="v",
        valid=overall is not None,
        overall=overall,
        reason=reason,
    )


def test_judge_scores_take_valid_tuned_grades() -> None:
    judged = [
        SampleJudgement(index=i, question="q", reference="r", tags=[], base=grade(5.0, None), tuned=grade(s, r))
        for i, s, r in [(0, 2.0, "不完整"), (1, None, "garbled"), (2, 4.0, None)]
    ]
    result = JudgeResult(
        model="m", prompt_version="v", rubric={}, samples=judged, usage=Usage(), response_format="x", seconds=0
    )
    scores, reasons = judge_scores(result)
    assert scores == {0: 2.0, 2: 4.0} and reasons == {0: "不完整"}
