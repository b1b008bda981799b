"""How far to trust the judge: its scores against the verdicts of the people who reviewed them.

A review's verdict says whether a person found the tuned answer acceptable: keep = acceptable, fix or drop =
not. The judge accepted a sample when its overall score is at least the threshold (the gate's minimum
overall score, 4.0 by default). They agree when both accept or both reject; otherwise the judge was too
kind (accepted what the person rejected) or too harsh (rejected what the person kept).

Only reviews of a judgement with a valid score count. When one judgement was reviewed several times, the
latest review counts: reviews are given oldest first. A review without a judgement id stands alone.
"""

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from engine.evaluate.weakest import DEFAULT_THRESHOLD

ACCEPTING = {"keep": True, "fix": False, "drop": False}


@dataclass
class ReviewedJudgement:
    judgement_id: int | None
    question: str
    overall: float | None  # the judge's overall score of the tuned answer; None when the judgement was invalid
    verdict: str  # keep | fix | drop
    reviewer: str


@dataclass
class JudgeAgreement:
    reviewed: int  # reviews of a judgement with a valid score (the latest per judgement)
    agreed: int
    rate: float | None  # agreed / reviewed; None when nothing was reviewed
    threshold: float
    judge_too_kind: int  # judge at or above the threshold, the person said fix or drop
    judge_too_harsh: int  # judge below the threshold, the person said keep
    disagreements: list[ReviewedJudgement]  # in the order of their reviews
    line: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _line(reviewed: int, agreed: int, too_kind: int, too_harsh: int) -> str:
    if not reviewed:
        return "No judged samples have been reviewed yet."
    noun = "sample" if reviewed == 1 else "samples"
    line = f"The judge agreed with reviewers on {agreed} of {reviewed} reviewed {noun} ({agreed / reviewed:.0%})"
    misses = [f"too {how} on {count}" for how, count in (("kind", too_kind), ("harsh", too_harsh)) if count]
    return f"{line}; it was {' and '.join(misses)}." if misses else f"{line}."


def judge_agreement(reviews: Sequence[ReviewedJudgement], threshold: float = DEFAULT_THRESHOLD) -> JudgeAgreement:
    """Agreement of the judge with the reviewers, over `reviews` given oldest first."""
    latest: dict[int | tuple[str, int], ReviewedJudgement] = {}
    for position, review in enumerate(reviews):
        if review.verdict not in ACCEPTING:
            raise ValueError(f"unknown review verdict {review.verdict!r}: expected keep, fix or drop")
        key = review.judgement_id if review.judgement_id is not None else ("unlinked", position)
        latest.pop(key, None)  # re-inserted: the order is that of the latest reviews
        latest[key] = review
    counted = [r for r in latest.values() if r.overall is not None]
    disagreements = [r for r in counted if (r.overall >= threshold) != ACCEPTING[r.verdict]]
    too_kind = sum(r.overall >= threshold for r in disagreements)
    too_harsh = len(disagreements) - too_kind
    agreed = len(counted) - len(disagreements)
    return JudgeAgreement(
        reviewed=len(counted),
        agreed=agreed,
        rate=agreed / len(counted) if counted else None,
        threshold=threshold,
        judge_too_kind=too_kind,
        judge_too_harsh=too_harsh,
        disagreements=disagreements,
        line=_line(len(counted), agreed, too_kind, too_harsh),
    )
