"""The whole domain's tables, designed once (see shared/design.md); later issues fill them in.

JSON columns hold structured values that are read and written whole (messages, recipes, scores).
Enumerations are stored as short strings so that adding a state never needs a type migration.
"""

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Column, DateTime, Index, Text, UniqueConstraint
from sqlmodel import Field, SQLModel

# Deterministic constraint names, the same on SQLite and PostgreSQL, so that a later migration can
# name the constraint it drops or alters (SQLite's batch mode cannot touch an unnamed constraint).
# Set before any table is declared: names are given when a constraint is attached to its table.
SQLModel.metadata.naming_convention = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_N_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(UTC)


def _json(nullable: bool = True) -> Any:
    return Field(default=None, sa_column=Column(JSON, nullable=nullable))


def _created() -> Any:
    return Field(default_factory=utcnow, sa_column=Column(DateTime(timezone=True), nullable=False))


def _when() -> Any:
    return Field(default=None, sa_column=Column(DateTime(timezone=True), nullable=True))


class Project(SQLModel, table=True):
    __tablename__ = "projects"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(index=True, unique=True, max_length=100)
    base_model: str | None = None
    tokenizer_path: str | None = None
    chat_template: str | None = Field(default=None, sa_column=Column(Text))
    recipe: dict | None = _json()
    deploy_target: str | None = None
    platform: str | None = Field(default=None, max_length=20)  # slack | telegram | cli
    channel_id: str | None = None
    reviewers: list | None = _json()
    approvers: list | None = _json()
    settings: dict | None = _json()  # filter, split and gate settings chosen for this project
    created_at: datetime = _created()


class Dataset(SQLModel, table=True):
    __tablename__ = "datasets"
    __table_args__ = (UniqueConstraint("project_id", "name"),)

    id: int | None = Field(default=None, primary_key=True)
    project_id: int = Field(foreign_key="projects.id", index=True)
    name: str = Field(max_length=100)
    created_at: datetime = _created()


class DatasetVersion(SQLModel, table=True):
    """An immutable snapshot; `content_hash` covers every sample and its per-version attributes."""

    __tablename__ = "dataset_versions"
    __table_args__ = (UniqueConstraint("dataset_id", "number"), UniqueConstraint("dataset_id", "content_hash"))

    id: int | None = Field(default=None, primary_key=True)
    dataset_id: int = Field(foreign_key="datasets.id", index=True)
    number: int
    content_hash: str = Field(max_length=64)
    parent_id: int | None = Field(default=None, foreign_key="dataset_versions.id")
    kind: str = Field(max_length=20)  # upload | synthesis | filter | split | review
    summary: str = ""
    detail: dict | None = _json()  # what changed: import stats, filter report, split counts
    source_path: str | None = None
    source_format: str | None = Field(default=None, max_length=40)
    sample_count: int = 0  # samples that are in use (not filtered out)
    total_count: int = 0
    reviewed: bool = True
    created_by: str | None = None
    created_at: datetime = _created()


class Sample(SQLModel, table=True):
    """One sample as it stands in one dataset version (versions are self-contained snapshots)."""

    __tablename__ = "samples"
    __table_args__ = (
        UniqueConstraint("version_id", "position"),
        Index("ix_samples_version_hash", "version_id", "content_hash"),
    )

    id: int | None = Field(default=None, primary_key=True)
    version_id: int = Field(foreign_key="dataset_versions.id")
    position: int
    content_hash: str = Field(max_length=64)
    messages: list = Field(sa_column=Column(JSON, nullable=False))
    rejected: dict | None = _json()  # preference data: the rejected final assistant turn
    tools: list | None = _json()
    label: bool | None = None  # KTO's tag: False for an answer labelled bad
    tags: list | None = _json()
    origin: str = Field(default="upload", max_length=20)  # upload | synthetic | review
    split: str | None = Field(default=None, max_length=12)  # train | test | validation
    filter_rule: str | None = Field(default=None, max_length=40)
    filter_reason: str | None = Field(default=None, sa_column=Column(Text))
    original: dict | None = _json()  # the record as it came in
    original_format: str | None = Field(default=None, max_length=40)


class Run(SQLModel, table=True):
    __tablename__ = "runs"
    __table_args__ = (UniqueConstraint("project_id", "iteration"),)

    id: int | None = Field(default=None, primary_key=True)
    project_id: int = Field(foreign_key="projects.id", index=True)
    iteration: int | None = 1  # None: refused at its start, so it uses up no iteration number
    parent_run_id: int | None = Field(default=None, foreign_key="runs.id")
    dataset_version_id: int | None = Field(default=None, foreign_key="dataset_versions.id")
    recipe: dict | None = _json()
    state: str = Field(default="queued", max_length=20, index=True)
    requested_by: str | None = None
    platform: str | None = Field(default=None, max_length=20)
    thread_ref: str | None = None  # the chat thread the run reports to
    error: str | None = Field(default=None, sa_column=Column(Text))
    gate_override_reason: str | None = Field(default=None, sa_column=Column(Text))
    artifact_prefix: str | None = None
    # What the run prepares before it trains (synthesis, filter, split), as engine.loop.prepare.PreparePlan holds it
    plan: dict | None = _json()
    created_at: datetime = _created()
    updated_at: datetime | None = _when()


class Job(SQLModel, table=True):
    __tablename__ = "jobs"

    id: int | None = Field(default=None, primary_key=True)
    run_id: int = Field(foreign_key="runs.id", index=True)
    stage: str = Field(max_length=20)  # synthesize | prepare | train | generate | judge | report | deploy
    queue: str = Field(max_length=10)  # gpu | cpu
    arq_job_id: str = Field(unique=True)  # "{run}:{stage}:{attempt}"
    attempt: int = 1
    # queued, running, interrupted (its worker stopped it), done, failed, lost, skipped (nothing to do), cancelled
    status: str = Field(default="queued", max_length=20)
    progress: float = 0.0
    worker: str | None = None
    error: str | None = Field(default=None, sa_column=Column(Text))
    enqueued_at: datetime = _created()
    started_at: datetime | None = _when()
    heartbeat_at: datetime | None = _when()
    finished_at: datetime | None = _when()


class Metric(SQLModel, table=True):
    __tablename__ = "metrics"
    __table_args__ = (Index("ix_metrics_run_step", "run_id", "step"),)

    id: int | None = Field(default=None, primary_key=True)
    run_id: int = Field(foreign_key="runs.id")
    step: int
    epoch: float | None = None
    loss: float | None = None
    eval_loss: float | None = None
    learning_rate: float | None = None
    grad_norm: float | None = None
    tokens_per_second: float | None = None
    eta_seconds: float | None = None
    created_at: datetime = _created()


class Evaluation(SQLModel, table=True):
    __tablename__ = "evaluations"

    id: int | None = Field(default=None, primary_key=True)
    run_id: int = Field(foreign_key="runs.id", index=True)
    judge_kind: str = Field(max_length=10)  # llm | metric
    judge_model: str | None = None
    prompt_version: str | None = None
    scores: dict | None = _json()  # aggregate scores, win rate, reference metrics, stability, forgetting
    gate_passed: bool | None = None
    gate_reasons: list | None = _json()
    invalid_rate: float | None = None
    cost_usd: float | None = None
    report_path: str | None = None
    created_at: datetime = _created()


class Judgement(SQLModel, table=True):
    __tablename__ = "judgements"

    id: int | None = Field(default=None, primary_key=True)
    evaluation_id: int = Field(foreign_key="evaluations.id", index=True)
    sample_id: int | None = Field(default=None, foreign_key="samples.id")
    question: str = Field(sa_column=Column(Text, nullable=False))
    reference: str | None = Field(default=None, sa_column=Column(Text))
    base_answer: str | None = Field(default=None, sa_column=Column(Text))
    tuned_answer: str | None = Field(default=None, sa_column=Column(Text))
    scores: dict | None = _json()  # per dimension
    overall: float | None = None
    pairwise: str | None = Field(default=None, max_length=10)  # tuned | base | tie
    reason: str | None = Field(default=None, sa_column=Column(Text))
    valid: bool = True
    raw_reply: str | None = Field(default=None, sa_column=Column(Text))
    judge_model: str | None = None
    prompt_version: str | None = None
    tags: list | None = _json()
    position: int | None = None  # the sample's place among the evaluation's test samples
    # What the columns above leave out: the base answer's grade, both pairwise verdicts with their raw
    # replies, and the reference metrics of both answers.
    detail: dict | None = _json()
    created_at: datetime = _created()


class Review(SQLModel, table=True):
    __tablename__ = "reviews"

    id: int | None = Field(default=None, primary_key=True)
    judgement_id: int | None = Field(default=None, foreign_key="judgements.id", index=True)
    sample_id: int | None = Field(default=None, foreign_key="samples.id")
    reviewer: str
    platform: str | None = Field(default=None, max_length=20)
    verdict: str = Field(max_length=10)  # keep | fix | drop
    corrected_answer: str | None = Field(default=None, sa_column=Column(Text))
    comment: str | None = Field(default=None, sa_column=Column(Text))
    created_at: datetime = _created()


class PreferencePair(SQLModel, table=True):
    """A reviewer's Fix of a judged sample as preference data: the prompt, the corrected answer (chosen) and the
    tuned model's answer (rejected). A later review of the same judgement supersedes it (`active` false)."""

    __tablename__ = "preference_pairs"

    id: int | None = Field(default=None, primary_key=True)
    project_id: int = Field(foreign_key="projects.id", index=True)
    run_id: int = Field(foreign_key="runs.id")  # the run whose evaluation was reviewed
    judgement_id: int = Field(foreign_key="judgements.id", index=True)
    review_id: int = Field(foreign_key="reviews.id", unique=True)
    prompt: list = Field(sa_column=Column(JSON, nullable=False))  # the messages before the answer
    chosen: str = Field(sa_column=Column(Text, nullable=False))
    rejected: str = Field(sa_column=Column(Text, nullable=False))
    tags: list | None = _json()
    active: bool = True
    created_at: datetime = _created()


class Adapter(SQLModel, table=True):
    __tablename__ = "adapters"

    id: int | None = Field(default=None, primary_key=True)
    project_id: int = Field(foreign_key="projects.id", index=True)
    run_id: int | None = Field(default=None, foreign_key="runs.id")
    dataset_version_id: int | None = Field(default=None, foreign_key="dataset_versions.id")
    path: str
    sha256: str = Field(max_length=64)
    size_bytes: int = Field(sa_column=Column(BigInteger, nullable=False))
    base_model: str
    rank: int | None = None
    finetuning_type: str = Field(default="lora", max_length=10)
    recipe: dict | None = _json()
    created_at: datetime = _created()


class Deployment(SQLModel, table=True):
    __tablename__ = "deployments"

    id: int | None = Field(default=None, primary_key=True)
    project_id: int = Field(foreign_key="projects.id", index=True)
    adapter_id: int = Field(foreign_key="adapters.id")
    # Indexed: the gateway resolves a name on every request.
    model_name: str = Field(index=True)  # the stable name clients call, e.g. customer_service
    version_name: str = Field(index=True)  # e.g. customer_service-v3
    servers: list | None = _json()
    status: str = Field(default="pending", max_length=20)  # pending | active | superseded | failed | rolled_back
    previous_deployment_id: int | None = Field(default=None, foreign_key="deployments.id")
    approved_by: str | None = None
    approved_at: datetime | None = _when()
    error: str | None = Field(default=None, sa_column=Column(Text))
    created_at: datetime = _created()


class Artifact(SQLModel, table=True):
    """A file in the artifact store; `key` is relative to the store's root."""

    __tablename__ = "artifacts"

    id: int | None = Field(default=None, primary_key=True)
    project_id: int | None = Field(default=None, foreign_key="projects.id", index=True)
    run_id: int | None = Field(default=None, foreign_key="runs.id")
    key: str = Field(unique=True)
    sha256: str = Field(max_length=64)
    size_bytes: int = Field(sa_column=Column(BigInteger, nullable=False))
    kind: str | None = Field(default=None, max_length=30)  # report | chart | export | checkpoint | adapter
    created_at: datetime = _created()


class AuditEvent(SQLModel, table=True):
    __tablename__ = "audit_events"

    id: int | None = Field(default=None, primary_key=True)
    actor: str
    platform: str | None = Field(default=None, max_length=20)
    action: str = Field(max_length=60)
    project_id: int | None = Field(default=None, foreign_key="projects.id", index=True)
    subject_type: str | None = Field(default=None, max_length=30)
    subject_id: int | None = None
    detail: dict | None = _json()
    created_at: datetime = _created()


class RunEvent(SQLModel, table=True):
    """An event the engine announced, kept after the stream lets it go: a run's story can be read back from the
    database alone. `event_id` is the uuid the stream entry carries, so the two can be matched. Every move of a run
    is one too, written in the move's own transaction, so that no move is announced that did not happen."""

    __tablename__ = "run_events"

    id: int | None = Field(default=None, primary_key=True)
    event_id: str = Field(max_length=32, unique=True)
    run_id: int | None = Field(default=None, foreign_key="runs.id", index=True)
    project: str = Field(max_length=100)
    type: str = Field(max_length=20)  # progress | stage | report | warning | failure
    payload: dict | None = _json()
    created_at: datetime = _created()
    # When it reached the stream; None: not yet (a run's move, written with the move, or Redis was away). Workers
    # relay such events (engine.events.stream.relay_events).
    streamed_at: datetime | None = Field(default=None, sa_column=Column(DateTime(timezone=True), index=True))


class SynthBatch(SQLModel, table=True):
    """One paid request of a synthesis job, stored the moment its reply arrives so that a resumed
    job never pays for it again. Batch -1 is the job's frozen sub-scenario plan: `samples` holds
    the sub-scenarios and `invalid` {"source": user | tags | model | fallback}."""

    __tablename__ = "synth_batches"
    __table_args__ = (UniqueConstraint("job_key", "batch_index"),)

    id: int | None = Field(default=None, primary_key=True)
    project_id: int = Field(foreign_key="projects.id", index=True)
    job_key: str = Field(max_length=100)
    batch_index: int
    fingerprint: str = Field(max_length=64)  # sha256 of what was asked (model, messages, sampling)
    status: str = Field(max_length=10)  # ok | failed
    model: str | None = None
    response_format: str | None = Field(default=None, max_length=20)  # json_schema | json_object | text
    raw_reply: str | None = Field(default=None, sa_column=Column(Text))
    samples: list | None = _json()  # valid samples, canonical form, tags included
    invalid: dict | None = _json()  # reason -> count, for this batch's reply
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float | None = None
    attempts: int = 0
    error: str | None = Field(default=None, sa_column=Column(Text))
    created_at: datetime = _created()


class ChatAction(SQLModel, table=True):
    """An action a chat button performs, kept server-side under a short key: the button carries only the key, which
    fits Telegram's 64 bytes of callback data and cannot be forged into another action."""

    __tablename__ = "chat_actions"

    id: int | None = Field(default=None, primary_key=True)
    key: str = Field(max_length=24, unique=True)
    action: dict = Field(sa_column=Column(JSON, nullable=False))
    asks: str | None = Field(default=None, sa_column=Column(Text))  # the prompt for text the action needs first
    created_at: datetime = _created()


class ChatUser(SQLModel, table=True):
    """What a person chose for themselves on a platform: the language they are answered in."""

    __tablename__ = "chat_users"
    __table_args__ = (UniqueConstraint("platform", "user_id"),)

    id: int | None = Field(default=None, primary_key=True)
    platform: str = Field(max_length=20)
    user_id: str = Field(max_length=100)
    language: str | None = Field(default=None, max_length=10)
    created_at: datetime = _created()


class Conversation(SQLModel, table=True):
    """Where a run lives in one chat platform: the channel, the thread its messages go to, the card message kept up
    to date, and the messages whose buttons are replaced when they no longer apply; a restarted bot finds them here.
    `buttons` holds {"id": message id, "title": its text}."""

    __tablename__ = "conversations"
    __table_args__ = (UniqueConstraint("platform", "run_id"),)

    id: int | None = Field(default=None, primary_key=True)
    run_id: int = Field(foreign_key="runs.id", index=True)
    platform: str = Field(max_length=20)
    channel: str = Field(max_length=100)
    thread: str | None = Field(default=None, max_length=100)
    card: str | None = Field(default=None, max_length=100)
    buttons: list | None = _json()
    created_at: datetime = _created()
