"""One action being carried out: its unit of work, who asked, and the language to answer in. Every handler in
`bot.core.handlers` takes one."""

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from sqlmodel import Session

from bot.core.identity import Actor
from bot.core.messages import Message
from engine.events import Event, EventSink
from engine.loop.projects import get_project
from engine.loop.runs import get_run
from storage.models import AuditEvent, Project, Run

if TYPE_CHECKING:
    from bot.core.perform import Core

Result = TypeVar("Result")


def ignore(event: Event) -> None:
    """Where the events of an action go when nobody watches it here (a chat face: the workers announce theirs)."""


@dataclass
class Context:
    core: "Core"
    session: Session
    actor: Actor
    language: str
    # What the engine announces while an action works in this process (the terminal's training, evaluation,
    # synthesis): the terminal shows it as it comes.
    events: EventSink = ignore

    def project(self, name: str) -> Project:
        """Project `name` (NotFoundError when there is none); answers from now on in its language."""
        project = get_project(self.session, name)
        self.language = self.core.language_for(self.session, self.actor, project)
        return project

    def run(self, run_id: int) -> tuple[Run, Project]:
        """Run `run_id` and its project; answers from now on in the project's language."""
        run = get_run(self.session, run_id)
        project = self.session.get(Project, run.project_id)
        assert project is not None
        self.language = self.core.language_for(self.session, self.actor, project)
        return run, project

    def on_queues(self, call: Callable[[Any], Awaitable[Result]]) -> Result:
        return self.core.on_queues(call)

    def audit(self, action: str, project: Project, detail: dict, *, run: Run | None = None) -> None:
        """Keep on record that the person did `action` (a project's settings, a deployment around approval)."""
        self.session.flush()
        self.session.add(
            AuditEvent(
                actor=self.actor.identity,
                platform=self.actor.platform,
                action=action,
                project_id=project.id,
                subject_type="run" if run is not None else "project",
                subject_id=run.id if run is not None else project.id,
                detail=detail,
            )
        )


Handler = Callable[[Context, Any], list[Message]]
