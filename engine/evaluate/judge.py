"""The LLM judge: base and tuned answers graded and compared by a model behind any OpenAI-compatible
endpoint.

    grading    each answer (base and tuned) graded alone against the reference on the rubric's
               dimensions, 1-5 each plus an overall score and a reason; strict JSON schema, falling
               back to json_object, then to JSON found in prose (engine.llm); temperature 0
    pairwise   base vs tuned judged twice, once in each order; the tuned answer wins (or loses) only
               when both orders agree, anything else is a tie; position consistency is the share of
               pairs whose two orders agree (a judge that always picks the first answer has none)
    validity   a reply that does not parse, lacks a score, has one outside 1-5, or is a refusal is a
               judgement marked invalid with its raw reply, never a score; a request that failed
               after its retries is invalid too; the invalid rate is reported
    requests   at most `concurrency` in flight; retries, tokens and cost through engine.llm.ChatCaller;
               the judge model and PROMPT_VERSION on every judgement

Storage is not this module's: the evaluation stage (a later slice) writes an `Evaluation` row from
`JudgeResult.summary()` and one `Judgement` row per `SampleJudgement` (storage/models.py: scores,
overall, reason, raw_reply from the tuned grade; `pairwise` = `SampleJudgement.pairwise`; valid;
judge_model; prompt_version; tags).
"""

import asyncio
import random
import time
from collections import Counter
from collections.abc import Collection, Sequence
from dataclasses import asdict, dataclass, field, replace
from statistics import fmean
from typing import TYPE_CHECKING, Any

from engine import llm
from engine.data.synth_replies import extract_json
from engine.evaluate.judge_prompts import (
    DEFAULT_RUBRIC,
    GRADE_SCHEMA_NAME,
    PAIR_SCHEMA,
    PAIR_SCHEMA_NAME,
    PROMPT_VERSION,
    SCORE_MAX,
    SCORE_MIN,
    Rubric,
    grade_messages,
    grade_schema,
    pair_messages,
)
from engine.evaluate.results import GeneratedSample
from engine.events import EventSink, ignore_events, progress_event
from engine.llm import Budget, BudgetReached, ChatCaller, EndpointRefused, Reply, RequestFailed, RetryPolicy, Usage
from engine.settings import Settings, get_settings

if TYPE_CHECKING:  # openai loads with the first client (engine.llm.make_client)
    from openai import AsyncOpenAI

STAGE = "evaluate"
ANSWERS = ("base", "tuned")
ORDERS = ("base_first", "tuned_first")  # which answer is shown as A


class JudgeError(Exception):
    """Judging cannot start or go on: no endpoint, a rejected key or model, a bad rubric."""


@dataclass
class Judgement:
    """One request to the judge and what came of it: a grade of one answer, or one order of a
    pairwise comparison."""

    kind: str  # "grade" | "pairwise"
    subject: str  # grade: "base" | "tuned"; pairwise: "base_first" | "tuned_first"
    model: str
    prompt_version: str
    valid: bool = False
    # not_json, not_object, missing_score, not_a_number, out_of_range, bad_winner, refusal,
    # request_failed (after its retries), budget (not sent)
    invalid_reason: str | None = None
    raw_reply: str | None = None  # the reply's text (a refusal's text), kept valid or not
    response_format: str | None = None  # the mode it was asked in
    reason: str | None = None
    scores: dict[str, float] | None = None  # grade: per dimension
    overall: float | None = None  # grade
    winner: str | None = None  # pairwise, as shown: "A" | "B" | "tie"
    preferred: str | None = None  # pairwise, resolved: "base" | "tuned" | "tie"
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float | None = None
    attempts: int = 0
    error: str | None = None  # why the request failed


@dataclass
class SampleJudgement:
    index: int  # GeneratedSample.index
    question: str
    reference: str
    tags: list[str]
    base: Judgement  # grade of the base answer
    tuned: Judgement  # grade of the tuned answer
    pair: tuple[Judgement, Judgement] | None = None  # (base shown first, tuned shown first)

    @property
    def pairwise(self) -> str | None:
        """ "tuned" or "base" when both orders prefer it, "tie" otherwise; None when not compared or
        when an order is invalid."""
        if self.pair is None or not all(j.valid for j in self.pair):
            return None
        first, second = (j.preferred for j in self.pair)
        return first if first == second and first != "tie" else "tie"

    @property
    def position_consistent(self) -> bool | None:
        """Both orders gave the same verdict (ties included); None when it cannot be told."""
        if self.pair is None or not all(j.valid for j in self.pair):
            return None
        return self.pair[0].preferred == self.pair[1].preferred

    @property
    def overall(self) -> float | None:
        """The tuned answer's overall score: what ranks the weakest samples."""
        return self.tuned.overall if self.tuned.valid else None

    @property
    def reason(self) -> str | None:
        return self.tuned.reason

    @property
    def valid(self) -> bool:
        return all(j.valid for j in self.judgements())

    @property
    def raw_replies(self) -> dict[str, str | None]:
        return {f"{j.kind}:{j.subject}": j.raw_reply for j in self.judgements()}

    def judgements(self) -> list[Judgement]:
        return [self.base, self.tuned, *(self.pair or ())]


@dataclass
class JudgeResult:
    model: str
    prompt_version: str
    rubric: dict[str, str]
    samples: list[SampleJudgement]
    usage: Usage
    response_format: str  # the mode the server ended up accepting
    seconds: float
    # Aggregates (from `aggregate`): means over valid grades, rates over valid pairs.
    means: dict[str, dict[str, float | None]] = field(default_factory=dict)  # base|tuned -> dim|overall -> mean
    graded: dict[str, int] = field(default_factory=dict)  # base|tuned -> valid grades
    pairs: int = 0  # valid pairs (both orders valid)
    wins: int = 0
    losses: int = 0
    ties: int = 0
    position_consistent: int = 0
    judgements: int = 0
    invalid: int = 0
    invalid_reasons: dict[str, int] = field(default_factory=dict)

    @property
    def overall_mean(self) -> float | None:
        """The tuned model's mean overall score: what the gate compares with its threshold."""
        return self.means.get("tuned", {}).get("overall")

    @property
    def win_rate(self) -> float | None:
        return self.wins / self.pairs if self.pairs else None

    @property
    def loss_rate(self) -> float | None:
        return self.losses / self.pairs if self.pairs else None

    @property
    def tie_rate(self) -> float | None:
        return self.ties / self.pairs if self.pairs else None

    @property
    def position_consistency(self) -> float | None:
        return self.position_consistent / self.pairs if self.pairs else None

    @property
    def invalid_rate(self) -> float:
        return self.invalid / self.judgements if self.judgements else 0.0

    @property
    def cost_usd(self) -> float | None:
        return self.usage.cost_usd if self.usage.priced else None

    def summary(self) -> dict[str, Any]:
        """The aggregates as JSON (for `Evaluation.scores` and the report)."""

        def r(value: float | None) -> float | None:
            return round(value, 4) if value is not None else None

        return {
            "judge_model": self.model,
            "prompt_version": self.prompt_version,
            "rubric": list(self.rubric),
            "response_format": self.response_format,
            "samples": len(self.samples),
            "means": {k: {d: r(v) for d, v in m.items()} for k, m in self.means.items()},
            "graded": dict(self.graded),
            "overall_mean": r(self.overall_mean),
            "pairwise": {
                "pairs": self.pairs,
                "wins": self.wins,
                "losses": self.losses,
                "ties": self.ties,
                "win_rate": r(self.win_rate),
                "loss_rate": r(self.loss_rate),
                "tie_rate": r(self.tie_rate),
                "position_consistency": r(self.position_consistency),
            },
            "judgements": self.judgements,
            "invalid": self.invalid,
            "invalid_rate": r(self.invalid_rate),
            "invalid_reasons": dict(self.invalid_reasons),
            "requests": self.usage.requests,
            "retries": self.usage.retries,
            "tokens": {
                "prompt": self.usage.prompt_tokens,
                "completion": self.usage.completion_tokens,
                "total": self.usage.tokens,
            },
            "cost_usd": round(self.usage.cost_usd, 6) if self.usage.priced else None,
            "seconds": round(self.seconds, 2),
        }

    def to_dict(self) -> dict[str, Any]:
        """Everything, per-sample judgements and raw replies included."""
        return self.summary() | {
            "per_sample": [
                asdict(s) | {"pairwise": s.pairwise, "position_consistent": s.position_consistent} for s in self.samples
            ]
        }


# --- the engine function -----------------------------------------------------------------------


async def judge_samples(
    samples: Sequence[GeneratedSample],
    *,
    client: "AsyncOpenAI | None" = None,
    model: str | None = None,
    rubric: Rubric | None = None,
    concurrency: int | None = None,
    pairwise: bool = True,
    policy: RetryPolicy | None = None,
    budget: Budget | None = None,
    settings: Settings | None = None,
    seed: int = 0,
    events: EventSink = ignore_events,
    project: str = "",
) -> JudgeResult:
    """Grade every sample's base and tuned answers and (unless `pairwise` is off) compare them in both
    orders. `client` defaults to the judge endpoint from the settings (`make_judge_client`);
    `model`, `concurrency` and `policy` default to judge_model, judge_concurrency and the synth_*
    retry settings. Raises JudgeError when the endpoint refuses the key or the model."""
    settings = settings or get_settings()
    rubric = dict(rubric if rubric is not None else DEFAULT_RUBRIC)
    check_rubric(rubric)
    concurrency = concurrency or settings.judge_concurrency
    if concurrency < 1:
        raise JudgeError("concurrency must be at least 1")
    own_client = client is None
    client = (client or make_judge_client(settings)).with_options(max_retries=0)  # retries are ours
    chat = ChatCaller(
        client,
        model or settings.judge_model,
        policy or RetryPolicy.from_settings(settings),
        prices=settings.synth_prices,
        temperature=0.0,
        budget=budget or Budget(),
        rng=random.Random(seed),
    )
    gate = asyncio.Semaphore(concurrency)
    total = len(samples) * (4 if pairwise else 2)
    done = 0
    started = time.monotonic()
    events(progress_event(project, STAGE, 0, total, unit="judgements"))

    async def ask(judgement: Judgement, messages: list[dict[str, str]], fmt: llm.ResponseFormat) -> Judgement:
        nonlocal done
        async with gate:
            try:
                reply = await chat.complete(messages, fmt)
            except RequestFailed as failure:
                judgement.invalid_reason, judgement.error = "request_failed", str(failure)
                judgement.attempts = failure.attempts
                reply = None
            except BudgetReached as stop:
                judgement.invalid_reason, judgement.error = "budget", str(stop)
                reply = None
        if reply is not None:
            _read(judgement, reply, rubric)
        done += 1
        events(progress_event(project, STAGE, done, total, unit="judgements", cost_usd=round(chat.usage.cost_usd, 6)))
        return judgement

    grade_format = grade_schema(rubric)

    def grade_fmt(mode: str) -> dict[str, Any] | None:
        return llm.schema_format(mode, GRADE_SCHEMA_NAME, grade_format)

    def pair_fmt(mode: str) -> dict[str, Any] | None:
        return llm.schema_format(mode, PAIR_SCHEMA_NAME, PAIR_SCHEMA)

    results: list[SampleJudgement] = []
    try:
        async with asyncio.TaskGroup() as group:
            for sample in samples:
                answers = {"base": sample.base_answer, "tuned": sample.tuned_answer}
                item = SampleJudgement(
                    sample.index,
                    sample.question,
                    sample.reference,
                    list(sample.tags),
                    base=Judgement("grade", "base", chat.model, PROMPT_VERSION),
                    tuned=Judgement("grade", "tuned", chat.model, PROMPT_VERSION),
                )
                for name in ANSWERS:
                    messages = grade_messages(sample.question, sample.reference, answers[name], rubric, sample.tools)
                    group.create_task(ask(getattr(item, name), messages, grade_fmt))
                if pairwise:
                    item.pair = (
                        Judgement("pairwise", "base_first", chat.model, PROMPT_VERSION),
                        Judgement("pairwise", "tuned_first", chat.model, PROMPT_VERSION),
                    )
                    for judgement, (a, b) in zip(item.pair, (ANSWERS, ANSWERS[::-1]), strict=True):
                        messages = pair_messages(
                            sample.question, sample.reference, answers[a], answers[b], sample.tools
                        )
                        group.create_task(ask(judgement, messages, pair_fmt))
                results.append(item)
    except* EndpointRefused as refused:
        first = refused.exceptions[0]
        assert isinstance(first, EndpointRefused)
        raise JudgeError(first.advice("judge", "TUNELOOP_JUDGE_API_KEY")) from None
    finally:
        if own_client:
            await client.close()
    result = JudgeResult(
        model=chat.model,
        prompt_version=PROMPT_VERSION,
        rubric=rubric,
        samples=results,
        usage=chat.usage,
        response_format=chat.mode,
        seconds=time.monotonic() - started,
    )
    return aggregate(result)


def judge_samples_blocking(samples: Sequence[GeneratedSample], **kwargs: Any) -> JudgeResult:
    """`judge_samples` for callers without an event loop (the terminal, a run stage)."""
    return asyncio.run(judge_samples(samples, **kwargs))


def make_judge_client(settings: Settings | None = None) -> "AsyncOpenAI":
    """The judge client: TUNELOOP_JUDGE_* first, then OPENAI_BASE_URL / OPENAI_API_KEY."""
    settings = settings or get_settings()
    client = llm.make_client(
        settings.resolved_judge_base_url, settings.resolved_judge_api_key, settings.synth_timeout_s
    )
    if client is None:
        raise JudgeError(
            "no judge endpoint: set OPENAI_API_KEY (and OPENAI_BASE_URL for a non-OpenAI server), "
            "or TUNELOOP_JUDGE_API_KEY / TUNELOOP_JUDGE_BASE_URL"
        )
    return client


def judge_configured(settings: Settings | None = None) -> bool:
    """Whether an LLM judge endpoint is configured (else the metric judge scores the evaluation)."""
    settings = settings or get_settings()
    return settings.resolved_judge_base_url is not None or settings.resolved_judge_api_key is not None


def check_rubric(rubric: Rubric) -> None:
    if not rubric:
        raise JudgeError("the rubric needs at least one dimension")
    bad = [name for name in rubric if not isinstance(name, str) or not name.strip() or name in ("overall", "reason")]
    if bad:
        raise JudgeError(f"rubric dimension names must be non-empty and not 'overall' or 'reason': {bad}")


# --- replies -----------------------------------------------------------------------------------


def parse_grade(text: str, rubric: Rubric) -> tuple[dict[str, float] | None, float | None, str | None, str | None]:
    """(scores, overall, reason, invalid_reason) from a grading reply; scores and overall are None
    unless every dimension and the overall score are numbers within 1-5. Never raises. The scores
    may be nested under "scores" (the schema) or sit at the top level (a model without the schema)."""
    data, _ = extract_json(text)
    if data is None:
        return None, None, None, "not_json"
    if not isinstance(data, dict):
        return None, None, None, "not_object"
    reason = data.get("reason") if isinstance(data.get("reason"), str) else None
    nested = data.get("scores")
    source = nested if isinstance(nested, dict) else data
    scores: dict[str, float] = {}
    for name in [*rubric, "overall"]:
        value = data.get("overall") if name == "overall" else source.get(name)
        if value is None:
            return None, None, reason, "missing_score"
        if isinstance(value, bool) or not isinstance(value, int | float):
            return None, None, reason, "not_a_number"
        if not SCORE_MIN <= value <= SCORE_MAX:
            return None, None, reason, "out_of_range"
        scores[name] = float(value)
    overall = scores.pop("overall")
    return scores, overall, reason, None


def parse_verdict(text: str) -> tuple[str | None, str | None, str | None]:
    """(winner "A" | "B" | "tie", reason, invalid_reason) from a pairwise reply. Never raises."""
    data, _ = extract_json(text)
    if data is None:
        return None, None, "not_json"
    if not isinstance(data, dict):
        return None, None, "not_object"
    reason = data.get("reason") if isinstance(data.get("reason"), str) else None
    winner = data.get("winner")
    normal = {"a": "A", "b": "B", "tie": "tie"}.get(winner.strip().lower()) if isinstance(winner, str) else None
    if normal is None:
        return None, reason, "bad_winner"
    return normal, reason, None


def _read(judgement: Judgement, reply: Reply, rubric: Rubric) -> None:
    """Fill `judgement` from the judge's reply."""
    judgement.raw_reply = reply.refusal or reply.content
    judgement.response_format = reply.mode
    judgement.prompt_tokens, judgement.completion_tokens = reply.prompt_tokens, reply.completion_tokens
    judgement.cost_usd, judgement.attempts = reply.cost_usd, reply.attempts
    if reply.refusal or reply.finish_reason == "content_filter":
        judgement.invalid_reason = "refusal"
        return
    if judgement.kind == "grade":
        scores, overall, reason, invalid = parse_grade(reply.content, rubric)
        judgement.scores, judgement.overall, judgement.reason = scores, overall, reason
    else:
        winner, reason, invalid = parse_verdict(reply.content)
        judgement.winner, judgement.reason = winner, reason
        if winner is not None:
            shown = ANSWERS if judgement.subject == "base_first" else ANSWERS[::-1]  # (A, B)
            judgement.preferred = "tie" if winner == "tie" else shown[0 if winner == "A" else 1]
    judgement.invalid_reason = invalid
    judgement.valid = invalid is None


def restricted(result: JudgeResult, indices: Collection[int]) -> JudgeResult:
    """`result` over the samples whose index is in `indices`, its aggregates computed again; its usage, cost and
    time stay the whole judging's (they were spent on every sample)."""
    kept = [s for s in result.samples if s.index in indices]
    return aggregate(replace(result, samples=kept, means={}, graded={}, invalid_reasons={}))


def aggregate(result: JudgeResult) -> JudgeResult:
    """Fill `result`'s aggregates from its samples."""
    rubric = list(result.rubric)
    for name in ANSWERS:
        grades = [getattr(s, name) for s in result.samples if getattr(s, name).valid]
        result.graded[name] = len(grades)
        means: dict[str, float | None] = {}
        for dim in rubric:
            means[dim] = fmean(g.scores[dim] for g in grades) if grades else None
        means["overall"] = fmean(g.overall for g in grades) if grades else None
        result.means[name] = means
    verdicts = Counter(s.pairwise for s in result.samples if s.pairwise is not None)
    result.pairs = sum(verdicts.values())
    result.wins, result.losses, result.ties = verdicts["tuned"], verdicts["base"], verdicts["tie"]
    result.position_consistent = sum(1 for s in result.samples if s.position_consistent)
    judgements = [j for s in result.samples for j in s.judgements()]
    result.judgements = len(judgements)
    reasons = Counter(j.invalid_reason or "invalid" for j in judgements if not j.valid)
    result.invalid = sum(reasons.values())
    result.invalid_reasons = dict(reasons.most_common())
    return result
