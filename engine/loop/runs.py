"""The run state machine: which moves a run may make, who made each, approval, cancellation, and a run's history.

    queued → preparing → training → evaluating → reviewing → awaiting_approval → deploying → deployed
    failed, cancelled: from any state that has not ended (deployed and cancelled have)

Beyond the straight line:
- queued → training: a run trained without a separate preparation stage (`tuneloop train`).
- reviewing → evaluating: a re-evaluation; reviewing → deploying: an approver approves straight from review.
- reviewing is also where a run rests when people start a new iteration instead: the new run points at it
  (`parent_run_id`) and this one stays in reviewing, so it can still be approved if it proves the better one.
- failed → queued: the run is retried from the start (a training retry resumes from its last checkpoint);
  failed → evaluating: a failed evaluation is retried on the adapter it has; failed → deploying: an approver
  approves again a run whose deployment failed (`approve_run` allows it only then).
- done → evaluating: "done" is what older code left a trained run in.

Every move is one conditional UPDATE (`... WHERE id = :id AND state = :from`): of two processes moving the same
run at once exactly one changes the row, and the other is told who won, so an approval sent twice deploys once.
Every move is audited (action "run.<state>") with who caused it: a person's name, "worker:<host>" or "system";
and announced: a "stage" event (stage "run", the new state) kept in the same transaction and relayed to the event
stream when it commits (engine.events.stream.relay_committed_moves; the workers' periodic relay catches up when Redis
was away), so front ends hear of approvals and deployments too. A caller only commits.
Functions take the caller's session and never commit: a move and its audit event land together when it commits.
"""

import socket
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, update
from sqlalchemy.orm.attributes import set_committed_value
from sqlmodel import Session, col, select

from engine.events.log import run_events
from engine.events.stream import announce_moves_at_commit
from engine.loop.projects import NotFoundError, is_listed
from engine.serve.adapters import DeployError
from engine.serve.deploy import DeployOutcome, deploy_run
from storage.models import (
    Adapter,
    AuditEvent,
    Deployment,
    Evaluation,
    Job,
    Judgement,
    Metric,
    Project,
    Review,
    Run,
    RunEvent,
    utcnow,
)

STATES = (
    "queued",
    "preparing",
    "training",
    "evaluating",
    "reviewing",
    "awaiting_approval",
    "deploying",
    "deployed",
    "failed",
    "cancelled",
)
ENDED = frozenset({"deployed", "cancelled"})
LEGACY_DONE = "done"  # a trained run, as older code recorded it
_FORWARD: dict[str, set[str]] = {
    "queued": {"preparing", "training"},
    "preparing": {"training"},
    "training": {"evaluating"},
    "evaluating": {"reviewing"},
    "reviewing": {"evaluating", "awaiting_approval", "deploying"},
    "awaiting_approval": {"deploying"},
    "deploying": {"deployed"},
    "failed": {"queued", "evaluating", "deploying"},
    LEGACY_DONE: {"evaluating"},
}
# Every legal move: from → the states it may go to.
TRANSITIONS: dict[str, frozenset[str]] = {
    origin: frozenset(targets | ({"failed", "cancelled"} - {origin})) for origin, targets in _FORWARD.items()
}
APPROVABLE = ("reviewing", "awaiting_approval")


class RunError(Exception):
    """A request about a run that cannot be done as asked; the message says why, in a sentence."""


class IllegalTransition(RunError):
    pass


class ApprovalRefused(RunError):
    pass


class RunCancelled(RunError):
    """Raised by a stage that stopped because its run was cancelled."""


class StageStopped(RunError):
    """Raised by a stage its worker stopped (shutting down, or told its job was given to another worker).
    The run is not failed: the stage runs again, and a training resumes from the checkpoint it saved."""


def worker_actor() -> str:
    """The actor a stage running in this process records: the machine that did the work."""
    return f"worker:{socket.gethostname()}"


def get_run(session: Session, run_id: int) -> Run:
    run = session.get(Run, run_id)
    if run is None:
        raise NotFoundError(f"no run {run_id}")
    return run


def can_move(origin: str, to: str) -> bool:
    return to in TRANSITIONS.get(origin, frozenset())


def transition(
    session: Session,
    run: Run,
    to: str,
    *,
    actor: str,
    platform: str | None = None,
    reason: str | None = None,
    detail: dict | None = None,
) -> Run:
    """Move `run` to state `to`, or raise IllegalTransition (nothing changed) when that move is not legal from the
    state it is in, or when another process moved it first. Moving to failed records `reason` as the run's error;
    leaving failed clears it; moving to evaluating clears a gate override (a new evaluation needs a new decision)."""
    if to not in STATES:
        raise IllegalTransition(f"'{to}' is not a run state (states: {', '.join(STATES)})")
    origin = run.state
    if not can_move(origin, to):
        raise IllegalTransition(_refusal(run.id, origin, to))
    now = utcnow()
    values: dict[str, Any] = {"state": to, "updated_at": now}
    if to == "failed":
        values["error"] = reason
    elif origin == "failed":
        values["error"] = None
    if to == "evaluating":
        values["gate_override_reason"] = None
    moved = session.exec(
        update(Run)
        .where(col(Run.id) == run.id, col(Run.state) == origin)
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    if moved.rowcount != 1:
        current = session.exec(select(Run.state).where(Run.id == run.id)).one()
        raise IllegalTransition(
            f"run {run.id} is {current} now, no longer {origin}: someone else moved it first; it did not go to {to}"
        )
    for name, value in values.items():  # the row is written; the object only catches up, it is not dirty
        set_committed_value(run, name, value)
    session.add(
        AuditEvent(
            actor=actor,
            platform=platform,
            action=f"run.{to}",
            project_id=run.project_id,
            subject_type="run",
            subject_id=run.id,
            detail={"from": origin, "to": to, **({"reason": reason} if reason else {}), **(detail or {})},
            created_at=now,
        )
    )
    project = session.get(Project, run.project_id)
    assert project is not None  # a foreign key
    moved_by = {"from": origin, "by": actor, **({"reason": reason} if reason else {})}
    session.add(
        RunEvent(
            event_id=uuid.uuid4().hex,
            run_id=run.id,
            project=project.name,
            type="stage",
            payload={"stage": "run", "state": to, **moved_by, **({"platform": platform} if platform else {})},
            created_at=now,
        )
    )
    session.flush()
    announce_moves_at_commit(session)
    return run


def next_iteration(session: Session, project_id: int) -> int:
    """The number a project's next run takes: one past its highest. A run refused at its start has none, so a
    refused start uses none up."""
    last = session.exec(select(func.max(Run.iteration)).where(Run.project_id == project_id)).one()
    return (last or 0) + 1


def fail_run(session: Session, run_id: int, reason: str, *, actor: str, refused: bool = False) -> None:
    """After a stage raised: roll back its unfinished work and mark the run failed with `reason`, unless the run has
    ended meanwhile (a cancelled run stays cancelled) or was already marked failed. `refused`: the run never
    started (its data or template was refused before the first step), so it gives its iteration number back."""
    session.rollback()
    run = get_run(session, run_id)
    if run.state in ENDED or run.state == "failed":
        return
    try:
        transition(session, run, "failed", actor=actor, reason=reason)
    except IllegalTransition:
        session.rollback()  # moved by another process just now: its word stands
        return
    if refused:
        run.iteration = None
        session.add(run)


RETRIED_AT = {"queued": "queued", "preparing": "queued", "training": "queued", "evaluating": "evaluating"}


def retry_run(session: Session, run_id: int, by: str, *, platform: str | None = None) -> Run:
    """Move a failed run back to where its work starts again, once a person has fixed the cause: queued when it
    failed preparing or training (a training resumes from its last checkpoint), evaluating when it failed there (its
    workers go on from the evaluation stage that failed). A failed deployment is retried by approving again."""
    run = get_run(session, run_id)
    if run.state != "failed":
        raise IllegalTransition(f"run {run.id} is {run.state}; only a failed run can be retried")
    origin = failed_from(session, run)
    if origin == "deploying":
        raise RunError(f"run {run.id} failed while deploying: approve it again to retry (`tuneloop approve {run.id}`)")
    if run.iteration is None:  # refused at its start, it starts now: it counts again
        run.iteration = next_iteration(session, run.project_id)
    return transition(
        session, run, RETRIED_AT.get(origin or "", "queued"), actor=by, platform=platform, reason="retried"
    )


def last_retried_at(session: Session, run_id: int) -> datetime | None:
    """When a person last moved the run out of failed (a retry); None if never."""
    moves = session.exec(
        select(AuditEvent)
        .where(AuditEvent.subject_type == "run", AuditEvent.subject_id == run_id)
        .where(col(AuditEvent.action).in_([f"run.{state}" for state in set(RETRIED_AT.values())]))
        .order_by(col(AuditEvent.id).desc())
    ).all()
    return next((move.created_at for move in moves if (move.detail or {}).get("from") == "failed"), None)


def approve_run(
    session: Session,
    run_id: int,
    approver: str,
    *,
    platform: str | None = None,
    override_reason: str | None = None,
    groups: Sequence[str] = (),
) -> Run:
    """Approve a run for deployment: it moves to deploying. Raises ApprovalRefused with the reason when the run is not
    waiting for a decision, has no evaluation, failed its gate without `override_reason`, or `approver` may not
    approve it (not among the project's approvers, directly or through one of its `groups`; its requester, where
    the project asks for a second person)."""
    run = get_run(session, run_id)
    project = session.get(Project, run.project_id)
    assert project is not None  # a foreign key
    retry = run.state == "failed" and failed_from(session, run) == "deploying"
    if run.state not in APPROVABLE and not retry:
        raise ApprovalRefused(
            f"run {run.id} is {run.state}; only a run in reviewing or awaiting_approval (or whose deployment failed) "
            "can be approved"
        )
    _check_approver(project, run, approver, groups)
    evaluation = latest_evaluation(session, run.id)  # type: ignore[arg-type]
    if evaluation is None:
        raise ApprovalRefused(
            f"run {run.id} has not been evaluated: evaluate it first (`tuneloop eval --run {run.id}`)"
        )
    override = (override_reason or "").strip() or None
    passed = evaluation.gate_passed is True
    if not passed and override is None and not run.gate_override_reason:
        raise ApprovalRefused(
            f"run {run.id} failed its gate ({_gate_reasons(evaluation)}): approving it anyway needs an override "
            'reason (`--override "why"`)'
        )
    detail = {"evaluation": evaluation.id, "gate_passed": evaluation.gate_passed}
    if not passed:
        detail["override"] = override or run.gate_override_reason
    transition(session, run, "deploying", actor=approver, platform=platform, reason=override, detail=detail)
    if not passed and override is not None:
        run.gate_override_reason = override
        session.add(run)
        session.flush()
    return run


def request_approval(session: Session, run_id: int, by: str, *, platform: str | None = None) -> Run:
    """Reviewing is finished: the run waits for an approver. Refused when its latest gate failed and no approver
    has overridden it (a gate failure stops at reviewing)."""
    run = get_run(session, run_id)
    if run.state != "reviewing":
        raise IllegalTransition(f"run {run.id} is {run.state}; only a run in reviewing can be sent for approval")
    evaluation = latest_evaluation(session, run.id)  # type: ignore[arg-type]
    if evaluation is None:
        raise ApprovalRefused(
            f"run {run.id} has not been evaluated: evaluate it first (`tuneloop eval --run {run.id}`)"
        )
    if evaluation.gate_passed is not True and not run.gate_override_reason:
        raise ApprovalRefused(
            f"run {run.id} failed its gate ({_gate_reasons(evaluation)}), so it stays in reviewing: an approver can "
            f'approve it anyway with a reason (`tuneloop approve {run.id} --override "why"`)'
        )
    return transition(session, run, "awaiting_approval", actor=by, platform=platform)


def deploy_approved(
    session: Session,
    run_id: int,
    by: str,
    *,
    servers: list[str] | None = None,
    platform: str | None = None,
) -> DeployOutcome:
    """Deploy an approved run (state deploying) and move it to deployed, or to failed with the reason. When there is
    nothing to try (DeployError: no servers, no adapter) the run is marked failed and the error raised: the caller
    commits before reporting it."""
    run = get_run(session, run_id)
    if run.state != "deploying":
        raise IllegalTransition(f"run {run.id} is {run.state}; only an approved run (deploying) can be deployed")
    try:
        outcome = deploy_run(session, run_id, by, servers=servers, platform=platform)
    except (DeployError, NotFoundError) as error:
        transition(session, run, "failed", actor=by, platform=platform, reason=str(error))
        raise
    if outcome.ok:
        detail = {"deployment": outcome.deployment.id, "version": outcome.deployment.version_name}
        transition(session, run, "deployed", actor=by, platform=platform, detail=detail)
    else:
        detail = {"deployment": outcome.deployment.id}
        transition(session, run, "failed", actor=by, platform=platform, reason=outcome.message, detail=detail)
    return outcome


def cancel_run(
    session: Session, run_id: int, by: str, *, platform: str | None = None, reason: str | None = None
) -> Run:
    """Cancel a run that has not ended. A training run stops at its next step (engine.train.cancel); an evaluation in
    progress is discarded when it ends."""
    run = get_run(session, run_id)
    if run.state in ENDED:
        raise IllegalTransition(f"run {run.id} is {run.state} already; there is nothing to cancel")
    return transition(session, run, "cancelled", actor=by, platform=platform, reason=reason)


def stop_if_cancelled(session: Session, run_id: int) -> None:
    """Raise RunCancelled when the run was cancelled (by another process): the stage must not go on.
    The training loop checks at every step with engine.train.cancel.CancelCallback."""
    state = session.exec(select(Run.state).where(Run.id == run_id)).one()
    if state == "cancelled":
        raise RunCancelled(f"run {run_id} was cancelled; the work stopped and its last checkpoint is kept")


def latest_evaluation(session: Session, run_id: int) -> Evaluation | None:
    query = select(Evaluation).where(Evaluation.run_id == run_id).order_by(col(Evaluation.id).desc())
    return session.exec(query).first()


def list_runs(session: Session, *, project: str | None = None, state: str | None = None) -> list[tuple[Run, str]]:
    """Runs with their project's name, newest first; only `project`'s, or those in `state`, when given."""
    if state is not None and state not in STATES and state != LEGACY_DONE:
        raise RunError(f"'{state}' is not a run state (states: {', '.join(STATES)})")
    query = select(Run, Project.name).join(Project)
    if project is not None:
        known = session.exec(select(Project.id).where(Project.name == project)).first()
        if known is None:
            raise NotFoundError(f"no project named '{project}'")
        query = query.where(Run.project_id == known)
    if state is not None:
        query = query.where(Run.state == state)
    return [(run, name) for run, name in session.exec(query.order_by(col(Run.id).desc())).all()]


@dataclass
class RunHistory:
    run: Run
    project: str
    transitions: list[AuditEvent]  # the run.* audit events, oldest first: from, to, who, from where, why
    jobs: list[Job]
    metric_count: int
    last_loss: float | None
    evaluations: list[Evaluation]  # oldest first, each with its gate decision
    reviews: list[Review]  # people's verdicts on the run's judgements
    deployments: list[Deployment]  # of the run's adapter
    events: list[RunEvent]  # what the engine announced, progress aside, oldest first


def last_loss(session: Session, run_id: int) -> float | None:
    """The training loss the run reported last; None before its first logged step."""
    return session.exec(
        select(Metric.loss)
        .where(Metric.run_id == run_id, col(Metric.loss).is_not(None))
        .order_by(col(Metric.step).desc(), col(Metric.id).desc())
    ).first()


def run_history(session: Session, run_id: int) -> RunHistory:
    """Everything the database knows about a run, read back after the fact."""
    run = get_run(session, run_id)
    project = session.get(Project, run.project_id)
    assert project is not None
    transitions = session.exec(
        select(AuditEvent)
        .where(AuditEvent.subject_type == "run", AuditEvent.subject_id == run_id)
        .where(col(AuditEvent.action).startswith("run."))
        .order_by(col(AuditEvent.id))
    ).all()
    jobs = session.exec(select(Job).where(Job.run_id == run_id).order_by(col(Job.id))).all()
    metric_count = session.exec(select(func.count()).select_from(Metric).where(Metric.run_id == run_id)).one()
    evaluations = session.exec(select(Evaluation).where(Evaluation.run_id == run_id).order_by(col(Evaluation.id))).all()
    reviews = session.exec(
        select(Review)
        .join(Judgement, col(Review.judgement_id) == col(Judgement.id))
        .join(Evaluation, col(Judgement.evaluation_id) == col(Evaluation.id))
        .where(Evaluation.run_id == run_id)
        .order_by(col(Review.id))
    ).all()
    deployments = session.exec(
        select(Deployment).join(Adapter).where(Adapter.run_id == run_id).order_by(col(Deployment.id))
    ).all()
    return RunHistory(
        run,
        project.name,
        list(transitions),
        list(jobs),
        metric_count,
        last_loss(session, run_id),
        list(evaluations),
        list(reviews),
        list(deployments),
        run_events(session, run_id),
    )


def _refusal(run_id: int | None, origin: str, to: str) -> str:
    if origin in STATES and STATES.index(to) < STATES.index(origin):
        return f"run {run_id} is {origin}; it cannot go back to {to}"
    if origin in ENDED:
        return f"run {run_id} is {origin}; it has ended and cannot go to {to}"
    return f"run {run_id} is {origin}; it cannot go to {to} from there"


def _check_approver(project: Project, run: Run, approver: str, groups: Sequence[str] = ()) -> None:
    approvers = [str(name) for name in project.approvers or []]
    if not is_listed(approvers, approver, groups):
        raise ApprovalRefused(
            f"{approver} may not approve runs of {project.name}: its approvers are {', '.join(approvers)}"
        )
    if (project.settings or {}).get("approver_not_requester") and run.requested_by == approver:
        raise ApprovalRefused(
            f"{approver} requested run {run.id}, and {project.name} asks for someone else to approve it"
        )


def _gate_reasons(evaluation: Evaluation) -> str:
    return "; ".join(str(reason) for reason in evaluation.gate_reasons or []) or "no gate decision recorded"


def failed_from(session: Session, run: Run) -> str | None:
    """The state the run was in when it last failed."""
    event = session.exec(
        select(AuditEvent)
        .where(AuditEvent.subject_type == "run", AuditEvent.subject_id == run.id, AuditEvent.action == "run.failed")
        .order_by(col(AuditEvent.id).desc())
    ).first()
    return (event.detail or {}).get("from") if event else None
