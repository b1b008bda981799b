"""Projects: a named assistant with its base model, tokenizer and the people around it."""

from collections.abc import Sequence

from sqlmodel import Session, col, select

from storage.models import Project


class NotFoundError(LookupError):
    """A project, dataset or version that the user named does not exist."""


def is_listed(listed: Sequence[object] | None, identity: str, groups: Sequence[str] = ()) -> bool:
    """Whether a project's list of people (reviewers, approvers, requesters) admits `identity`, directly or through
    one of its `groups`; an empty or missing list admits anyone."""
    names = {str(name) for name in listed or []}
    return not names or identity in names or any(group in names for group in groups)


def get_or_create_project(session: Session, name: str) -> Project:
    project = session.exec(select(Project).where(Project.name == name)).first()
    if project is None:
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
