"""Who may do what in a project. The engine stays the authority (it checks approvers, reviewers and requesters
itself); the core maps a platform's person and groups onto the project's lists first, so that a refusal is a plain
sentence in the person's language, and every refusal is audited.

A project lists people as identities: `slack:U123`, `telegram:42`, a group or chat `slack:S0ABC`,
`telegram:-1001234`, or a terminal user's plain name. An empty list lets anyone.
"""

from sqlmodel import Session

from bot.core.catalogue import say
from bot.core.errors import UserError
from bot.core.identity import Actor
from engine.loop.projects import is_listed
from storage.models import AuditEvent, Project

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


def require_terminal(actor: Actor, language: str, *, doing: str, command: str, in_chat: str | None = None) -> None:
    """Raise a refusal unless `actor` is at the terminal: work that runs in tuneloop's own process (training,
    evaluating, writing files on its machine) or reaches past one project is an operator's. The sentence names the
    terminal's `command`, and `in_chat`, the chat's way to the same end where there is one."""
    if actor.platform == "cli":
        return
    sentence = say(language, "refused.terminal", doing=say(language, f"terminal.{doing}"), command=command)
    if in_chat:
        sentence += ("" if language == "zh" else " ") + say(language, "terminal.in_chat", command=in_chat)
    raise UserError(sentence, refused=True)


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
