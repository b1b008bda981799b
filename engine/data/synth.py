"""Synthetic data: from a task description to an unreviewed dataset version, through any
OpenAI-compatible endpoint.

    plan      sub-scenarios from the user, the dataset's existing tags, or the model; frozen per job
    batches   the samples spread over sub-scenario × persona × mood × difficulty × turns in the given
              proportions, `per_request` samples per request
    fan-out   bounded concurrency; every request through `engine.llm.ChatCaller`: our own retry loop
              (the client's is off) with exponential back-off and jitter on 429 / 5xx / timeouts,
              honouring Retry-After; response_format json_schema, falling back to json_object, then
              to JSON found in prose
    store     every reply is stored (`synth_batches`) the moment it arrives, keyed by job and batch
              index with a fingerprint of the request: a resumed job never pays for a batch twice
    budget    requests / tokens / USD: once reached no new request starts; in-flight ones finish
    result    quality filter (near-duplicates against the dataset included) → a dataset version,
              kind "synthesis", unreviewed, with the report in its `detail`

A job is named by `SynthRequest.job`, or else by a hash of everything that shapes its requests, so
running the same command again resumes (or, when complete, reproduces) the same job.
"""

import asyncio
import hashlib
import json
import logging
import random
import re
import threading
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, insert
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from engine import llm
from engine.data.dedup import ArrivingPairs
from engine.data.filters import FilterConfig, Screened, apply_filters, dedup_text, load_tokenizer, screen
from engine.data.sample import Message, Sample
from engine.data.synth_prompts import PROMPT_VERSION, batch_messages, response_format, scenario_messages
from engine.data.synth_replies import extract_json, items_of, to_sample
from engine.data.versions import (
    DEFAULT_DATASET,
    Entry,
    VersionChange,
    get_or_create_dataset,
    latest_version,
    load_entries,
    resolve_version,
    save_version,
)
from engine.events import Event, EventSink, ignore_events, progress_event
from engine.llm import Budget, BudgetReached, ChatCaller, EndpointRefused, Reply, RequestFailed, RetryPolicy, Usage
from engine.loop.projects import get_or_create_project
from engine.settings import Settings, get_settings
from storage.db import session_scope
from storage.models import DatasetVersion, SynthBatch

if TYPE_CHECKING:  # openai loads with the first client (engine.llm.make_client)
    from openai import AsyncOpenAI

log = logging.getLogger(__name__)

STAGE = "synthesize"
PLAN_INDEX = -1  # the SynthBatch row holding the job's frozen sub-scenario plan

DEFAULT_PERSONAS = {
    "first-time user, unsure how things work": 0.25,
    "busy professional who wants a short answer": 0.2,
    "experienced customer who knows the rules": 0.15,
    "elderly user, not comfortable with apps": 0.1,
    "detail-oriented user who asks follow-up questions": 0.15,
    "casual writer: slang, typos, little punctuation": 0.15,
}
DEFAULT_MOODS = {"calm": 0.4, "anxious": 0.2, "frustrated": 0.2, "angry": 0.1, "polite and grateful": 0.1}
DEFAULT_DIFFICULTIES = {"easy": 0.4, "medium": 0.4, "hard (edge case or policy exception)": 0.2}


class SynthError(Exception):
    """A synthesis job that cannot start or go on: no endpoint, a rejected key, a job name reused
    with different settings."""


@dataclass
class SynthRequest:
    task: str
    n: int = 100
    model: str | None = None  # settings.synth_model if None
    scenarios: dict[str, float] | None = None  # name -> weight, from the user
    scenario_notes: dict[str, str] | None = None  # name -> what to cover, told to the model with the sub-scenario
    wanted_answers: dict[str, list[str]] | None = None  # name -> answers people wrote (no questions): the bar
    use_existing_tags: bool = True  # else, or without tags, the model proposes the sub-scenarios
    scenario_count: int = 8
    personas: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_PERSONAS))
    moods: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_MOODS))
    difficulties: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_DIFFICULTIES))
    multi_turn_ratio: float = 0.3
    max_turns: int = 4
    per_request: int = 10
    seed_version: int | None = None  # few-shot examples from this version of the dataset
    few_shot: int = 3
    system_prompt: str | None = None  # prepended to every synthetic conversation
    temperature: float = 0.9
    seed: int = 0
    dataset: str = DEFAULT_DATASET
    parent_version: int | None = None  # the version the samples are added to; the dataset's latest if None
    split: str | None = None  # the split the new samples join ("train" in a split dataset); none if None
    job: str | None = None
    concurrency: int | None = None  # settings.synth_concurrency if None
    budget: Budget = field(default_factory=Budget)
    filter_config: FilterConfig | None = None

    def check(self) -> None:
        problems = []
        if not self.task.strip():
            problems.append("the task description is empty")
        if self.n < 1:
            problems.append("n must be at least 1")
        if not 1 <= self.per_request <= 50:
            problems.append("per_request must be between 1 and 50")
        if not 0.0 <= self.multi_turn_ratio <= 1.0:
            problems.append("multi_turn_ratio must be between 0 and 1")
        if self.max_turns < 2:
            problems.append("max_turns must be at least 2")
        if self.concurrency is not None and self.concurrency < 1:
            problems.append("concurrency must be at least 1")
        for name, weights in (
            ("scenarios", self.scenarios or {"-": 1}),
            ("personas", self.personas),
            ("moods", self.moods),
            ("difficulties", self.difficulties),
        ):
            if not weights or any(w < 0 for w in weights.values()) or sum(weights.values()) <= 0:
                problems.append(f"{name} need at least one positive weight and no negative one")
        if self.job is not None and not re.fullmatch(r"[\w.\-]{1,80}", self.job):
            problems.append("a job name is 1-80 letters, digits, '.', '-' or '_'")
        if problems:
            raise SynthError("; ".join(problems))


@dataclass
class SynthOutcome:
    change: VersionChange | None  # None when nothing valid came back
    report: dict[str, Any]
    job: str

    @property
    def complete(self) -> bool:
        return bool(self.report.get("complete"))

    @property
    def markdown(self) -> str:
        """The report for a chat thread."""
        return render_markdown(self.report)


@dataclass
class Scenario:
    name: str
    weight: float
    description: str | None = None


@dataclass
class BatchPlan:
    index: int
    scenario: Scenario
    specs: list[dict[str, Any]]
    messages: list[dict[str, str]]
    fingerprint: str


@dataclass
class _Screening:
    """Each batch's samples with the filter's rules that judge a sample alone, and their near-duplicates among the
    batches before it, worked out in the thread that stores the batch while other requests are still out: the
    filter at the end then only compares samples with the dataset and walks the pairs found."""

    def __init__(self, job_key: str, request: "SynthRequest", tokenizer_path: str | None) -> None:
        self.job_key, self.system_prompt = job_key, request.system_prompt
        self.config = request.filter_config or FilterConfig()
        self.batches: dict[int, list[tuple[Sample, Screened]]] = {}  # batch index -> its samples, screened
        self.near: ArrivingPairs | None = None  # keys: (batch index, position); None: compared at the end
        self.compared: set[int] = set()  # batch indexes
        self._tokenizer_path, self._tokenizer, self._loading = tokenizer_path, None, threading.Lock()
        # One batch at a time, in one thread: a burst of replies then leaves the event loop one thread to share
        # the interpreter with, not one per reply, so the next requests go out on time.
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="synth-screen")
        self._pending: list[Future[None]] = []
        threshold = self.config.near_dup_threshold
        if threshold is not None:
            # First in the thread: the index's library (datasketch, with scipy: ~0.7 s) loads while the first
            # requests are out, not on the event loop.
            self._pending.append(self._worker.submit(self._open_near, threshold))

    def _open_near(self, threshold: float) -> None:
        self.near = ArrivingPairs(threshold)

    def arrived(self, row: SynthBatch) -> None:
        """Screen and compare a stored batch in the background while the other requests are out."""
        if row.status == "ok":
            self._pending.append(self._worker.submit(self._compare_or_leave, row))

    def _compare_or_leave(self, row: SynthBatch) -> None:
        try:
            self.compare(row)
        except Exception:  # the filter at the end screens it again, and says there what is wrong
            self.batches.pop(row.batch_index, None)
            log.debug("batch %d is screened at the end", row.batch_index, exc_info=True)

    def settle(self) -> None:
        """Wait for the batches still being screened (before the filter at the end reads them)."""
        wait(self._pending)
        self._pending.clear()

    def close(self) -> None:
        self._worker.shutdown(wait=False, cancel_futures=True)

    @property
    def tokenizer(self) -> Any | None:
        """The project's tokenizer for token lengths, loaded once (batches are screened in several threads)."""
        with self._loading:
            if self._tokenizer is None and self._tokenizer_path:
                self._tokenizer = load_tokenizer(self._tokenizer_path)
        return self._tokenizer

    def samples(self, row: SynthBatch) -> list[Sample]:
        """A stored batch's samples as the new version holds them: marked with the job, the system prompt first."""
        system = [Message(role="system", content=self.system_prompt)] if self.system_prompt else []
        made = []
        for data in row.samples or []:
            data = {**data, "original": {**(data.get("original") or {}), "synth_job": self.job_key}}
            sample = Sample.model_validate(data)
            made.append(sample.model_copy(update={"messages": [*system, *sample.messages]}) if system else sample)
        return made

    def screened(self, row: SynthBatch) -> list[tuple[Sample, Screened]]:
        """The batch's samples, screened: as worked out when it arrived, else now (a batch of an earlier attempt)."""
        done = self.batches.get(row.batch_index)
        if done is None:
            done = [(sample, screen(sample, self.config, self.tokenizer)) for sample in self.samples(row)]
            self.batches[row.batch_index] = done
        return done

    def compare(self, row: SynthBatch) -> None:
        """Screen the batch, and compare the samples screening kept with the batches compared before it."""
        done = self.screened(row)
        if self.near is None or row.batch_index in self.compared:
            return
        kept = [(n, one.sample) for n, (_, one) in enumerate(done) if one.removal is None]
        self.near.add([(row.batch_index, n) for n, _ in kept], [dedup_text(sample) for _, sample in kept])
        self.compared.add(row.batch_index)

    def near_pairs(self, rows: Sequence[SynthBatch]) -> list[tuple[int, int, float]] | None:
        """The near-duplicate pairs among the samples of `rows`, by their positions when the rows' samples are put
        one after another (as the filter gets them); the batches not compared as they arrived (an earlier
        attempt's) are compared now."""
        if self.near is None:
            return None
        position: dict[tuple[int, int], int] = {}
        for row in rows:
            self.compare(row)
            for n in range(len(self.screened(row))):
                position[(row.batch_index, n)] = len(position)
        pairs = self.near.pairs()
        return [(position[a], position[b], sim) for a, b, sim in pairs if a in position and b in position]  # type: ignore[index]


@dataclass
class _Context:
    """What every request of one job shares."""

    chat: ChatCaller  # client, model, temperature, retries, budget, usage, response format mode
    settings: Settings
    project: str
    events: EventSink
    screening: _Screening

    @property
    def model(self) -> str:
        return self.chat.model

    @property
    def usage(self) -> Usage:
        return self.chat.usage

    @property
    def mode(self) -> str:
        return self.chat.mode


# --- the engine function -----------------------------------------------------------------------


async def synthesize(
    engine: Engine,
    project_name: str,
    request: SynthRequest,
    *,
    client: "AsyncOpenAI | None" = None,
    events: EventSink = ignore_events,
    actor: str | None = None,
    platform: str = "cli",
) -> SynthOutcome:
    """Run (or resume) a synthesis job and store its result as a new dataset version.

    `engine` rather than a session: every batch is committed on its own the moment it arrives."""
    request.check()
    settings = get_settings()
    model = request.model or settings.synth_model
    own_client = client is None
    client = (client or make_client(settings)).with_options(max_retries=0)  # retries are ours
    started = time.monotonic()
    screening: _Screening | None = None
    try:
        with session_scope(engine) as session:
            project = get_or_create_project(session, project_name)
            dataset = get_or_create_dataset(session, project, request.dataset)
            project_id, dataset_name, tokenizer_path = project.id, dataset.name, project.tokenizer_path
            parent = _parent_version(session, project_name, request.dataset, request)
            tags = _tag_weights(load_entries(session, parent)) if parent else {}
            examples = _example_pool(session, project_name, request)
        assert project_id is not None
        job_name = request.job or default_job_name(project_name, model, request)
        job_key = f"{project_id}:{job_name}"
        stored = _stored_batches(engine, job_key)
        usage = Usage(
            requests=sum(b.attempts for b in stored.values()),
            prompt_tokens=sum(b.prompt_tokens for b in stored.values()),
            completion_tokens=sum(b.completion_tokens for b in stored.values()),
            cost_usd=sum(b.cost_usd or 0.0 for b in stored.values()),
        )
        chat = ChatCaller(
            client,
            model,
            RetryPolicy.from_settings(settings),
            prices=settings.synth_prices,
            temperature=request.temperature,
            budget=request.budget,
            usage=usage,
            rng=random.Random(request.seed),
        )
        screening = _Screening(job_key, request, tokenizer_path)
        ctx = _Context(chat, settings, project_name, events, screening)
        resumed = sum(1 for i, b in stored.items() if i != PLAN_INDEX and b.status == "ok")
        events(_stage(project_name, "plan", job=job_name, resumed_batches=resumed))

        scenarios, scenario_source = await _plan_scenarios(engine, ctx, project_id, job_key, request, tags, stored)
        plans = plan_batches(request, scenarios, model, examples)
        for plan in plans:
            row = stored.get(plan.index)
            if row is not None and row.status == "ok" and row.fingerprint != plan.fingerprint:
                raise SynthError(
                    f"job '{job_name}' was started with different settings (batch {plan.index} differs); "
                    "give this one another job name"
                )
        pending = [p for p in plans if stored.get(p.index) is None or stored[p.index].status != "ok"]
        events(_stage(project_name, "generate", job=job_name, batches=len(plans), pending=len(pending)))
        await _run_batches(engine, ctx, project_id, job_key, plans, pending, request.concurrency or 0)

        events(_stage(project_name, "filter", job=job_name))
        screening.settle()
        rows = _stored_batches(engine, job_key)  # the database is the truth, earlier attempts included
        with session_scope(engine) as session:
            outcome = _make_version(
                session,
                project_name,
                dataset_name,
                job_key,
                request,
                plans,
                rows,
                ctx,
                actor=actor,
                platform=platform,
                scenario_source=scenario_source,
                job_name=job_name,
                seconds=time.monotonic() - started,
            )
        events(Event("report", project_name, {"stage": STAGE, "report": outcome.report, "markdown": outcome.markdown}))
        return outcome
    finally:
        if screening is not None:
            screening.close()
        if own_client:
            await client.close()


def synthesize_blocking(engine: Engine, project_name: str, request: SynthRequest, **kwargs: Any) -> SynthOutcome:
    """`synthesize` for callers without an event loop (the terminal)."""
    return asyncio.run(synthesize(engine, project_name, request, **kwargs))


def default_job_name(project_name: str, model: str, request: SynthRequest) -> str:
    """The job a request without a name belongs to: the same command resumes the same job."""
    return "auto-" + _job_hash(project_name, model, request)[:12]


def synthesis_configured(settings: Settings) -> bool:
    """Whether a synthesis endpoint is configured (what `make_client` needs)."""
    return bool(settings.resolved_synth_base_url or settings.resolved_synth_api_key)


def make_client(settings: Settings | None = None) -> "AsyncOpenAI":
    """The synthesis client: TUNELOOP_SYNTH_* first, then OPENAI_BASE_URL / OPENAI_API_KEY."""
    settings = settings or get_settings()
    client = llm.make_client(
        settings.resolved_synth_base_url, settings.resolved_synth_api_key, settings.synth_timeout_s
    )
    if client is None:
        raise SynthError(
            "no synthesis endpoint: set OPENAI_API_KEY (and OPENAI_BASE_URL for a non-OpenAI server), "
            "or TUNELOOP_SYNTH_API_KEY / TUNELOOP_SYNTH_BASE_URL"
        )
    return client


# --- planning ----------------------------------------------------------------------------------


async def _plan_scenarios(
    engine: Engine,
    ctx: _Context,
    project_id: int,
    job_key: str,
    request: SynthRequest,
    tags: dict[str, float],
    stored: dict[int, SynthBatch],
) -> tuple[list[Scenario], str]:
    """The job's sub-scenarios: as stored by an earlier attempt of the job, else from the user, the
    dataset's tags or the model. Stored either way, so a resumed job plans the same batches."""
    row = stored.get(PLAN_INDEX)
    if row is not None and row.status == "ok" and row.samples:
        scenarios = [Scenario(**s) for s in row.samples]
        source = (row.invalid or {}).get("source", "stored")
        wanted = {k: float(v) for k, v in (request.scenarios or {}).items() if v > 0}
        if wanted and wanted != {s.name: s.weight for s in scenarios}:
            raise SynthError("this job was planned with other sub-scenarios; give this one another job name")
        return scenarios, source
    reply: Reply | None = None
    if request.scenarios:
        notes = request.scenario_notes or {}
        scenarios = [Scenario(k, float(v), notes.get(k)) for k, v in request.scenarios.items() if v > 0]
        source = "user"
    elif request.use_existing_tags and tags:
        scenarios, source = [Scenario(k, v) for k, v in tags.items()], "tags"
    else:
        messages = scenario_messages(request.task, request.scenario_count)
        try:
            reply = await _request(ctx, messages, "scenarios")
        except BudgetReached as stop:
            raise SynthError(f"the budget was spent before the sub-scenarios were planned ({stop})") from None
        except RequestFailed as failure:
            # Nothing is stored: a passing outage must not fix this job's plan for good.
            raise SynthError(f"could not plan the sub-scenarios: {failure}; run again, or give --scenarios") from None
        scenarios, source = parse_scenarios(reply.content, request.scenario_count), "model"
        if not scenarios:  # the model answered (and was paid), but with nothing usable
            ctx.events(
                Event(
                    "warning",
                    ctx.project,
                    {"stage": STAGE, "message": "no sub-scenarios came back; using the task itself as the only one"},
                )
            )
            scenarios, source = [Scenario(_short(request.task, 40), 1.0)], "fallback"
    _store_batch(
        engine,
        SynthBatch(
            project_id=project_id,
            job_key=job_key,
            batch_index=PLAN_INDEX,
            fingerprint=_fingerprint({"plan": source, "task": request.task}),
            status="ok",
            model=ctx.model if reply else None,
            response_format=reply.mode if reply else None,
            raw_reply=reply.content if reply else None,
            samples=[asdict(s) for s in scenarios],
            invalid={"source": source},
            prompt_tokens=reply.prompt_tokens if reply else 0,
            completion_tokens=reply.completion_tokens if reply else 0,
            cost_usd=reply.cost_usd if reply else None,
            attempts=reply.attempts if reply else 0,
        ),
    )
    return scenarios, source


def parse_scenarios(text: str, limit: int) -> list[Scenario]:
    """Sub-scenarios from the model's reply; anything malformed is skipped, never raised."""
    data, _ = extract_json(text)
    items = data.get("scenarios") if isinstance(data, dict) else data
    scenarios: dict[str, Scenario] = {}
    for item in items if isinstance(items, list) else []:
        if isinstance(item, str):
            item = {"name": item}
        if not isinstance(item, dict) or not isinstance(item.get("name"), str) or not item["name"].strip():
            continue
        name = _short(item["name"], 40)
        weight = item.get("weight")
        weight = float(weight) if isinstance(weight, int | float) and weight > 0 else 1.0
        description = item.get("description") if isinstance(item.get("description"), str) else None
        scenarios.setdefault(name, Scenario(name, weight, description))
    return list(scenarios.values())[:limit]


def plan_batches(
    request: SynthRequest,
    scenarios: Sequence[Scenario],
    model: str,
    examples: Sequence[Sample] = (),
) -> list[BatchPlan]:
    """Spread `request.n` samples over sub-scenarios (largest remainder on the weights) and each
    sample's persona, mood, difficulty and turns over theirs; deterministic for a given seed."""
    rng = random.Random(request.seed)
    counts = allocate(request.n, {s.name: s.weight for s in scenarios})
    personas = _spread(request.n, request.personas, rng)
    moods = _spread(request.n, request.moods, rng)
    difficulties = _spread(request.n, request.difficulties, rng)
    multi = round(request.n * request.multi_turn_ratio)
    turns = [rng.randint(2, request.max_turns) for _ in range(multi)] + [1] * (request.n - multi)
    rng.shuffle(turns)
    # Batches of each sub-scenario, then interleaved in proportion: a job stopped by its budget
    # still has the distribution asked for.
    chunks: list[tuple[float, Scenario, int]] = []
    for scenario in scenarios:
        sizes = [
            min(request.per_request, counts[scenario.name] - start)
            for start in range(0, counts[scenario.name], request.per_request)
        ]
        chunks += [((k + 0.5) / len(sizes), scenario, size) for k, size in enumerate(sizes)]
    chunks.sort(key=lambda chunk: chunk[0])  # stable: ties keep the scenarios' order
    plans: list[BatchPlan] = []
    slot = 0
    for _, scenario, size in chunks:
        index = len(plans)
        specs = [
            {"persona": personas[i], "mood": moods[i], "difficulty": difficulties[i], "turns": turns[i]}
            for i in range(slot, slot + size)
        ]
        shots = _pick_examples(examples, scenario.name, request.few_shot, random.Random(f"{request.seed}:{index}"))
        messages = batch_messages(
            request.task,
            scenario.name,
            specs,
            scenario_description=scenario.description,
            examples=shots,
            wanted_answers=(request.wanted_answers or {}).get(scenario.name),
        )
        fingerprint = _fingerprint(
            {"v": PROMPT_VERSION, "model": model, "temperature": request.temperature, "messages": messages}
        )
        plans.append(BatchPlan(index, scenario, specs, messages, fingerprint))
        slot += size
    return plans


def allocate(total: int, weights: dict[str, float]) -> dict[str, int]:
    """`total` split over `weights` by largest remainder: the counts sum to `total` exactly."""
    positive = {k: w for k, w in weights.items() if w > 0}
    whole = sum(positive.values())
    exact = {k: total * w / whole for k, w in positive.items()}
    counts = {k: int(v) for k, v in exact.items()}
    for k in sorted(exact, key=lambda k: exact[k] - counts[k], reverse=True)[: total - sum(counts.values())]:
        counts[k] += 1
    return {k: counts.get(k, 0) for k in weights}


def _spread(total: int, weights: dict[str, float], rng: random.Random) -> list[str]:
    labels = [label for label, count in allocate(total, weights).items() for _ in range(count)]
    rng.shuffle(labels)
    return labels


def _pick_examples(pool: Sequence[Sample], tag: str, k: int, rng: random.Random) -> list[list[dict[str, Any]]]:
    if not pool or k <= 0:
        return []
    same = [s for s in pool if tag in s.tags]
    chosen = rng.sample(same, min(k, len(same)))
    others = [s for s in pool if tag not in s.tags]
    chosen += rng.sample(others, min(k - len(chosen), len(others)))
    return [
        [
            {"role": m.role, "content": _short(m.content or "", 300)}
            for m in s.messages
            if m.role in ("user", "assistant")
        ]
        for s in chosen
    ]


# --- requests ----------------------------------------------------------------------------------


async def _run_batches(
    engine: Engine,
    ctx: _Context,
    project_id: int,
    job_key: str,
    plans: list[BatchPlan],
    pending: list[BatchPlan],
    concurrency: int,
) -> None:
    """Request the pending batches, at most `concurrency` at once, storing each as it arrives."""
    gate = asyncio.Semaphore(concurrency or ctx.settings.synth_concurrency)
    total = len(plans)
    done = total - len(pending)
    ctx.events(_progress(ctx, done, total))

    refused: list[SynthError] = []  # the endpoint refused the job: ask nothing more, keep what is in flight

    async def one(plan: BatchPlan) -> None:
        nonlocal done
        async with gate:
            if refused:
                return
            try:
                answer = await _ask(ctx, plan)
            except SynthError as error:
                refused.append(error)
                return
        # Parsing and storing run as their own task: the next request (woken by the gate) goes out
        # first, and a cancelled job still stores the batch it paid for.
        finish = asyncio.ensure_future(_keep(engine, ctx, plan, answer, project_id, job_key))
        try:
            await asyncio.shield(finish)
        except asyncio.CancelledError:
            await asyncio.wait([finish])
            raise
        done += 1
        ctx.events(_progress(ctx, done, total))

    # A refusal ends the job, but only once the replies already paid for are stored: the next attempt pays for none
    # of them again.
    await asyncio.gather(*(one(plan) for plan in pending))
    if refused:
        raise refused[0]


async def _ask(ctx: _Context, plan: BatchPlan) -> "Reply | RequestFailed | None":
    """The reply to one batch, the failure that ended its retries, or None when the budget forbade
    sending it."""
    try:
        return await _request(ctx, plan.messages, "samples")
    except BudgetReached:
        return None
    except RequestFailed as failure:
        return failure


async def _keep(
    engine: Engine,
    ctx: _Context,
    plan: BatchPlan,
    answer: "Reply | RequestFailed | None",
    project_id: int,
    job_key: str,
) -> SynthBatch | None:
    """Parse a batch's reply and store it the moment it arrives (in a thread: the event loop keeps
    sending); the stored row."""
    if answer is None:
        return None
    row = _batch_row(ctx, plan, answer)
    row.project_id, row.job_key = project_id, job_key
    await asyncio.to_thread(_store_and_screen, engine, row, ctx.screening)
    return row


def _batch_row(ctx: _Context, plan: BatchPlan, answer: "Reply | RequestFailed") -> SynthBatch:
    if isinstance(answer, RequestFailed):
        log.warning("synthesis batch %d failed: %s", plan.index, answer)
        ctx.events(Event("warning", ctx.project, {"stage": STAGE, "batch": plan.index, "message": str(answer)}))
        return SynthBatch(
            project_id=0,
            job_key="",
            batch_index=plan.index,
            fingerprint=plan.fingerprint,
            status="failed",
            model=ctx.model,
            attempts=answer.attempts,
            error=str(answer),
        )
    samples, invalid = parse_batch(answer.content, plan, ctx.model, answer.finish_reason)
    if invalid:
        log.warning("synthesis batch %d: invalid %s", plan.index, dict(invalid))
    return SynthBatch(
        project_id=0,
        job_key="",
        batch_index=plan.index,
        fingerprint=plan.fingerprint,
        status="ok",
        model=ctx.model,
        response_format=answer.mode,
        raw_reply=answer.content,
        samples=samples,
        invalid=dict(invalid),
        prompt_tokens=answer.prompt_tokens,
        completion_tokens=answer.completion_tokens,
        cost_usd=answer.cost_usd,
        attempts=answer.attempts,
    )


async def _request(ctx: _Context, messages: list[dict[str, str]], kind: str) -> Reply:
    """One chat completion through the job's caller (retries, format fallback, budget: engine.llm)."""
    try:
        return await ctx.chat.complete(messages, lambda mode: response_format(mode, kind))
    except EndpointRefused as error:
        raise SynthError(error.advice("synthesis", "TUNELOOP_SYNTH_API_KEY")) from None


# --- replies -----------------------------------------------------------------------------------


def parse_batch(
    text: str, plan: BatchPlan, model: str, finish_reason: str | None = None
) -> tuple[list[dict[str, Any]], Counter[str]]:
    """The valid samples of a reply in canonical form (tags and plan attached) and the invalid ones
    counted by reason. Reply-level problems count under `reply_*` reasons. Never raises."""
    invalid: Counter[str] = Counter()
    data, how = extract_json(text)
    if how is None:
        invalid["reply_not_json"] += 1
        return [], invalid
    if how == "salvaged" or finish_reason == "length":
        invalid["reply_truncated"] += 1
    items = items_of(data)
    if items is None:
        invalid["reply_without_samples"] += 1
        return [], invalid
    samples = []
    for position, item in enumerate(items):
        spec = plan.specs[position] if position < len(plan.specs) else {}
        sample, reason = to_sample(item, plan.scenario.name)
        if sample is None:
            invalid[reason or "invalid"] += 1
            continue
        original = {"batch": plan.index, "model": model, "scenario": plan.scenario.name, **spec}
        samples.append(sample.model_dump(exclude_none=True) | {"original": original})
    return samples, invalid


# --- the result --------------------------------------------------------------------------------


def _make_version(
    session: Session,
    project_name: str,
    dataset_name: str,
    job_key: str,
    request: SynthRequest,
    plans: list[BatchPlan],
    rows: dict[int, SynthBatch],
    ctx: _Context,
    *,
    actor: str | None,
    platform: str,
    scenario_source: str,
    job_name: str,
    seconds: float,
) -> SynthOutcome:
    """Filter the job's samples against the dataset and store them as a new version. The job's own
    samples from an earlier (budget-stopped) attempt are replaced, so resuming never doubles them."""
    project = get_or_create_project(session, project_name)
    dataset = get_or_create_dataset(session, project, dataset_name)
    parent = _parent_version(session, project_name, dataset_name, request)
    entries = [e for e in load_entries(session, parent) if _job_of(e.sample) != job_key] if parent else []

    requested: Counter[str] = Counter()
    received: Counter[str] = Counter()
    invalid: Counter[str] = Counter()
    new: list[Sample] = []
    screened: list[Screened] = []
    used: list[SynthBatch] = []
    failed = not_sent = 0
    for plan in plans:
        requested[plan.scenario.name] += len(plan.specs)
        row = rows.get(plan.index)
        if row is None:
            not_sent += 1
            continue
        if row.status != "ok":
            failed += 1
            continue
        for reason, count in (row.invalid or {}).items():
            invalid[reason] += count
            if not reason.startswith("reply_"):
                received[plan.scenario.name] += count
        used.append(row)
        for sample, judged in ctx.screening.screened(row):
            new.append(sample)
            screened.append(judged)
            received[plan.scenario.name] += 1

    config, tokenizer = ctx.screening.config, ctx.screening.tokenizer
    existing = [e.sample for e in entries if e.in_use]
    held_out = [e.sample for e in entries if e.in_use and e.split == "test"]
    filtered = apply_filters(
        new,
        config,
        existing=existing,
        held_out=held_out,
        tokenizer=tokenizer,
        screened=screened,
        near_pairs=ctx.screening.near_pairs(used),
    )
    kept_by: Counter[str] = Counter()
    added = []
    for position, sample in enumerate(filtered.samples):
        removal = filtered.removed.get(position)
        if removal is None:
            kept_by[sample.tags[0]] += 1
        added.append(
            Entry(
                sample,
                split=request.split,
                filter_rule=removal.rule if removal else None,
                filter_reason=removal.reason if removal else None,
            )
        )

    usage = _totals(rows)
    kept = len(new) - len(filtered.removed)
    stopped = ctx.usage.stopped if not_sent else None
    report: dict[str, Any] = {
        "job": job_name,
        "task": request.task,
        "model": ctx.model,
        "prompt_version": PROMPT_VERSION,
        "response_format": ctx.mode,
        "scenario_source": scenario_source,
        "requested": request.n,
        "received": sum(received.values()),
        "valid": len(new),
        "invalid": dict(invalid.most_common()),
        "filtered": filtered.counts_by_rule(),
        "masked": dict(filtered.masked_counts),
        "kept": kept,
        "per_scenario": {
            name: {"requested": requested[name], "received": received[name], "kept": kept_by[name]}
            for name in requested
        },
        "batches": {
            "total": len(plans),
            "ok": len(plans) - failed - not_sent,
            "failed": failed,
            "not_sent": not_sent,
        },
        "requests": usage["requests"],
        "retries": ctx.usage.retries,
        "tokens": {
            "prompt": usage["prompt_tokens"],
            "completion": usage["completion_tokens"],
            "total": usage["prompt_tokens"] + usage["completion_tokens"],
        },
        "cost_usd": round(usage["cost_usd"], 6) if usage["priced"] else None,
        "stopped": stopped,
        "complete": failed == 0 and not_sent == 0,
        "seconds": round(seconds, 2),
    }
    if not new:
        return SynthOutcome(None, report, job_name)
    change = save_version(
        session,
        dataset,
        entries + added,
        kind="synthesis",
        summary=f"synthesized {kept} sample(s) ({len(new)} valid of {request.n} requested) · job {job_name}",
        parent=parent,
        detail=report,
        actor=actor,
        platform=platform,
        reviewed=False,
    )
    return SynthOutcome(change, report, job_name)


def _totals(rows: dict[int, SynthBatch]) -> dict[str, Any]:
    return {
        "requests": sum(r.attempts for r in rows.values()),
        "prompt_tokens": sum(r.prompt_tokens for r in rows.values()),
        "completion_tokens": sum(r.completion_tokens for r in rows.values()),
        "cost_usd": sum(r.cost_usd or 0.0 for r in rows.values()),
        "priced": any(r.cost_usd is not None for r in rows.values()),
    }


def render_markdown(report: dict[str, Any]) -> str:
    """The report for chat: short lines, no tables (Slack and Telegram render them differently)."""
    cost = f"${report['cost_usd']:.4f}" if report.get("cost_usd") is not None else "未知(无价格)"
    lines = [
        f"**合成报告 · 任务 {report['job']}** ({report['model']})",
        "",
        f"**请求 {report['requested']} 条 → 收到 {report['received']} → 有效 {report['valid']} → "
        f"保留 {report['kept']}**",
    ]
    if report["invalid"]:
        lines.append("无效: " + ", ".join(f"{k} {v}" for k, v in report["invalid"].items()))
    if report["filtered"]:
        lines.append("过滤: " + ", ".join(f"{k} {v}" for k, v in report["filtered"].items()))
    lines += ["", "**按子场景** (请求 / 收到 / 保留)"]
    for name, row in report["per_scenario"].items():
        lines.append(f"• {name}: {row['requested']} / {row['received']} / {row['kept']}")
    b = report["batches"]
    lines += [
        "",
        f"请求 {report['requests']} 次 (重试 {report['retries']}), 批次 {b['ok']}/{b['total']}"
        + (f", 失败 {b['failed']}" if b["failed"] else "")
        + (f", 未发送 {b['not_sent']}" if b["not_sent"] else ""),
        f"tokens {report['tokens']['total']} (输入 {report['tokens']['prompt']}, 输出 "
        f"{report['tokens']['completion']}), 费用 {cost}",
    ]
    if report.get("stopped"):
        lines.append(f"⚠️ 预算已用尽 ({report['stopped']}): 提高预算后用同一任务名继续")
    elif not report.get("complete"):
        lines.append("⚠️ 部分批次失败: 用同一任务名再次运行即可只补请求缺失的批次")
    return "\n".join(lines)


# --- storage helpers ---------------------------------------------------------------------------


def _stored_batches(engine: Engine, job_key: str) -> dict[int, SynthBatch]:
    with session_scope(engine) as session:
        rows = session.exec(select(SynthBatch).where(SynthBatch.job_key == job_key)).all()
        return {row.batch_index: row for row in rows}


def _store_and_screen(engine: Engine, row: SynthBatch, screening: _Screening) -> None:
    """Store a batch the moment it arrives, then have its samples screened while the other requests are out."""
    _store_batch(engine, row)
    screening.arrived(row)


def _store_batch(engine: Engine, row: SynthBatch) -> None:
    """Insert or replace the job's row for this batch index (a failed batch is retried on resume). Two plain
    statements in one transaction, no ORM unit of work: it runs once per reply, beside the requests in flight."""
    values = row.model_dump(exclude={"id"})
    same = (col(SynthBatch.job_key) == row.job_key, col(SynthBatch.batch_index) == row.batch_index)
    with engine.begin() as connection:
        connection.execute(delete(SynthBatch).where(*same))
        connection.execute(insert(SynthBatch).values(**values))


def _tag_weights(entries: Sequence[Entry]) -> dict[str, float]:
    """The dataset's sub-scenario tags (first tag of each sample in use) and their shares."""
    counts = Counter(e.sample.tags[0] for e in entries if e.in_use and e.sample.tags)
    total = sum(counts.values())
    return {tag: count / total for tag, count in counts.most_common()}


def _example_pool(session: Session, project_name: str, request: SynthRequest) -> list[Sample]:
    """Few-shot examples from the seed version, never from its test split (the model would copy them)."""
    if request.seed_version is None or request.few_shot <= 0:
        return []
    version = resolve_version(session, project_name, request.dataset, request.seed_version)
    return [e.sample for e in load_entries(session, version) if e.in_use and e.split != "test"]


def _parent_version(
    session: Session, project_name: str, dataset_name: str, request: SynthRequest
) -> DatasetVersion | None:
    if request.parent_version is None:
        return latest_version(session, project_name, dataset_name)
    return resolve_version(session, project_name, dataset_name, request.parent_version)


def _job_of(sample: Sample) -> str | None:
    return (sample.original or {}).get("synth_job") if sample.origin == "synthetic" else None


def _job_hash(project_name: str, model: str, request: SynthRequest) -> str:
    shape = {
        k: v
        for k, v in asdict(request).items()
        if k not in ("job", "concurrency", "budget", "filter_config", "use_existing_tags")
    }
    return _fingerprint({"project": project_name, "model": model, "v": PROMPT_VERSION, **shape})


def _fingerprint(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _short(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _stage(project: str, step: str, **extra: Any) -> Event:
    return Event("stage", project, {"stage": STAGE, "step": step, **extra})


def _progress(ctx: _Context, done: int, total: int) -> Event:
    usage = ctx.usage
    return progress_event(
        ctx.project,
        STAGE,
        done,
        total,
        unit="batches",
        requests=usage.requests,
        tokens=usage.prompt_tokens + usage.completion_tokens,
        cost_usd=round(usage.cost_usd, 6),
    )
