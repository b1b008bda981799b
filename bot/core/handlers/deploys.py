"""Approval, deployment and rollback: who may, whether the deployment is queued for the workers or done here,
and the operator's audited way around approval."""

from typing import Any

from bot.core import permissions
from bot.core.actions import Approve, DeployUnapproved, RequestApproval, Rollback
from bot.core.catalogue import say
from bot.core.context import Context, Handler
from bot.core.errors import UserError
from bot.core.messages import Message
from bot.core.render import deployed_message, run_card
from engine.loop.projects import NotFoundError
from engine.loop.runs import RunError, approve_run, deploy_approved, request_approval
from engine.serve.adapters import DeployError
from storage.models import Project, Run


def _request_approval(context: Context, action: RequestApproval) -> list[Message]:
    run, project = context.run(action.run)
    permissions.require_any(project, context.actor, ("reviewer", "requester"), context.language, doing="reviewer")
    request_approval(context.session, action.run, context.actor.identity, platform=context.actor.platform)
    approvers = ", ".join(map(str, project.approvers or [])) or say(context.language, "word.anyone")
    return [
        Message(say(context.language, "approval.requested", run=run.id, approvers=approvers), run_id=run.id),
        run_card(context.session, run, context.language),
    ]


def _approve(context: Context, action: Approve) -> list[Message]:
    """Approve, then deploy: on the cpu queue's workers for a run its workers ran (a worker's reconciler would
    deploy it anyway), in this process for a run trained on the terminal."""
    from engine.work.jobs import approve_and_enqueue, is_queued_run

    run, project = context.run(action.run)
    actor, session = context.actor, context.session
    permissions.require(project, actor, "approver", context.language)
    override = (action.override or "").strip() or None
    approval: dict[str, Any] = {
        "platform": actor.platform,
        "override_reason": override,
        "groups": actor.group_identities,
    }
    if is_queued_run(session, action.run):
        job = context.on_queues(lambda pool: approve_and_enqueue(session, pool, action.run, actor.identity, **approval))
        lines = [say(context.language, "approval.override", reason=override)] if override else []
        text = say(context.language, "approval.queued", run=run.id, who=actor.name, job=job.arq_job_id)
        return [Message(text, lines=lines, run_id=run.id), run_card(session, run, context.language)]
    approve_run(session, action.run, actor.identity, **approval)
    session.commit()
    approved = Message(say(context.language, "approval.deploying", run=run.id, who=actor.name), run_id=run.id)
    try:
        outcome = deploy_approved(session, action.run, actor.identity, servers=action.servers, platform=actor.platform)
    except (DeployError, RunError, NotFoundError) as error:
        session.commit()  # the run's failure is kept
        raise UserError(say(context.language, "deploy.failed", run=run.id, error=str(error))) from None
    return [approved, _deploy_message(context, run, project, outcome)]


def _deploy_unapproved(context: Context, action: DeployUnapproved) -> list[Message]:
    """The operator's way around approval: the terminal only, with a reason, audited."""
    from engine.serve.deploy import deploy_run

    run, project = context.run(action.run)
    actor = context.actor
    if actor.platform != "cli":
        raise UserError(say(context.language, "refused.operator", run=run.id), refused=True)
    reason = action.reason.strip()
    if not reason:
        raise UserError(say(context.language, "refused.reason"))
    context.audit("run.deploy_unapproved", project, {"run": run.id, "state": run.state, "reason": reason}, run=run)
    outcome = deploy_run(context.session, action.run, actor.identity, servers=action.servers, platform=actor.platform)
    message = _deploy_message(context, run, project, outcome)
    message.lines.insert(0, say(context.language, "deploy.unapproved", run=run.id, who=actor.name, reason=reason))
    return [message]


def _deploy_message(context: Context, run: Run, project: Project, outcome: Any) -> Message:
    language = context.language
    if not outcome.ok:
        context.session.commit()  # the failed deployment is kept
        raise UserError(say(language, "deploy.failed", run=run.id, error=outcome.message))
    lines = [outcome.message]
    lines += [say(language, "deploy.answered", server=url, answer=answer) for url, answer in outcome.answers.items()]
    lines += [say(language, "deploy.warning", warning=warning) for warning in outcome.warnings]
    version = outcome.deployment.version_name
    return deployed_message(project.name, version, run.id, language, context.core.settings.gateway_url, lines)  # type: ignore[arg-type]


def _rollback(context: Context, action: Rollback) -> list[Message]:
    from engine.serve.deploy import rollback

    project = context.project(action.project)
    permissions.require(project, context.actor, "approver", context.language)
    outcome = rollback(
        context.session, project.name, context.actor.identity, servers=action.servers, platform=context.actor.platform
    )
    if not outcome.ok:
        context.session.commit()
        raise UserError(outcome.message)
    lines = [say(context.language, "deploy.warning", warning=warning) for warning in outcome.warnings]
    return [Message(say(context.language, "rollback.done", project=project.name, message=outcome.message), lines=lines)]


HANDLERS: dict[type, Handler] = {
    RequestApproval: _request_approval,
    Approve: _approve,
    DeployUnapproved: _deploy_unapproved,
    Rollback: _rollback,
}
