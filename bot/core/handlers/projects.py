"""Projects: creating one, its settings (who may do what, its model and template, its channels and language),
showing it, and a person's own language."""

from pathlib import Path

from sqlmodel import Session, select

from bot.core import permissions
from bot.core.actions import ConfigureProject, Help, ListProjects, NewProject, SetLanguage, ShowProject, dump_action
from bot.core.catalogue import say
from bot.core.context import Context, Handler
from bot.core.errors import UserError
from bot.core.messages import Message
from bot.core.render import help_message, project_message
from bot.core.render_data import projects_message
from engine.loop.projects import get_or_create_project, list_projects
from storage.models import ChatUser, Project


def _help(context: Context, action: Help) -> list[Message]:
    return [help_message(action.topic, context.language)]


def _project_exists(session: Session, name: str) -> bool:
    return session.exec(select(Project.id).where(Project.name == name)).first() is not None


def created_if_missing(context: Context, name: str) -> list[Message]:
    """Create project `name` unless it exists (a terminal's `project set` or import); the sentence saying so."""
    return [] if _project_exists(context.session, name) else _new_project(context, NewProject(project=name))[:1]


def _new_project(context: Context, action: NewProject) -> list[Message]:
    session = context.session
    if _project_exists(session, action.project):
        context.project(action.project)  # answered in the project's language
        raise UserError(say(context.language, "project.exists", project=action.project))
    project = get_or_create_project(session, action.project)
    _apply_settings(project, action.base_model, action.template, action.language)
    session.add(project)
    context.audit("project.created", project, {"base_model": action.base_model, "template": action.template})
    context.language = context.core.language_for(session, context.actor, project)
    return [
        Message(say(context.language, "project.created", project=project.name)),
        project_message(project, context.language),
    ]


def _configure_project(context: Context, action: ConfigureProject) -> list[Message]:
    if action.create:
        created_if_missing(context, action.project)
    project = context.project(action.project)
    people = {"reviewers": action.reviewers, "approvers": action.approvers, "requesters": action.requesters}
    if any(value is not None for value in (*people.values(), action.channels, action.four_eyes)):
        # Who may do what is the approvers' to change, once there are any.
        permissions.require(project, context.actor, "approver", context.language, doing="configure")
    _apply_settings(project, action.base_model, action.template, action.language)
    if action.tokenizer is not None:
        require_tokenizer(action.tokenizer, context.language)
        project.tokenizer_path = action.tokenizer
    settings = dict(project.settings or {})
    if action.reviewers is not None:
        project.reviewers = action.reviewers
    if action.approvers is not None:
        project.approvers = action.approvers
    if action.requesters is not None:
        settings["requesters"] = action.requesters
    if action.channels is not None:
        settings["channels"] = action.channels
    if action.language is not None:
        settings["language"] = action.language
    if action.four_eyes is not None:
        settings["approver_not_requester"] = action.four_eyes
    project.settings = {**(project.settings or {}), **settings}
    context.session.add(project)
    context.audit("project.configured", project, dump_action(action))
    context.language = context.core.language_for(context.session, context.actor, project)
    return [
        Message(say(context.language, "project.updated", project=project.name)),
        project_message(project, context.language),
    ]


def require_tokenizer(path: str, language: str) -> None:
    """A tokenizer is a folder or a tokenizer.json on this machine."""
    if not Path(path).exists():
        raise UserError(say(language, "data.no_tokenizer", path=path))


def _apply_settings(project: Project, base_model: str | None, template: str | None, language: str | None) -> None:
    if base_model is not None:
        project.base_model = base_model
    if template is not None:
        project.recipe = {**(project.recipe or {}), "template": template}
    if language is not None:
        project.settings = {**(project.settings or {}), "language": language}


def _show_project(context: Context, action: ShowProject) -> list[Message]:
    return [project_message(context.project(action.project), context.language)]


def _list_projects(context: Context, action: ListProjects) -> list[Message]:
    return [projects_message(list_projects(context.session), context.language)]


def _set_language(context: Context, action: SetLanguage) -> list[Message]:
    session, actor = context.session, context.actor
    row = session.exec(
        select(ChatUser).where(ChatUser.platform == actor.platform, ChatUser.user_id == actor.user_id)
    ).first() or ChatUser(platform=actor.platform, user_id=actor.user_id)
    row.language = action.language
    session.add(row)
    context.language = action.language
    return [Message(say(action.language, "language.set"))]


HANDLERS: dict[type, Handler] = {
    Help: _help,
    NewProject: _new_project,
    ConfigureProject: _configure_project,
    ShowProject: _show_project,
    SetLanguage: _set_language,
    ListProjects: _list_projects,
}
