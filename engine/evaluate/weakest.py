"""The weakest samples: where the tuned model does worst, and in which sub-scenario.

The seed's loop is "no → analyse low-score samples → add training data → retrain". `weakest_samples`
takes the generated samples and a score per sample (index -> overall score: the LLM judge's tuned grade
from `judge_scores`, or a metric judge's score) and gives

- the k lowest-scoring samples, lowest first, ties broken by index (question, reference, both answers,
  score, the judge's reason, tags), also grouped by sub-scenario tag;
- a summary per tag over every scored sample: count, mean, how many and what share fall below the
  threshold (default the gate's 4.0), weakest mean first, and a plain line for each weak tag (mean below
  the threshold), as the issue puts it: "退货 questions: mean 2.8 over 12 samples".

A sample's sub-scenario is its first tag, "untagged" when it has none. A sample without a score (its
judgement was invalid) is not ranked; the report counts it. Scores for indices not among the samples are
ignored. The chat faces render them as review cards (bot/core/render.py).
"""

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from statistics import fmean
from typing import Any

from engine.evaluate.judge import JudgeResult
from engine.evaluate.results import GeneratedSample

UNTAGGED = "untagged"
DEFAULT_THRESHOLD = 4.0  # the gate's default overall score
SNIPPET_CHARS = 120


@dataclass
class WeakSample:
    index: int
    tag: str  # the sub-scenario: first tag, or "untagged"
    score: float
    question: str
    reference: str
    base_answer: str
    tuned_answer: str
    reason: str | None
    tags: list[str]


@dataclass
class TagSummary:
    tag: str
    count: int  # scored samples with this tag
    mean: float
    below: int  # of them, scored below the threshold
    share_below: float
    weak: bool  # mean below the threshold
    line: str  # "退货 questions: mean 2.8 over 12 samples, 9 below 4.0"


@dataclass
class WeakestReport:
    k: int
    threshold: float
    scored: int  # samples with a score
    unscored: list[int]  # indices of samples without one, ascending
    weakest: list[WeakSample]  # the k lowest, lowest first, ties by index
    groups: dict[str, list[WeakSample]]  # the weakest by tag; tags in the order of their lowest sample
    tags: list[TagSummary]  # every tag, weakest mean first (then more samples, then name)
    summary: list[str] = field(default_factory=list)  # the line of each weak tag, weakest first

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def sub_scenario(tags: Sequence[str]) -> str:
    first = tags[0].strip() if tags else ""
    return first or UNTAGGED


def judge_scores(result: JudgeResult) -> tuple[dict[int, float], dict[int, str]]:
    """Scores and reasons from the LLM judge: each sample's tuned grade, when valid."""
    scores = {s.index: s.overall for s in result.samples if s.overall is not None}
    reasons = {s.index: s.reason for s in result.samples if s.index in scores and s.reason}
    return scores, reasons


def _num(value: float) -> str:
    """One decimal on the judge's scale; two for a metric's 0-1 scores."""
    return f"{value:.2f}" if 0 < abs(value) < 1 else f"{value:.1f}"


def _line(tag: str, count: int, mean: float, below: int, threshold: float) -> str:
    noun = "sample" if count == 1 else "samples"
    return f"{tag} questions: mean {_num(mean)} over {count} {noun}, {below} below {_num(threshold)}"


def weakest_samples(
    samples: Sequence[GeneratedSample],
    scores: Mapping[int, float | None],
    reasons: Mapping[int, str | None] | None = None,
    k: int = 10,
    threshold: float = DEFAULT_THRESHOLD,
) -> WeakestReport:
    if k < 0:
        raise ValueError(f"k must be 0 or more, not {k}")
    reasons = reasons or {}
    ranked: list[WeakSample] = []
    unscored: list[int] = []
    for s in samples:
        score = scores.get(s.index)
        if score is None or not math.isfinite(score):
            unscored.append(s.index)
            continue
        ranked.append(
            WeakSample(
                index=s.index,
                tag=sub_scenario(s.tags),
                score=float(score),
                question=s.question,
                reference=s.reference,
                base_answer=s.base_answer,
                tuned_answer=s.tuned_answer,
                reason=reasons.get(s.index),
                tags=list(s.tags),
            )
        )
    ranked.sort(key=lambda w: (w.score, w.index))
    weakest = ranked[:k]

    groups: dict[str, list[WeakSample]] = {}
    for w in weakest:
        groups.setdefault(w.tag, []).append(w)

    by_tag: dict[str, list[float]] = {}
    for w in ranked:
        by_tag.setdefault(w.tag, []).append(w.score)
    tags = []
    for tag, values in by_tag.items():
        mean = fmean(values)
        below = sum(v < threshold for v in values)
        tags.append(
            TagSummary(
                tag=tag,
                count=len(values),
                mean=mean,
                below=below,
                share_below=below / len(values),
                weak=mean < threshold,
                line=_line(tag, len(values), mean, below, threshold),
            )
        )
    tags.sort(key=lambda t: (t.mean, -t.count, t.tag))

    return WeakestReport(
        k=k,
        threshold=threshold,
        scored=len(ranked),
        unscored=sorted(unscored),
        weakest=weakest,
        groups=groups,
        tags=tags,
        summary=[t.line for t in tags if t.weak],
    )


def shorten(text: str | None, limit: int = SNIPPET_CHARS) -> str:
    """One line of at most `limit` characters; backticks (code markup in every front end) become quotes."""
    flat = " ".join((text or "").split()).replace("`", "'")
    return flat if len(flat) <= limit else flat[: limit - 1].rstrip() + "…"
