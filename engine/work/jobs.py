"""A run's stages as arq jobs: the queue each stage runs on, its Job row, which stage comes next, and putting it on
the queue once.

The database decides what should run; Redis only carries it. A Job row is committed before its arq job is pushed,
so a worker never picks up work the database does not know. Job ids are `{run}:{stage}:{attempt}`: arq refuses an id
it still holds, and the row's id is unique, so enqueuing a stage twice does nothing the second time. A new attempt is
made only when the previous one ended failed or lost (its worker went silent); a retried training resumes from its
last checkpoint because `train(..., run_id=...)` does. A stage that lost its worker `stage_max_lost` times fails the
run instead of being tried forever (a stage that kills its worker, out of memory say, would otherwise loop).

The stages of a run, in order: synthesize and prepare (only when the run's plan asks: engine.loop.prepare) while it is
queued or preparing, train, then generate, judge and report while it is evaluating; deploy once it is approved."""

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from arq.connections import ArqRedis
from arq.constants import in_progress_key_prefix, job_key_prefix, result_key_prefix, retry_key_prefix
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from engine.data.versions import DEFAULT_DATASET, resolve_version
from engine.loop.prepare import PreparePlan, plan_of, stages_of
from engine.loop.projects import get_project, is_listed
from engine.loop.runs import RunError, approve_run, fail_run, get_run, last_retried_at, retry_run, worker_actor
from engine.settings import Settings, get_settings
from engine.train.recipe import Recipe
from engine.train.start import StartRefused, start_samples
from storage.models import Job, Run

QUEUE_OF_STAGE = {
    "synthesize": "cpu",
    "prepare": "cpu",
    "train": "gpu",
    "generate": "gpu",
    "judge": "cpu",
    "report": "cpu",
    "deploy": "cpu",
}
EVALUATION_STAGES = ("generate", "judge", "report")
ACTIVE_STATES = ("queued", "preparing", "training", "evaluating", "deploying")  # states a stage acts on
LIVE = ("queued", "running", "interrupted")  # interrupted: its worker stopped it; arq runs it again
RETRIED_AFTER = ("failed", "lost")


def queue_name(queue: str, settings: Settings | None = None) -> str:
    """The arq queue (a Redis sorted set) of `gpu` or `cpu` work."""
    return f"{(settings or get_settings()).queue_prefix}:{queue}"


def job_id(run_id: int, stage: str, attempt: int) -> str:
    return f"{run_id}:{stage}:{attempt}"


def latest_job(session: Session, run_id: int, stage: str) -> Job | None:
    query = select(Job).where(Job.run_id == run_id, Job.stage == stage).order_by(col(Job.attempt).desc())
    return session.exec(query).first()


def next_stage(session: Session, run: Run) -> str | None:
    """The stage the run's state calls for: the first of its stages for that state that has not ended done; None
    when people decide next (reviewing, approval) or the run has ended."""
    if run.state in ("queued", "preparing"):
        return _first_not_done(session, run, (*stages_of(plan_of(run)), "train"))
    if run.state == "training":
        return "train"
    if run.state == "evaluating":
        return _first_not_done(session, run, EVALUATION_STAGES)
    return "deploy" if run.state == "deploying" else None


def _first_not_done(session: Session, run: Run, stages: tuple[str, ...]) -> str | None:
    for stage in stages:
        job = latest_job(session, run.id, stage)  # type: ignore[arg-type]
        if job is None or job.status != "done":
            return stage
    return None


def is_queued_run(session: Session, run_id: int) -> bool:
    """Whether the run's stages go through the queues (it has jobs); such a run is deployed by a worker too."""
    return session.exec(select(Job.id).where(Job.run_id == run_id)).first() is not None


async def enqueue_stage(session: Session, redis: ArqRedis, run_id: int, stage: str) -> Job:
    """Make sure `stage` of the run is on its queue: reuse its latest Job unless that one ended failed or lost (then
    the next attempt), commit, and push it unless it has ended. Commits the session."""
    if stage not in QUEUE_OF_STAGE:
        raise RunError(f"'{stage}' is not a stage a worker runs (stages: {', '.join(QUEUE_OF_STAGE)})")
    job = latest_job(session, run_id, stage)
    if job is None or job.status in RETRIED_AFTER:
        if _lost_too_often(session, run_id, stage):
            session.commit()
            return job  # type: ignore[return-value]  # a lost job exists: the run is failed now
        attempt = job.attempt + 1 if job else 1
        job = Job(
            run_id=run_id,
            stage=stage,
            queue=QUEUE_OF_STAGE[stage],
            arq_job_id=job_id(run_id, stage, attempt),
            attempt=attempt,
        )
        session.add(job)
        try:
            session.commit()
        except IntegrityError:  # another process made this attempt just now: push theirs (arq keeps one)
            session.rollback()
            job = session.exec(select(Job).where(Job.arq_job_id == job_id(run_id, stage, attempt))).one()
    else:
        session.commit()
    if job.status in LIVE:
        await push(redis, job)
    return job


def _lost_too_often(session: Session, run_id: int, stage: str) -> bool:
    """Fail the run when its stage has lost its worker `stage_max_lost` times since it was last retried; True when
    it did."""
    limit = get_settings().stage_max_lost
    since = last_retried_at(session, run_id)
    lost = [
        job
        for job in session.exec(select(Job).where(Job.run_id == run_id, Job.stage == stage, Job.status == "lost"))
        if since is None or naive_utc(job.enqueued_at) > naive_utc(since)
    ]
    if len(lost) < limit:
        return False
    run = get_run(session, run_id)
    if run.state not in ("failed", "cancelled"):
        reason = f"its {stage} stage lost its worker {len(lost)} times (out of memory, or killed); fix that and retry"
        fail_run(session, run_id, reason, actor=worker_actor())
    return True


def naive_utc(moment: datetime) -> datetime:
    """SQLite returns naive UTC datetimes, PostgreSQL aware ones: compare them alike."""
    return moment.replace(tzinfo=None)


async def push(redis: ArqRedis, job: Job) -> bool:
    """Put the job on its arq queue; False when arq holds that id already (waiting, or its result kept)."""

    def enqueue() -> Any:
        return redis.enqueue_job(job.stage, job.run_id, _job_id=job.arq_job_id, _queue_name=queue_name(job.queue))

    pushed = await enqueue()
    if pushed is None and job.status == "queued" and not await on_queue(redis, job):
        # A result kept under this id for a job that never ran here belongs to another database that shared this
        # Redis (a new database numbers its runs from 1 again): it is not this job's, and would block it for good.
        await redis.delete(result_key_prefix + job.arq_job_id)
        pushed = await enqueue()
    return pushed is not None


async def on_queue(redis: ArqRedis, job: Job) -> bool:
    """Whether arq holds the job: waiting in its queue, or marked in progress by a worker."""
    waiting = await redis.zscore(queue_name(job.queue), job.arq_job_id) is not None
    return waiting or bool(await redis.exists(in_progress_key_prefix + job.arq_job_id))


async def discard(redis: ArqRedis, job: Job) -> None:
    """Remove what arq keeps of a job the database gave up on, so arq never runs it again (a job lost with its
    worker would otherwise be re-run once its in-progress key expires, hours later)."""
    await redis.zrem(queue_name(job.queue), job.arq_job_id)
    await redis.delete(
        *(prefix + job.arq_job_id for prefix in (job_key_prefix, in_progress_key_prefix, retry_key_prefix))
    )


async def submit_run(
    session: Session,
    redis: ArqRedis,
    project: str,
    dataset: int | None,
    recipe: Recipe,
    requested_by: str,
    *,
    dataset_name: str = DEFAULT_DATASET,
    platform: str | None = None,
    plan: PreparePlan | None = None,
    groups: Sequence[str] = (),
) -> Run:
    """A new queued run of `recipe` on a dataset version (the latest when None), its first stage on its queue: the
    preparation its `plan` asks for (synthesis, filter, split: the cpu queue), else training (the gpu queue).
    Refused when the project lists who may start runs (`settings.requesters`) and `requested_by` is not one."""
    from engine.train.sft import start_run  # the training stack loads only where a run is started

    project_row = get_project(session, project)
    requesters = (project_row.settings or {}).get("requesters") or []
    if not is_listed(requesters, requested_by, groups):
        raise RunError(f"{requested_by} may not start runs of {project}; its requesters are {', '.join(requesters)}")
    if not (recipe.model_name_or_path or project_row.base_model):
        raise RunError(
            f"no base model: set model_name_or_path in the recipe or `tuneloop project set {project} --base-model`"
        )
    version = resolve_version(session, project, dataset_name, dataset)
    if plan is None:  # a plan makes the version it trains on (synthesis, filter, split), checked when training
        try:  # before the run exists, as `tuneloop train` does: a refused start uses up no iteration number
            start_samples(session, version, recipe)
        except StartRefused as error:
            raise RunError(str(error)) from None
    run = start_run(session, project_row, version.id, recipe, requested_by=requested_by, platform=platform)
    run.plan = plan.model_dump(mode="json") if plan else None
    session.add(run)
    session.commit()
    assert run.id is not None
    await enqueue_stage(session, redis, run.id, next_stage(session, run) or "train")
    return run


async def retry_and_enqueue(
    session: Session, redis: ArqRedis, run_id: int, by: str, *, platform: str | None = None
) -> Job | None:
    """Retry a failed run (engine.loop.runs.retry_run) and queue the stage it goes on from."""
    retry_run(session, run_id, by, platform=platform)
    session.commit()
    stage = next_stage(session, get_run(session, run_id))
    return await enqueue_stage(session, redis, run_id, stage) if stage else None


async def approve_and_enqueue(
    session: Session,
    redis: ArqRedis,
    run_id: int,
    approver: str,
    *,
    platform: str | None = None,
    override_reason: str | None = None,
    groups: Sequence[str] = (),
) -> Job:
    """Approve the run (engine.loop.runs.approve_run) and put its deployment on the cpu queue."""
    approve_run(session, run_id, approver, platform=platform, override_reason=override_reason, groups=groups)
    session.commit()
    return await enqueue_stage(session, redis, run_id, "deploy")
