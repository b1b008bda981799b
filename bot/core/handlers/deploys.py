"""Approval, deployment and rollback: who may, whether the deployment is queued for the workers or done here,
and the operator's audited way around approval; the deployments, and the servers made to match them."""

from typing import Any

from bot.core import permissions
from bot.core.actions import Approve, DeployUnapproved, ListDeployments, RequestApproval, Rollback, SyncServers
from bot.core.catalogue import say
from bot.core.context import Context, Handler
from bot.core.errors import UserError
from bot.core.messages import Message
from bot.core.render import deployed_message, deployments_message, run_card
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
    command = f"tuneloop deploy {run.id} --unapproved {say(context.language, 'word.reason')}"
    permissions.require_terminal(actor, context.language, doing="deploy_unapproved", command=command)
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


def _list_deployments(context: Context, action: ListDeployments) -> list[Message]:
    from engine.serve.deploy import list_deployments

    if action.project is not None:
        context.project(action.project)
    return [deployments_message(list_deployments(context.session, action.project), context.language)]


def _sync_servers(context: Context, action: SyncServers) -> list[Message]:
    """The servers made to match the deployments. It changes no decision, only carries out the approvers': so a
    project's approvers may sync their project's versions from a chat; every project at once (and servers named by
    hand) is the operator's, on the terminal."""
    from engine.serve.deploy import sync

    actor = context.actor
    project = context.project(action.project) if action.project is not None else None
    if project is None or action.servers:
        permissions.require_terminal(actor, context.language, doing="sync", command="tuneloop serve sync")
    elif actor.platform != "cli":
        permissions.require(project, actor, "approver", context.language)
    language = context.language
    report = sync(context.session, servers=action.servers, project=action.project)
    lines = [say(language, "sync.loaded", version=version, server=url) for url, version in report.loaded]
    lines += [say(language, "sync.unloaded", version=version, server=url) for url, version in report.unloaded]
    lines += [say(language, "deploy.warning", warning=sentence) for sentence in report.replaced]
    if report.problems:
        raise UserError("\n".join([*lines, say(language, "sync.problems"), *report.problems]))
    return [Message(say(language, "sync.done" if report.changed else "sync.nothing"), lines=lines)]


HANDLERS: dict[type, Handler] = {
    RequestApproval: _request_approval,
    Approve: _approve,
    DeployUnapproved: _deploy_unapproved,
    Rollback: _rollback,
    ListDeployments: _list_deployments,
    SyncServers: _sync_servers,
}
