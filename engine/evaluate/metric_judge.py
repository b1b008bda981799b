"""The metric judge: what scores an evaluation when no LLM judge endpoint is configured.

It grades each base and tuned answer from its reference metrics (engine.evaluate.reference) and returns
the LLM judge's own `JudgeResult`, so the gate, the weakest samples and the report read it unchanged.
Every metric is mapped linearly onto the judge's 1–5 scale, 0 → 1 and the metric's best → 5:

    rouge_l   1 + 4 · ROUGE-L F1                   (0–1)
    chrf      1 + 4 · chrF / 100                   (0–100)
    bleu      1 + 4 · BLEU / 100                   (0–100)
    overall   1 + 4 · mean(ROUGE-L F1, chrF / 100); 5.0 for an exact match

Why these two in the overall score: ROUGE-L counts every Han character as a token and chrF compares
character n-grams, so both score Chinese without spaces as well as English. Sentence BLEU on short answers
swings with one word (a missing 4-gram sends it towards 0), so it is shown as a dimension but left out of
the overall score.

Every grade is valid and there are no pairwise comparisons (`pairs` 0): the gate, told
`judge_kind="metric"`, reports the win rate as not measured (blocking unless the project waives it) and
invalid judgements as not applicable.
"""

import time
from collections.abc import Sequence
from statistics import fmean

from engine.evaluate.judge import Judgement, JudgeResult, SampleJudgement, aggregate
from engine.evaluate.judge_prompts import SCORE_MAX, SCORE_MIN
from engine.evaluate.results import GeneratedSample, ReferenceMetrics, ReferenceScores
from engine.llm import Usage

METRIC_MODEL = "reference-metrics"
METRIC_VERSION = "metric-v1"
METRIC_JUDGE_TITLE = "Metric judge (no LLM judge configured): scores are reference metrics mapped to 1–5"
METRIC_RUBRIC: dict[str, str] = {
    "rouge_l": "ROUGE-L F1 against the reference (Han characters and words as tokens), mapped to 1–5",
    "chrf": "chrF against the reference (character n-grams), mapped to 1–5",
    "bleu": "sentence BLEU against the reference, mapped to 1–5; shown, not part of the overall score",
}


def to_scale(share: float) -> float:
    """A 0–1 metric on the judge's 1–5 scale."""
    return SCORE_MIN + (SCORE_MAX - SCORE_MIN) * min(max(share, 0.0), 1.0)


def metric_grade(scores: ReferenceScores, subject: str) -> Judgement:
    """One answer's grade from its reference scores."""
    exact = scores.exact_match == 1.0
    overall = float(SCORE_MAX) if exact else to_scale(fmean([scores.rouge_l, scores.chrf / 100]))
    reason = (
        "Same as the reference (exact match)."
        if exact
        else f"ROUGE-L {scores.rouge_l:.2f}, chrF {scores.chrf:.1f} against the reference."
    )
    return Judgement(
        kind="grade",
        subject=subject,
        model=METRIC_MODEL,
        prompt_version=METRIC_VERSION,
        valid=True,
        response_format="metric",
        reason=reason,
        scores={
            "rouge_l": to_scale(scores.rouge_l),
            "chrf": to_scale(scores.chrf / 100),
            "bleu": to_scale(scores.bleu / 100),
        },
        overall=overall,
    )


def metric_judge(samples: Sequence[GeneratedSample], metrics: ReferenceMetrics) -> JudgeResult:
    """Grades of every sample's base and tuned answers from `metrics` (`reference_metrics(samples)`)."""
    started = time.monotonic()
    by_index = {m.index: m for m in metrics.samples}
    missing = [s.index for s in samples if s.index not in by_index]
    if missing:
        raise ValueError(f"no reference metrics for samples {missing}")
    judged = [
        SampleJudgement(
            index=s.index,
            question=s.question,
            reference=s.reference,
            tags=list(s.tags),
            base=metric_grade(by_index[s.index].base, "base"),
            tuned=metric_grade(by_index[s.index].tuned, "tuned"),
        )
        for s in samples
    ]
    result = JudgeResult(
        model=METRIC_MODEL,
        prompt_version=METRIC_VERSION,
        rubric=dict(METRIC_RUBRIC),
        samples=judged,
        usage=Usage(),
        response_format="metric",
        seconds=time.monotonic() - started,
    )
    return aggregate(result)
