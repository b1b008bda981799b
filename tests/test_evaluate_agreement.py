"""Judge agreement with reviewers: keep means acceptable, fix or drop not; the judge accepts at the gate's
threshold; the latest review of a judgement counts; the summary line reads as a person would say it."""

import pytest

from engine.evaluate.agreement import ReviewedJudgement, judge_agreement


def review(judgement_id: int | None, overall: float | None, verdict: str, reviewer: str = "lin") -> ReviewedJudgement:
    return ReviewedJudgement(judgement_id, f"问题{judgement_id}: 可以退货吗？", overall, verdict, reviewer)


def test_agreement_counts_kind_and_harsh_misses() -> None:
    reviews = [
        review(1, 4.5, "keep"),  # agree
        review(2, 4.0, "drop"),  # too kind: 4.0 is at the threshold
        review(3, 2.0, "fix"),  # agree
        review(4, 3.9, "keep"),  # too harsh
        review(5, 5.0, "fix"),  # too kind
        review(6, 1.0, "drop"),  # agree
        review(7, 4.2, "keep"),  # agree
        review(8, 3.0, "drop"),  # agree
        review(9, 4.8, "keep"),  # agree
    ]
    result = judge_agreement(reviews)
    assert (result.reviewed, result.agreed, result.judge_too_kind, result.judge_too_harsh) == (9, 6, 2, 1)
    assert result.rate == pytest.approx(6 / 9) and result.threshold == 4.0
    assert [r.judgement_id for r in result.disagreements] == [2, 4, 5]
    assert result.line == (
        "The judge agreed with reviewers on 6 of 9 reviewed samples (67%); it was too kind on 2 and too harsh on 1."
    )
    assert result.to_dict()["disagreements"][0]["question"] == "问题2: 可以退货吗？"


def test_only_kind_misses_and_a_custom_threshold() -> None:
    result = judge_agreement([review(1, 3.6, "fix"), review(2, 3.0, "drop"), review(3, 4.0, "keep")], threshold=3.5)
    assert result.line == "The judge agreed with reviewers on 2 of 3 reviewed samples (67%); it was too kind on 1."
    assert judge_agreement([review(1, 3.6, "fix")]).line == (
        "The judge agreed with reviewers on 1 of 1 reviewed sample (100%)."
    )


def test_the_latest_review_of_a_judgement_counts() -> None:
    reviews = [review(1, 4.5, "drop", "lin"), review(2, 2.0, "fix"), review(1, 4.5, "keep", "wang")]
    result = judge_agreement(reviews)
    assert (result.reviewed, result.agreed, result.disagreements) == (2, 2, [])
    flipped = judge_agreement([*reviews, review(1, 4.5, "fix", "zhao")])
    assert [r.reviewer for r in flipped.disagreements] == ["zhao"] and flipped.judge_too_kind == 1


def test_reviews_without_a_judgement_id_each_count() -> None:
    result = judge_agreement([review(None, 4.5, "keep"), review(None, 4.5, "drop")])
    assert (result.reviewed, result.agreed, result.judge_too_kind) == (2, 1, 1)


def test_invalid_judgements_and_no_reviews_are_not_counted() -> None:
    result = judge_agreement([review(1, None, "keep"), review(2, None, "drop")])
    assert (result.reviewed, result.rate) == (0, None)
    assert result.line == "No judged samples have been reviewed yet."
    assert judge_agreement([]).line == "No judged samples have been reviewed yet."


def test_an_unknown_verdict_is_refused() -> None:
    with pytest.raises(ValueError, match="'maybe'"):
        judge_agreement([review(1, 4.0, "maybe")])
