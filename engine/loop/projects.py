"""Projects: a named assistant with its base model, tokenizer and the people around it.

A project's name becomes a folder under the artifact store, the stable model name clients call at the gateway, and
the stem of its version names (`shop-v3`) on vLLM, so it is a slug: lowercase letters, digits and `_`, at most 64.
The slug has no `-`, so no project is named like another's version, and it may not be a base model's name, which
the gateway would route to the base model or the project alike. Names from before the rule keep working; the
database's first use in a process names them (`project_name_offenders`)."""

import logging
import re
from collections.abc import Sequence

from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from storage.models import Project

logger = logging.getLogger(__name__)

PROJECT_NAME = re.compile(r"[a-z0-9_]{1,64}")
PROJECT_NAME_RULE = (
    "a project name is 1 to 64 lowercase letters, digits or '_' (no '-', so never a version name like 'shop-v1')"
    " and not a base model's name"
)


class NotFoundError(LookupError):
    """A project, dataset or version that the user named does not exist."""


def is_listed(listed: Sequence[object] | None, identity: str, groups: Sequence[str] = ()) -> bool:
    """Whether a project's list of people (reviewers, approvers, requesters) admits `identity`, directly or through
    one of its `groups`; an empty or missing list admits anyone."""
    names = {str(name) for name in listed or []}
    return not names or identity in names or any(group in names for group in groups)


class ProjectNameError(ValueError):
    """A name a new project may not have; the message says the rule."""


def check_project_name(session: Session, name: str) -> None:
    """Raise ProjectNameError unless `name` may name a new project."""
    shown = repr(name if len(name) <= 80 else f"{name[:64]}…")  # repr: control bytes shown as escapes
    if not PROJECT_NAME.fullmatch(name):
        raise ProjectNameError(f"{shown} cannot name a project: {PROJECT_NAME_RULE}")
    if session.exec(select(Project.id).where(Project.base_model == name)).first() is not None:
        raise ProjectNameError(f"{shown} cannot name a project: it is a base model's name; {PROJECT_NAME_RULE}")


def project_name_offenders(session: Session) -> list[str]:
    """Existing projects whose names the rule would refuse now (made before it existed)."""
    names = session.exec(select(Project.name)).all()
    base_models = set(session.exec(select(Project.base_model)).all())
    return sorted(name for name in names if not PROJECT_NAME.fullmatch(name) or name in base_models)


def warn_about_project_names(engine: Engine) -> None:
    """Log the projects whose names are no longer accepted: they keep working, but a new one should take over."""
    with Session(engine) as session:
        offenders = project_name_offenders(session)
    if offenders:
        logger.warning(
            "project(s) %s have names new projects may not have (%s); they keep working, but move their work to a "
            "project with such a name",
            ", ".join(repr(name) for name in offenders),
            PROJECT_NAME_RULE,
        )


def get_or_create_project(session: Session, name: str) -> Project:
    """The project named `name`, created if there is none (the name checked then: ProjectNameError)."""
    project = session.exec(select(Project).where(Project.name == name)).first()
    if project is None:
        check_project_name(session, name)
        project = Project(name=name)
        session.add(project)
        session.flush()
    return project


def get_project(session: Session, name: str) -> Project:
    project = session.exec(select(Project).where(Project.name == name)).first()
    if project is None:
        known = ", ".join(session.exec(select(Project.name)).all()) or "none yet"
        raise NotFoundError(f"no project named '{name}' (projects: {known})")
    return project


def list_projects(session: Session) -> list[Project]:
    return list(session.exec(select(Project).order_by(col(Project.name))).all())


def configure_project(session: Session, name: str, **fields: str | None) -> Project:
    """Create the project if needed and set the given fields (None leaves a field as it is)."""
    project = get_or_create_project(session, name)
    for key, value in fields.items():
        if value is not None:
            setattr(project, key, value)
    session.add(project)
    session.flush()
    return project
