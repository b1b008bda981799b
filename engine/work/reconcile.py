"""The reconciler: the database decides what should be running, and the queues are made to match it.

- A running Job whose heartbeat is older than `silent_after_s` lost its worker (killed, its machine gone): it is
  marked lost and what arq keeps of it is removed; arq alone would re-run it only once its in-progress key expires
  (the stage's timeout, hours for training).
- A waiting Job (queued, or interrupted by a worker's shutdown) that arq no longer holds (Redis was wiped) is pushed
  again under the same id. An interrupted Job whose id arq will not take again (it keeps a result: the job used up
  `job_max_tries` of shutdowns) is marked lost, so that its next attempt is queued under a new id.
- A Job of a cancelled run is marked cancelled and taken off its queue.
- A run with a queue history, in a state a stage acts on (engine.work.jobs.next_stage) and with no live Job, gets
  that stage queued: a lost attempt is followed by the next one, and a training resumes from its last checkpoint.
  A stage lost `stage_max_lost` times fails the run instead.

Every worker runs it periodically; `tuneloop reconcile` runs it once. Two reconcilers at once are safe: marking a
Job is a conditional UPDATE, and a Job row's id is unique."""

from dataclasses import dataclass, field
from datetime import timedelta

from arq.connections import ArqRedis
from sqlalchemy import update
from sqlmodel import Session, col, select

from engine.work.jobs import ACTIVE_STATES, LIVE, discard, enqueue_stage, naive_utc, next_stage, on_queue, push
from storage.models import Job, Run, utcnow


@dataclass
class ReconcileReport:
    lost: list[str] = field(default_factory=list)  # arq job ids whose worker went silent
    requeued: list[str] = field(default_factory=list)  # arq job ids put (back) on a queue
    cancelled: list[str] = field(default_factory=list)  # jobs of cancelled runs taken off their queue

    def lines(self) -> list[str]:
        named = (("lost", self.lost), ("re-queued", self.requeued), ("cancelled", self.cancelled))
        return [f"{label}: {', '.join(ids)}" for label, ids in named if ids] or ["nothing to do"]


async def reconcile(session: Session, redis: ArqRedis, *, silent_after_s: float) -> ReconcileReport:
    report = ReconcileReport()
    silent_since = utcnow() - timedelta(seconds=silent_after_s)
    for job, state in session.exec(select(Job, Run.state).join(Run).where(col(Job.status).in_(LIVE))).all():
        if state == "cancelled":
            if _mark(session, job, "cancelled"):
                await discard(redis, job)
                report.cancelled.append(job.arq_job_id)
        elif job.status == "running":
            beat = job.heartbeat_at or job.started_at
            if (beat is None or naive_utc(beat) < naive_utc(silent_since)) and _mark(session, job, "lost"):
                await discard(redis, job)
                report.lost.append(job.arq_job_id)
        elif not await on_queue(redis, job):
            if await push(redis, job):
                report.requeued.append(job.arq_job_id)
            elif job.status == "interrupted" and _mark(session, job, "lost", _GAVE_UP):
                await discard(redis, job)
                report.lost.append(job.arq_job_id)
    queued_runs = select(Run).where(col(Run.state).in_(ACTIVE_STATES), col(Run.id).in_(select(Job.run_id)))
    for run in session.exec(queued_runs).all():
        live = select(Job.id).where(Job.run_id == run.id, col(Job.status).in_(LIVE))
        stage = next_stage(session, run)
        if stage is None or session.exec(live).first() is not None:
            continue
        job = await enqueue_stage(session, redis, run.id, stage)  # type: ignore[arg-type]
        if job.status in LIVE:
            report.requeued.append(job.arq_job_id)
    session.commit()
    return report


def _mark(session: Session, job: Job, status: str, why: str | None = None) -> bool:
    """Move the Job from the status it was read in to `status`; False when someone moved it meanwhile."""
    moved = session.exec(
        update(Job)
        .where(col(Job.id) == job.id, col(Job.status) == job.status)
        .values(status=status, finished_at=utcnow(), error=why or _WHY.get(status))
        .execution_options(synchronize_session=False)
    )
    session.commit()
    session.refresh(job)  # the session keeps its objects past commits: the next steps must see the new status
    return moved.rowcount == 1


_WHY = {"lost": "its worker went silent; the stage was queued again"}
_GAVE_UP = "arq gave up on it after job_max_tries shutdowns; the stage was queued again under a new id"
