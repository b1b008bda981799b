"""What evaluation produces, as plain dataclasses free of torch and transformers: the cpu stages (judge, report),
the gate and the bots read these without loading the model stack, which only generate.py, reference.py's
perplexity, stability.py and forgetting.py need."""

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

SCORE_NAMES = ("rouge_l", "bleu", "chrf", "exact_match")


@dataclass(frozen=True)
class GenerationSettings:
    """How answers are generated. Greedy by default; `seed` makes sampling repeatable."""

    max_new_tokens: int = 256
    batch_size: int = 8
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0


@dataclass
class Answer:
    """One model's answer to one prompt."""

    text: str
    tokens: int  # generated tokens, the end-of-turn token included
    seconds: float  # this sample's share of its batch's wall time
    stopped: bool  # ended at the end-of-turn token (False: ran to max_new_tokens)


@dataclass
class GeneratedSample:
    """A test sample with the base and tuned answers; what the judge, the metrics and the report consume."""

    index: int  # position among the samples given to `generate_pairs`
    question: str  # the prompt as plain text (Sample.prompt_text)
    reference: str  # the sample's last assistant turn
    prompt: list[dict]  # the messages the models answered (everything before the last assistant turn)
    tags: list[str]
    base_answer: str
    tuned_answer: str
    base_tokens: int
    tuned_tokens: int
    base_seconds: float
    tuned_seconds: float
    base_stopped: bool
    tuned_stopped: bool
    tools: list[dict] | None = None  # the tool definitions the prompt offered (rendered with it, as in training)


@dataclass
class PassStats:
    """One model's generation pass over all prompts."""

    samples: int = 0
    tokens: int = 0
    seconds: float = 0.0
    stopped: int = 0

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0


@dataclass
class Generation:
    samples: list[GeneratedSample]
    settings: GenerationSettings
    base: PassStats = field(default_factory=PassStats)
    tuned: PassStats = field(default_factory=PassStats)


@dataclass
class ReferenceScores:
    """One answer against its reference."""

    language: str  # the reference's: "zh" or "en"
    rouge_l: float  # 0–1
    bleu: float  # 0–100
    chrf: float  # 0–100
    exact_match: float  # 1.0 or 0.0


@dataclass
class AnswerNLL:
    """A reference answer's negative log-likelihood under a model."""

    nll: float  # summed over the answer's tokens
    tokens: int

    @property
    def mean_nll(self) -> float:
        return self.nll / self.tokens if self.tokens else math.nan

    @property
    def perplexity(self) -> float:
        return math.exp(self.mean_nll) if self.tokens else math.nan


@dataclass
class SampleMetrics:
    index: int
    base: ReferenceScores
    tuned: ReferenceScores
    base_nll: AnswerNLL | None = None
    tuned_nll: AnswerNLL | None = None


@dataclass
class ReferenceMetrics:
    samples: list[SampleMetrics]
    base: dict[str, float] = field(default_factory=dict)  # mean scores, plus perplexities when computed
    tuned: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)


def mean_scores(scores: Sequence[ReferenceScores]) -> dict[str, float]:
    """The mean of each score over samples (an empty dict for no samples)."""
    if not scores:
        return {}
    return {name: sum(getattr(s, name) for s in scores) / len(scores) for name in SCORE_NAMES}


def corpus_perplexity(nlls: Sequence[AnswerNLL]) -> float:
    """exp of the mean NLL over every answer token of every sample."""
    total = sum(n.tokens for n in nlls)
    return math.exp(sum(n.nll for n in nlls) / total) if total else math.nan


def summarize_metrics(samples: Sequence[SampleMetrics]) -> ReferenceMetrics:
    """`samples` with the base and tuned means over them, and the perplexities when every sample has its NLLs.
    Torch-free, so the report stage can sum up a part of the samples (those a run did not train on)."""
    metrics = ReferenceMetrics(
        list(samples), mean_scores([s.base for s in samples]), mean_scores([s.tuned for s in samples])
    )
    for summary, nlls in (
        (metrics.base, [s.base_nll for s in samples]),
        (metrics.tuned, [s.tuned_nll for s in samples]),
    ):
        if nlls and all(n is not None for n in nlls):
            summary["perplexity"] = corpus_perplexity(nlls)  # type: ignore[arg-type]
            summary["mean_nll"] = sum(n.mean_nll for n in nlls) / len(nlls)  # type: ignore[union-attr]
    return metrics


@dataclass
class PromptStability:
    """The k sampled answers to one prompt and how much they agree."""

    index: int  # position among the prompts given to `stability`
    question: str  # the prompt's last message
    answers: list[str]
    agreement: float  # mean pairwise ROUGE-L F1, 0–1
    exact_share: float  # share of answer pairs equal after normalisation, 0–1
    distinct: int  # different answers after normalisation


@dataclass
class StabilityReport:
    prompts: list[PromptStability]  # in the order of their index
    settings: GenerationSettings
    k: int
    seed: int
    mean_agreement: float = 1.0
    mean_exact_share: float = 1.0
    least_stable: list[PromptStability] = field(default_factory=list)  # lowest agreement first
    tokens: int = 0  # generated over all draws
    seconds: float = 0.0

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class ProbeResult:
    id: str
    language: str
    question: str
    accepted: list[str]
    base_answer: str
    tuned_answer: str
    base_pass: bool
    tuned_pass: bool


@dataclass
class ForgettingReport:
    probes: list[ProbeResult]
    base_score: float  # share of probes the base model passed, 0–1
    tuned_score: float
    drop: float | None  # gate.forgetting_drop(base_score, tuned_score); None when the base passed none
    by_language: dict[str, tuple[float, float]]  # "zh" / "en" -> (base_score, tuned_score)
    lost: list[ProbeResult]  # passed by the base, failed by the tuned model
    gained: list[ProbeResult]  # failed by the base, passed by the tuned model
    note: str  # one plain sentence

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
