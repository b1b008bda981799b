"""The arq job functions: one per stage, each running the engine's own function for it.

A job claims its Job row (one conditional UPDATE, so two workers never both run it), runs its stage in a thread only
if the run still calls for that stage, keeps a heartbeat in the row meanwhile, records how it ended, and queues the
stage that comes next (prepare → train → generate → judge → report). Every event a stage announces is kept in the
database and appended to the stream (engine.events.stream.Announcer).

A stage that raises is recorded, not retried: the run is failed (or cancelled) in the database and a retry is a
person's decision. A stage that is stopped does not fail its run: on a worker's shutdown the job re-raises so that
arq runs it again (a training saves a checkpoint first); a job the reconciler gave to another worker, because this
one went silent, stops at its next event and leaves the run to that worker."""

import asyncio
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any

import redis
from sqlalchemy import update
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from engine.database import get_engine
from engine.events import Event, EventSink
from engine.events.stream import Announcer, fan_out
from engine.loop.runs import RunError, StageStopped, fail_run, get_run, stop_if_cancelled, worker_actor
from engine.settings import get_settings
from engine.work.jobs import enqueue_stage, next_stage
from storage.models import AuditEvent, Job, Project, utcnow

logger = logging.getLogger(__name__)

STOP_WAIT_S = 600.0  # how long a stopping worker waits for its stage to stop (a training: its step and checkpoint)

Stage = Callable[[Session, int, EventSink, "Stopping"], None]


async def synthesize(ctx: dict[str, Any], run_id: int) -> str:
    return await run_job(ctx, run_id, _synthesize)


async def prepare(ctx: dict[str, Any], run_id: int) -> str:
    return await run_job(ctx, run_id, _prepare)


async def train(ctx: dict[str, Any], run_id: int) -> str:
    return await run_job(ctx, run_id, _train)


async def generate(ctx: dict[str, Any], run_id: int) -> str:
    return await run_job(ctx, run_id, _generate)


async def judge(ctx: dict[str, Any], run_id: int) -> str:
    return await run_job(ctx, run_id, _judge)


async def report(ctx: dict[str, Any], run_id: int) -> str:
    return await run_job(ctx, run_id, _report)


async def deploy(ctx: dict[str, Any], run_id: int) -> str:
    return await run_job(ctx, run_id, _deploy)


@dataclass
class Stopping:
    """Why a stage must stop. `shutdown`: the worker is stopping (a training saves a checkpoint first). `lost`: the
    reconciler gave the job to another worker (this one was silent too long); stop at once and write nothing."""

    shutdown: threading.Event = field(default_factory=threading.Event)
    lost: threading.Event = field(default_factory=threading.Event)


async def run_job(ctx: dict[str, Any], run_id: int, stage: Stage) -> str:
    """Run one stage of a run as the job arq handed this worker; returns how the Job ended."""
    engine, settings = get_engine(), get_settings()
    arq_job_id = ctx["job_id"]
    job = claim(engine, arq_job_id, ctx["worker_name"])
    if job is None:
        return "skipped"  # ended, lost or taken by another worker: the database says it is not ours to run
    progress = {"value": 0.0}
    stopping = Stopping()
    beating = asyncio.create_task(heartbeat(engine, job, progress, settings.heartbeat_every_s, stopping.lost))
    client = redis.Redis.from_url(settings.redis_url)
    announcer = Announcer(engine, client)
    events = fan_out(_stop_when(stopping, job.stage), announcer, _progress_into(progress))
    running = asyncio.ensure_future(asyncio.to_thread(_in_session, engine, stage, job, events, stopping))
    try:
        ran = await asyncio.shield(running)
    except asyncio.CancelledError:
        # The worker is shutting down past job_completion_wait: the stage stops (a training at its next step,
        # keeping a checkpoint), and arq runs this job again (it counts as a try). The process waits for the stage
        # to stop, its heartbeat going on: were it to exit first, the thread would die half-way through writing.
        stopping.shutdown.set()
        await asyncio.wait([running], timeout=STOP_WAIT_S)
        if _completed(running):  # it finished meanwhile: arq's next try finds it done and skips it
            _finish(engine, job, "done", None)
        else:
            _finish(engine, job, "interrupted", "the worker shut down; the job runs again")
        raise
    except StageStopped as error:  # the job was given to another worker: its row says so already
        logger.warning("job %s stopped: %s", arq_job_id, error)
        return "stopped"
    except Exception as error:  # every failure is recorded on the Job and the run
        logger.exception("job %s failed", arq_job_id)
        status = _record_failure(engine, job, error)
        _finish(engine, job, status, None if status == "cancelled" else f"{type(error).__name__}: {error}")
        return status
    finally:
        beating.cancel()
        await asyncio.to_thread(announcer.close)
        client.close()
    if not ran:
        return "skipped"
    _finish(engine, job, "done", None)
    await _queue_next(engine, ctx["redis"], run_id)
    return "done"


def _completed(running: "asyncio.Future[bool]") -> bool:
    """Whether the stage's thread ended by doing its work (a stopped stage raised StageStopped)."""
    return running.done() and running.exception() is None and running.result()


def _record_failure(engine: Engine, job: Job, error: Exception) -> str:
    """How the job ended: cancelled when its run was, else failed, and the run failed with it if the stage did not
    say so itself (a check that refused before the stage began): a failed run is a person's to retry, not the
    reconciler's."""
    with Session(engine) as session:
        state = get_run(session, job.run_id).state
        if state == "cancelled":
            return "cancelled"
        if state != "failed":
            fail_run(session, job.run_id, f"the {job.stage} stage failed: {error}", actor=worker_actor())
            session.commit()
    return "failed"


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


async def heartbeat(
    engine: Engine, job: Job, progress: dict[str, float], every_s: float, lost: threading.Event
) -> None:
    """Write `heartbeat_at` (and progress) every `every_s` while the job runs; the reconciler re-queues a job whose
    heartbeat stops. When the row says the job is no longer running here (marked lost while this worker was
    silent), set `lost`: the stage stops, since another worker runs it now."""
    while True:
        await asyncio.sleep(every_s)
        try:
            beat = await asyncio.to_thread(_beat, engine, job, progress["value"])
        except Exception:  # a missed beat is retried at the next; the stage goes on
            logger.exception("could not record the heartbeat of job %s", job.arq_job_id)
            continue
        if not beat:
            logger.warning("job %s is no longer running here in the database's view; stopping it", job.arq_job_id)
            lost.set()
            return


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


async def _queue_next(engine: Engine, redis_pool: Any, run_id: int) -> None:
    """Queue the stage the run now calls for (a trained run is evaluating: generate); none when people decide next."""
    with Session(engine, expire_on_commit=False) as session:
        following = next_stage(session, get_run(session, run_id))
        if following:
            await enqueue_stage(session, redis_pool, run_id, following)


def _in_session(engine: Engine, stage: Stage, job: Job, events: EventSink, stopping: Stopping) -> bool:
    """Run the stage unless the run no longer calls for it (an earlier attempt finished it after all, or the run
    moved on); False, and the Job marked skipped, then."""
    with Session(engine, expire_on_commit=False) as session:
        stop_if_cancelled(session, job.run_id)
        wanted = next_stage(session, get_run(session, job.run_id))
        if wanted != job.stage:
            state = get_run(session, job.run_id).state
            _finish(engine, job, "skipped", f"the run is {state}; it calls for {wanted or 'no stage'} now")
            return False
        stage(session, job.run_id, events, stopping)
        return True


def _project_of(session: Session, run_id: int) -> Project:
    project = session.get(Project, get_run(session, run_id).project_id)
    assert project is not None  # a foreign key
    return project


def _synthesize(session: Session, run_id: int, events: EventSink, stopping: Stopping) -> None:
    from engine.loop.prepare import synthesize_for_run

    synthesize_for_run(session, run_id, events=events, stop=stopping.lost)


def _prepare(session: Session, run_id: int, events: EventSink, stopping: Stopping) -> None:
    from engine.loop.prepare import prepare_for_run

    prepare_for_run(session, run_id, events=events, stop=stopping.lost)


def _train(session: Session, run_id: int, events: EventSink, stopping: Stopping) -> None:
    from engine.train.sft import train as train_run
    from engine.work.stopping import StopOnShutdown

    project = _project_of(session, run_id)
    stop = StopOnShutdown(stopping.shutdown, stopping.lost)
    train_run(session, project.name, None, None, run_id=run_id, events=events, callbacks=[stop])


def _generate(session: Session, run_id: int, events: EventSink, stopping: Stopping) -> None:
    from engine.evaluate.run import generate_for_run

    generate_for_run(session, run_id, evaluation_options(_project_of(session, run_id)), events=events)


def _judge(session: Session, run_id: int, events: EventSink, stopping: Stopping) -> None:
    from engine.evaluate.run import judge_for_run

    judge_for_run(session, run_id, evaluation_options(_project_of(session, run_id)), events=events)


def _report(session: Session, run_id: int, events: EventSink, stopping: Stopping) -> None:
    from engine.evaluate.run import report_for_run

    report_for_run(session, run_id, evaluation_options(_project_of(session, run_id)), events=events)


def _deploy(session: Session, run_id: int, events: EventSink, stopping: Stopping) -> None:
    from engine.loop.runs import deploy_approved

    try:
        deploy_approved(session, run_id, _approver(session, run_id), platform="worker")
    finally:
        session.commit()  # a failed deployment marks the run failed before raising; that is kept


def evaluation_options(project: Project) -> Any:
    """The project's `settings.evaluation` (EvaluationOptions' fields, plus `max_new_tokens`), defaults elsewhere."""
    from engine.evaluate.results import GenerationSettings
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


def _stop_when(stopping: Stopping, stage: str) -> EventSink:
    """A sink that stops the stage at its next event once it must stop. A training stops through its trainer
    callback instead when the worker shuts down, after saving a checkpoint."""

    def check(_event: Event) -> None:
        if stopping.lost.is_set():
            raise StageStopped(f"the {stage} job was given to another worker; this one stopped")
        if stopping.shutdown.is_set() and stage != "train":
            raise StageStopped(f"the worker shut down during {stage}; the job runs again")

    return check


def _progress_into(progress: dict[str, float]) -> EventSink:
    def note(event: Event) -> None:
        done, total = event.payload.get("done"), event.payload.get("total")
        if event.type == "progress" and isinstance(done, int | float) and total:
            progress["value"] = min(1.0, done / total)

    return note
