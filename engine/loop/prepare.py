"""A run's preparation stages on the cpu queue, in its `preparing` state, before it trains.

    synthesize   synthetic samples from a task description → a dataset version (engine.data.synth)
    prepare      the quality filter, then the train/test split, on the run's dataset version (engine.data.pipeline)

What a run prepares is its `Run.plan`, a `PreparePlan` as JSON. A next iteration's plan also says what data it
targets at its parent's weak sub-scenarios (`TargetedData`, planned by engine.loop.targeting): new samples the
synthesize stage makes, or, without a synthesis endpoint, extra copies of the weak tags' training samples that
training adds. Each stage ends by pointing `run.dataset_version_id`
at the version it made, so the next stage (and training) works on it.

Both stages may run again after their worker died, and a retry ends where the first attempt would have:
- synthesize runs the synthesis job `run-<id>`: every batch is stored as it arrives, so a retry requests only the
  batches not stored yet, and a finished job stores the same content again, which is the version it made before.
- prepare records where it started in its `run.prepared` audit event. A retry that finds the run already on the
  version that event names starts again from the recorded source; filter and split are deterministic and dataset
  versions are content-hashed, so each step finds the version it made before (`save_version`) instead of a new one.

A failing stage marks the run failed (the message names the run, the stage and the cause) and raises PrepareError.
A cancelled run (RunCancelled) or a worker that stops the stage (StageStopped) leaves the run as it is.
"""

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from sqlmodel import Session, col, select

from engine.data.errors import DataError
from engine.data.filters import FilterConfig
from engine.data.pipeline import filter_version, split_version
from engine.data.split import SplitConfig
from engine.data.synth import SynthError, SynthRequest, synthesize_blocking
from engine.data.versions import DEFAULT_DATASET, VersionChange
from engine.events import Event, EventSink, ignore_events
from engine.loop.projects import NotFoundError
from engine.loop.runs import (
    RunCancelled,
    RunError,
    StageStopped,
    fail_run,
    get_run,
    stop_if_cancelled,
    transition,
    worker_actor,
)
from storage.models import AuditEvent, Dataset, DatasetVersion, Project, Run

PREPARE_STAGES = ("synthesize", "prepare")
PREPARED = "run.prepared"  # the audit action of a finished prepare stage; its detail holds the source version
PLATFORM = "worker"
_ENTERED_FROM = ("queued", "preparing")  # preparing already: a retried stage, or prepare after synthesize


class PrepareError(RunError):
    """A preparation stage that could not be done; the message names the run, the stage and the cause."""


class SynthPlan(BaseModel):
    """The synthesis a person asks for from chat, or a next iteration plans for its weak sub-scenarios; the rest of
    `SynthRequest` keeps its defaults."""

    model_config = ConfigDict(extra="forbid")

    task: str
    n: int = Field(default=100, ge=1)
    model: str | None = None  # settings.synth_model when None
    scenarios: dict[str, float] | None = None  # sub-scenario → weight; else the dataset's tags or the model's
    seed: int = 0
    scenario_notes: dict[str, str] | None = None  # sub-scenario → what to cover (weak topics, never questions)
    wanted_answers: dict[str, list[str]] | None = None  # sub-scenario → reviewers' corrected answers
    seed_version: int | None = None  # few-shot examples from this version's training samples
    system_prompt: str | None = None  # the system prompt the dataset's samples carry
    split: Literal["train"] | None = None  # the split the new samples join

    @model_validator(mode="after")
    def _checked(self) -> "SynthPlan":
        # The request's own checks, so a bad plan is refused when it is read, not after the run has queued.
        try:
            self.request(dataset=DEFAULT_DATASET, job="check").check()
        except SynthError as error:
            raise ValueError(str(error)) from None
        return self

    def request(self, *, dataset: str, job: str) -> SynthRequest:
        return SynthRequest(
            task=self.task,
            n=self.n,
            model=self.model,
            scenarios=dict(self.scenarios) if self.scenarios else None,
            seed=self.seed,
            scenario_notes=self.scenario_notes,
            wanted_answers=self.wanted_answers,
            seed_version=self.seed_version,
            system_prompt=self.system_prompt,
            split=self.split,
            dataset=dataset,
            job=job,
        )


class TagTarget(BaseModel):
    """One weak sub-scenario of the parent run and the data the next iteration adds for it."""

    model_config = ConfigDict(extra="forbid")

    tag: str
    mean: float  # the tag's mean overall score in the parent's evaluation
    count: int = Field(ge=0)  # new samples (synthesize) or extra copies of its training samples (oversample)
    available: int = Field(ge=0)  # the tag's training samples before

    @property
    def factor(self) -> float:
        """How much more often the tag's training samples are seen when oversampled (×2: each twice)."""
        return (self.available + self.count) / self.available if self.available else 1.0


class TargetedData(BaseModel):
    """What a next iteration adds where its parent was weak, and how."""

    model_config = ConfigDict(extra="forbid")

    mode: Literal["synthesize", "oversample"]
    threshold: float  # the gate's overall score the tags fell below
    evaluation: int  # the parent's evaluation the weak tags were read from
    tags: list[TagTarget]

    @property
    def total(self) -> int:
        return sum(t.count for t in self.tags)


class PreparePlan(BaseModel):
    """What a run prepares before it trains, in this order; a None part is not done. Stored in `Run.plan`."""

    model_config = ConfigDict(extra="forbid")

    synthesize: SynthPlan | None = None
    filter: FilterConfig | None = None
    split: SplitConfig | None = None
    targeted: TargetedData | None = None  # a next iteration's data for its parent's weak sub-scenarios


def plan_of(run: Run) -> PreparePlan | None:
    """The run's plan, or None when it has none. Raises RunError naming the run and each bad field."""
    if not run.plan:
        return None
    try:
        return PreparePlan.model_validate(run.plan)
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in problem['loc']) or 'plan'}: {problem['msg']}"
            for problem in error.errors()
        )
        raise RunError(f"run {run.id} has a malformed plan ({problems})") from None


def stages_of(plan: PreparePlan | None) -> tuple[str, ...]:
    """The preparation stages the plan calls for, in order: synthesize, then prepare (filter and split)."""
    if plan is None:
        return ()
    wanted = {"synthesize": plan.synthesize is not None, "prepare": plan.filter is not None or plan.split is not None}
    return tuple(stage for stage in PREPARE_STAGES if wanted[stage])


def synthesize_for_run(
    session: Session,
    run_id: int,
    *,
    events: EventSink = ignore_events,
    stop: threading.Event | None = None,
) -> None:
    """Run (or resume) the synthesis the run's plan asks for, into the run's dataset, and point the run at the
    version it made. Moves the run queued → preparing; commits."""
    stage = "synthesize"
    run = _enter(session, run_id, stage)
    with _failing(session, run_id, stage):
        plan = plan_of(run)
        if plan is None or plan.synthesize is None:
            raise RunError(f"run {run_id} has no synthesis in its plan")
        project = _project_name(session, run)
        # Named after the run: a retried stage resumes this job and pays only for the batches not stored yet.
        request = plan.synthesize.request(dataset=_dataset_name(session, run), job=f"run-{run_id}")
        request.parent_version = _version_number(session, run)  # added to the run's data, not the latest
        _check_stop(session, run_id, stop)
        outcome = synthesize_blocking(
            session.get_bind(),  # type: ignore[arg-type]  # synthesis commits each batch in sessions of its own
            project,
            request,
            events=_tagged(events, run_id),
            actor=worker_actor(),
            platform=PLATFORM,
        )
        if outcome.change is None:
            report = outcome.report
            raise SynthError(
                f"synthesis job {outcome.job} made no valid sample ({report.get('received', 0)} received of "
                f"{report.get('requested', request.n)} requested, batches {report.get('batches')})"
            )
        if not outcome.complete:
            # Some batches failed or were never sent: the run goes on with what came back, and says so.
            batches, kept = outcome.report.get("batches") or {}, outcome.report.get("kept")
            message = (
                f"synthesis job {outcome.job} is incomplete (batches {batches}); the run goes on with {kept} "
                "sample(s). Retrying the run requests only the missing batches."
            )
            events(Event("warning", project, {"stage": stage, "message": message}, run_id))
        stop_if_cancelled(session, run_id)
        run = get_run(session, run_id)
        run.dataset_version_id = outcome.change.version.id
        session.add(run)
        session.commit()


def prepare_for_run(
    session: Session,
    run_id: int,
    *,
    events: EventSink = ignore_events,
    stop: threading.Event | None = None,
) -> None:
    """Filter, then split, the run's dataset version as its plan asks, and point the run at the result. Moves the run
    queued → preparing and leaves it there (training moves it on); commits."""
    stage = "prepare"
    run = _enter(session, run_id, stage)
    with _failing(session, run_id, stage):
        plan = plan_of(run) or PreparePlan()
        project = _project_name(session, run)
        source = _source_version(session, run)
        dataset = _dataset_of(session, source).name
        version, steps = source, []
        todo: list[tuple[str, Callable[..., VersionChange], BaseModel | None]] = [
            ("filter", filter_version, plan.filter),
            ("split", split_version, plan.split),
        ]
        for step, make, config in todo:
            if config is None:
                continue
            _check_stop(session, run_id, stop)
            change = make(
                session,
                project,
                dataset_name=dataset,
                number=version.number,
                config=config,
                actor=worker_actor(),
                platform=PLATFORM,
            )
            version = change.version
            counts = _step_counts(step, change.detail)
            steps.append({"step": step, "version": version.number, **counts})
            events(_step_event(project, run_id, step, version, change.created, **counts))
        stop_if_cancelled(session, run_id)
        run = get_run(session, run_id)
        run.dataset_version_id = version.id
        session.add(run)
        session.add(
            AuditEvent(
                actor=worker_actor(),
                platform=PLATFORM,
                action=PREPARED,
                project_id=run.project_id,
                subject_type="run",
                subject_id=run_id,
                detail={"source_version": source.id, "version": version.id, "dataset": dataset, "steps": steps},
            )
        )
        session.commit()
    summary = " → ".join([f"v{source.number}", *(_step_summary(step) for step in steps)])
    payload = {"stage": stage, "version": version.number, "dataset": dataset, "summary": summary, "steps": steps}
    events(Event("report", project, payload, run_id))


# --- helpers -----------------------------------------------------------------------------------


def _enter(session: Session, run_id: int, stage: str) -> Run:
    """The run, moved to preparing and committed (synthesis writes from sessions of its own, which SQLite would
    block behind an open write). A run in any other state is left alone: this stage is not its to run."""
    stop_if_cancelled(session, run_id)
    run = get_run(session, run_id)
    if run.state not in _ENTERED_FROM:
        raise PrepareError(f"run {run_id} is {run.state}; its {stage} stage runs only while it is queued or preparing")
    if run.state == "queued":
        transition(session, run, "preparing", actor=worker_actor(), platform=PLATFORM, detail={"stage": stage})
        session.commit()
    return run


@contextmanager
def _failing(session: Session, run_id: int, stage: str) -> Iterator[None]:
    """Any failure inside marks the run failed, commits that, and raises PrepareError; a cancelled run or a stopped
    worker leaves the run as it is."""
    try:
        yield
    except (RunCancelled, StageStopped):
        session.rollback()
        raise
    except Exception as error:
        message = f"run {run_id}: the {stage} stage failed: {_cause(error)}"
        fail_run(session, run_id, message, actor=worker_actor())
        session.commit()
        raise PrepareError(message) from error


def _cause(error: Exception) -> str:
    text = str(error).strip()
    # The data half's own errors read as sentences; anything else is named by its type.
    known = isinstance(error, RunError | SynthError | DataError | NotFoundError | ValueError)
    return text if known and text else f"{type(error).__name__}: {text}"


def _check_stop(session: Session, run_id: int, stop: threading.Event | None) -> None:
    stop_if_cancelled(session, run_id)
    if stop is not None and stop.is_set():
        raise StageStopped(f"run {run_id}: the worker stopped its preparation; the stage runs again")


def _tagged(events: EventSink, run_id: int) -> EventSink:
    """Synthesis announces events without a run: each gets this run's id on its way out."""

    def sink(event: Event) -> None:
        events(replace(event, run=run_id))

    return sink


def _source_version(session: Session, run: Run) -> DatasetVersion:
    """The version to prepare: the run's, unless an earlier attempt already prepared it (its commit landed, but the
    job did not finish), in which case the version that attempt started from."""
    if run.dataset_version_id is None:
        raise RunError(f"run {run.id} has no dataset version to prepare: import data or plan a synthesis")
    last = session.exec(
        select(AuditEvent)
        .where(AuditEvent.subject_type == "run", AuditEvent.subject_id == run.id, AuditEvent.action == PREPARED)
        .order_by(col(AuditEvent.id).desc())
    ).first()
    detail = (last.detail or {}) if last else {}
    wanted = detail.get("source_version") if detail.get("version") == run.dataset_version_id else None
    version = session.get(DatasetVersion, wanted or run.dataset_version_id)
    if version is None:
        raise RunError(f"run {run.id} points at dataset version id {wanted or run.dataset_version_id}, which is gone")
    return version


def _dataset_of(session: Session, version: DatasetVersion) -> Dataset:
    dataset = session.get(Dataset, version.dataset_id)
    assert dataset is not None  # a foreign key
    return dataset


def _version_number(session: Session, run: Run) -> int | None:
    version = session.get(DatasetVersion, run.dataset_version_id) if run.dataset_version_id else None
    return version.number if version else None


def _dataset_name(session: Session, run: Run) -> str:
    """The dataset of the run's version; the project's default dataset for a run that starts from nothing."""
    version = session.get(DatasetVersion, run.dataset_version_id) if run.dataset_version_id else None
    return _dataset_of(session, version).name if version else DEFAULT_DATASET


def _project_name(session: Session, run: Run) -> str:
    project = session.get(Project, run.project_id)
    assert project is not None  # a foreign key
    return project.name


def _step_event(project: str, run_id: int, step: str, version: DatasetVersion, created: bool, **counts: Any) -> Event:
    payload = {"stage": "prepare", "state": "preparing", "step": step, "version": version.number, "created": created}
    return Event("stage", project, {**payload, **counts}, run_id)


def _step_counts(step: str, detail: dict[str, Any]) -> dict[str, Any]:
    """What a step's version detail says it did, for its event and the run's audit."""
    if step == "filter":
        return {"in": detail["in"], "out": detail["out"], "removed_by_rule": detail["removed_by_rule"]}
    return {"counts": {name: count for name, count in detail["counts"].items() if count}}


def _step_summary(step: dict[str, Any]) -> str:
    if step["step"] == "filter":
        return f"filter v{step['version']} ({step['in']} → {step['out']})"
    counts = ", ".join(f"{name} {count}" for name, count in step["counts"].items())
    return f"split v{step['version']} ({counts})"
