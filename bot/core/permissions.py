"""Who may do what in a project. The engine stays the authority (it checks approvers, reviewers and requesters
itself); the core maps a platform's person and groups onto the project's lists first, so that a refusal is a plain
sentence in the person's language, and every refusal is audited.

A project lists people as identities: `slack:U123`, `telegram:42`, a group or chat `slack:S0ABC`,
`telegram:-1001234`, or a terminal user's plain name. An empty list lets anyone.
"""

from contextlib import suppress
from typing import TYPE_CHECKING

from sqlmodel import Session

from bot.core.catalogue import say
from bot.core.errors import UserError
from bot.core.identity import Actor
from engine.loop.projects import NotFoundError, is_listed
from storage.models import AuditEvent, Project

if TYPE_CHECKING:
    from bot.core.context import Context

ROLES = ("requester", "reviewer", "approver")


def listed(project: Project, role: str) -> list[str]:
    """The identities the project lists for `role`."""
    if role == "requester":
        return [str(name) for name in (project.settings or {}).get("requesters") or []]
    return [str(name) for name in (project.reviewers if role == "reviewer" else project.approvers) or []]


def may(project: Project, actor: Actor, role: str) -> bool:
    return is_listed(listed(project, role), actor.identity, actor.group_identities)


def require(
    project: Project, actor: Actor, role: str, language: str, *, doing: str | None = None, **values: object
) -> None:
    """Raise a refusal naming who may, unless `actor` holds `role` in `project`."""
    if may(project, actor, role):
        return
    raise UserError(
        say(
            language,
            "refused.role",
            who=actor.name,
            doing=say(language, f"doing.{doing or role}", **values),
            project=project.name,
            role=say(language, f"project.{role}s"),
            names=", ".join(listed(project, role)),
        ),
        refused=True,
    )


def require_any(
    project: Project, actor: Actor, roles: tuple[str, ...], language: str, *, doing: str, **values: object
) -> None:
    """Raise a refusal unless `actor` holds one of `roles`; the sentence names the first role's people."""
    if any(may(project, actor, role) for role in roles):
        return
    require(project, actor, roles[0], language, doing=doing, **values)


def record_refusal(session: Session, actor: Actor, action: str, project_id: int | None, reason: str) -> None:
    """An audit event `refused.<action>` naming who was refused and why."""
    session.add(
        AuditEvent(
            actor=actor.identity,
            platform=actor.platform,
            action=f"refused.{action}"[:60],
            project_id=project_id,
            detail={"reason": reason, "name": actor.name},
        )
    )


def require_terminal(
    context: "Context", project: str, doing: str, terminal: str, instead: str | None = None, **values: object
) -> None:
    """Refuse, unless asked on the terminal, what runs on tuneloop's own machine (files written there, heavy work
    in the face's process): `doing` names it (`terminal.<doing>`), `terminal` is the terminal's command; `instead`, the
    sentence saying how a chat does the same, filled in with `values`."""
    if context.actor.platform == "cli":
        return
    with suppress(NotFoundError):
        context.project(project)  # answered in its language
    language = context.language
    refusal = say(language, "refused.terminal", what=say(language, f"terminal.{doing}"), command=terminal)
    raise UserError("\n".join([refusal, *([say(language, instead, **values)] if instead else [])]), refused=True)
