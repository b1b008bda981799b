"""A run's stages as arq jobs: the queue each stage runs on, its Job row, and putting it on the queue once.

The database decides what should run; Redis only carries it. A Job row is committed before its arq job is pushed,
so a worker never picks up work the database does not know. Job ids are `{run}:{stage}:{attempt}`: arq refuses an id
it still holds, and the row's id is unique, so enqueuing a stage twice does nothing the second time. A new attempt is
made only when the previous one ended failed or lost (its worker went silent); a retried training resumes from its
last checkpoint because `train(..., run_id=...)` does."""

from typing import Any

from arq.connections import ArqRedis
from arq.constants import in_progress_key_prefix, job_key_prefix, result_key_prefix, retry_key_prefix
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from engine.data.versions import DEFAULT_DATASET, resolve_version
from engine.projects import get_project
from engine.runs import RunError, approve_run
from engine.settings import Settings, get_settings
from engine.train.recipe import Recipe
from storage.models import Job, Run

QUEUE_OF_STAGE = {"train": "gpu", "evaluate": "gpu", "deploy": "cpu"}
STAGE_OF_STATE = {"queued": "train", "training": "train", "evaluating": "evaluate", "deploying": "deploy"}
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
) -> Run:
    """A new queued run of `recipe` on a dataset version (the latest when None), its training on the gpu queue.
    Refused when the project lists who may start runs (`settings.requesters`) and `requested_by` is not one."""
    from engine.train.sft import start_run  # the training stack loads only where a run is started

    project_row = get_project(session, project)
    requesters = (project_row.settings or {}).get("requesters") or []
    if requesters and requested_by not in requesters:
        raise RunError(f"{requested_by} may not start runs of {project}; its requesters are {', '.join(requesters)}")
    if not (recipe.model_name_or_path or project_row.base_model):
        raise RunError(
            f"no base model: set model_name_or_path in the recipe or `tuneloop project set {project} --base-model`"
        )
    version = resolve_version(session, project, dataset_name, dataset)
    run = start_run(session, project_row, version.id, recipe)
    run.requested_by, run.platform = requested_by, platform
    session.add(run)
    session.commit()
    assert run.id is not None
    await enqueue_stage(session, redis, run.id, "train")
    return run


async def approve_and_enqueue(
    session: Session,
    redis: ArqRedis,
    run_id: int,
    approver: str,
    *,
    platform: str | None = None,
    override_reason: str | None = None,
) -> Job:
    """Approve the run (engine.runs.approve_run) and put its deployment on the cpu queue."""
    approve_run(session, run_id, approver, platform=platform, override_reason=override_reason)
    session.commit()
    return await enqueue_stage(session, redis, run_id, "deploy")
