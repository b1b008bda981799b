"""The arq job functions: one per stage, each running the engine's own function for it.

A job claims its Job row (one conditional UPDATE, so two workers never both run it), keeps a heartbeat in that row
while the stage runs in a thread, records how it ended, and queues the stage the run's new state calls for
(trained → evaluate). A stage that raises is recorded, not retried: the run is failed (or cancelled) in the database
and a retry is a person's decision. Only a worker's shutdown re-raises, so that arq runs the job again."""

import asyncio
import logging
import threading
from collections.abc import Callable
from dataclasses import fields
from datetime import datetime
from typing import Any

import redis
from sqlalchemy import update
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from engine.database import get_engine
from engine.event_stream import fan_out, stream_sink
from engine.events import Event, EventSink
from engine.runs import RunError, get_run, stop_if_cancelled
from engine.settings import get_settings
from engine.work.jobs import STAGE_OF_STATE, enqueue_stage
from storage.models import AuditEvent, Job, Project, utcnow

logger = logging.getLogger(__name__)

Stage = Callable[[Session, int, EventSink, threading.Event], None]


async def train(ctx: dict[str, Any], run_id: int) -> str:
    return await run_job(ctx, run_id, _train)


async def evaluate(ctx: dict[str, Any], run_id: int) -> str:
    return await run_job(ctx, run_id, _evaluate)


async def deploy(ctx: dict[str, Any], run_id: int) -> str:
    return await run_job(ctx, run_id, _deploy)


async def run_job(ctx: dict[str, Any], run_id: int, stage: Stage) -> str:
    """Run one stage of a run as the job arq handed this worker; returns how the Job ended."""
    engine, settings = get_engine(), get_settings()
    arq_job_id = ctx["job_id"]
    job = claim(engine, arq_job_id, ctx["worker_name"])
    if job is None:
        return "skipped"  # ended, lost or taken by another worker: the database says it is not ours to run
    progress = {"value": 0.0}
    beating = asyncio.create_task(heartbeat(engine, job, progress, settings.heartbeat_every_s))
    stop = threading.Event()
    client = redis.Redis.from_url(settings.redis_url)
    events = fan_out(stream_sink(client), _progress_into(progress))
    try:
        await asyncio.to_thread(_in_session, engine, stage, run_id, events, stop)
    except asyncio.CancelledError:
        # The worker is shutting down past job_completion_wait: the training stops at its next step, keeping a
        # checkpoint, and arq runs this job again (it counts as a try).
        stop.set()
        _finish(engine, job, "interrupted", "the worker shut down; the job runs again")
        raise
    except Exception as error:  # every failure is recorded on the Job and the run
        with Session(engine) as session:
            cancelled = get_run(session, run_id).state == "cancelled"
        status = "cancelled" if cancelled else "failed"
        _finish(engine, job, status, None if cancelled else f"{type(error).__name__}: {error}")
        return status
    finally:
        beating.cancel()
        client.close()
    _finish(engine, job, "done", None)
    await _queue_next(engine, ctx["redis"], run_id, job.stage)
    return "done"


def claim(engine: Engine, arq_job_id: str, worker: str) -> Job | None:
    """Mark the Job running on `worker`, if it is waiting to run; None when it is not (or has no row)."""
    now = utcnow()
    with Session(engine, expire_on_commit=False) as session:
        claimed = session.exec(
            update(Job)
            .where(col(Job.arq_job_id) == arq_job_id, col(Job.status).in_(("queued", "interrupted")))
            .values(status="running", worker=worker, started_at=now, heartbeat_at=now, error=None)
            .execution_options(synchronize_session=False)
        )
        session.commit()
        if claimed.rowcount != 1:
            logger.info("job %s is not waiting to run; skipped", arq_job_id)
            return None
        return session.exec(select(Job).where(Job.arq_job_id == arq_job_id)).one()


async def heartbeat(engine: Engine, job: Job, progress: dict[str, float], every_s: float) -> None:
    """Write `heartbeat_at` (and progress) every `every_s` while the job runs; the reconciler re-queues a job whose
    heartbeat stops."""
    while True:
        await asyncio.sleep(every_s)
        try:
            beat = await asyncio.to_thread(_beat, engine, job, progress["value"])
        except Exception:  # a missed beat is retried at the next; the stage goes on
            logger.exception("could not record the heartbeat of job %s", job.arq_job_id)
            continue
        if not beat:
            logger.warning("job %s is no longer running here in the database's view", job.arq_job_id)


def _beat(engine: Engine, job: Job, progress: float) -> bool:
    with Session(engine) as session:
        beat = session.exec(
            update(Job)
            .where(col(Job.id) == job.id, col(Job.status) == "running")
            .values(heartbeat_at=utcnow(), progress=progress)
            .execution_options(synchronize_session=False)
        )
        session.commit()
        return beat.rowcount == 1


def _finish(engine: Engine, job: Job, status: str, error: str | None) -> None:
    finished: datetime | None = None if status == "interrupted" else utcnow()
    with Session(engine) as session:
        session.exec(
            update(Job)
            .where(col(Job.id) == job.id, col(Job.status) == "running")
            .values(status=status, error=error, finished_at=finished, **({"progress": 1.0} if status == "done" else {}))
            .execution_options(synchronize_session=False)
        )
        session.commit()


async def _queue_next(engine: Engine, redis_pool: Any, run_id: int, stage: str) -> None:
    """Queue the stage the run's state now calls for (a trained run is evaluating); none when people decide next."""
    with Session(engine, expire_on_commit=False) as session:
        following = STAGE_OF_STATE.get(get_run(session, run_id).state)
        if following and following != stage:
            await enqueue_stage(session, redis_pool, run_id, following)


def _in_session(engine: Engine, stage: Stage, run_id: int, events: EventSink, stop: threading.Event) -> None:
    with Session(engine, expire_on_commit=False) as session:
        stop_if_cancelled(session, run_id)
        stage(session, run_id, events, stop)


def _project_of(session: Session, run_id: int) -> Project:
    project = session.get(Project, get_run(session, run_id).project_id)
    assert project is not None  # a foreign key
    return project


def _train(session: Session, run_id: int, events: EventSink, stop: threading.Event) -> None:
    from engine.train.sft import train as train_run
    from engine.work.stopping import StopOnShutdown

    project = _project_of(session, run_id)
    train_run(session, project.name, None, None, run_id=run_id, events=events, callbacks=[StopOnShutdown(stop)])


def _evaluate(session: Session, run_id: int, events: EventSink, stop: threading.Event) -> None:
    from engine.evaluate.run import evaluate_run

    evaluate_run(session, run_id, evaluation_options(_project_of(session, run_id)), events=events)


def _deploy(session: Session, run_id: int, events: EventSink, stop: threading.Event) -> None:
    from engine.runs import deploy_approved

    try:
        deploy_approved(session, run_id, _approver(session, run_id), platform="worker")
    finally:
        session.commit()  # a failed deployment marks the run failed before raising; that is kept


def evaluation_options(project: Project) -> Any:
    """The project's `settings.evaluation` (EvaluationOptions' fields, plus `max_new_tokens`), defaults elsewhere."""
    from engine.evaluate.generate import GenerationSettings
    from engine.evaluate.run import EvaluationOptions

    raw = dict((project.settings or {}).get("evaluation") or {})
    known = {f.name for f in fields(EvaluationOptions)} - {"generation"}
    unknown = set(raw) - known - {"max_new_tokens"}
    if unknown:
        raise RunError(f"project {project.name}: unknown settings.evaluation keys {', '.join(sorted(unknown))}")
    generation = GenerationSettings(max_new_tokens=raw.pop("max_new_tokens", 128))
    return EvaluationOptions(generation=generation, **raw)


def _approver(session: Session, run_id: int) -> str:
    """Who approved the run: the actor of its latest move to deploying."""
    event = session.exec(
        select(AuditEvent)
        .where(AuditEvent.subject_type == "run", AuditEvent.subject_id == run_id, AuditEvent.action == "run.deploying")
        .order_by(col(AuditEvent.id).desc())
    ).first()
    if event is None:
        raise RunError(f"run {run_id} was never approved; it cannot be deployed")
    return event.actor


def _progress_into(progress: dict[str, float]) -> EventSink:
    def note(event: Event) -> None:
        done, total = event.payload.get("done"), event.payload.get("total")
        if event.type == "progress" and isinstance(done, int | float) and total:
            progress["value"] = min(1.0, done / total)

    return note
