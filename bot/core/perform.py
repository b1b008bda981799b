"""Carrying out what a person asked: `Core.perform(action, actor)` checks who may, calls the engine and answers with
messages in the person's language. It is synchronous and blocking (the database, the queues, a deployment); a chat
face calls `perform_async`, which runs it off the event loop, in a thread, so that no face blocks its loop.

What each action does lives in `bot.core.handlers`, a module per concept; here is what every action shares: one unit
of work, the person's language, engine errors turned into UserErrors (whose message is the sentence to show),
refusals audited, and the buttons' server-side keys."""

import asyncio
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from bot.core import permissions
from bot.core.actions import Action, dump_action, load_action
from bot.core.catalogue import DEFAULT_LANGUAGE, LANGUAGES, say
from bot.core.context import Context, ignore
from bot.core.errors import UserError
from bot.core.grammar import parse
from bot.core.handlers import HANDLERS
from bot.core.handlers.data import problem_lines
from bot.core.identity import Actor
from bot.core.messages import Message
from engine.data.errors import DataError
from engine.data.split import SplitError
from engine.database import DatabaseNotReadyError
from engine.events import EventSink
from engine.loop.projects import NotFoundError, ProjectNameError, list_projects
from engine.loop.reviews import ReviewError
from engine.loop.runs import RunError
from engine.serve.adapters import DeployError
from engine.settings import Settings, get_settings
from engine.train.recipe import RecipeError
from storage.db import ConflictError, session_scope
from storage.models import ChatAction, ChatUser, Project, Run

Result = TypeVar("Result")
# What people see as engine sentences: the engine's own errors about what they asked.
_ENGINE_MISTAKES = (
    RunError,
    ReviewError,
    NotFoundError,
    ProjectNameError,
    DeployError,
    RecipeError,
    SplitError,
    DatabaseNotReadyError,
    ConflictError,
)


@dataclass
class Core:
    engine: Engine
    settings: Settings

    @classmethod
    def from_settings(cls) -> "Core":
        """The core on the configured database; one behind the schema is a plain sentence, not a traceback."""
        from engine.database import get_engine

        try:
            return cls(get_engine(), get_settings())
        except DatabaseNotReadyError as error:
            raise UserError(str(error), transient=True) from None

    # --- carrying out -----------------------------------------------------------------------------------------

    def perform(self, action: Action, actor: Actor, events: EventSink = ignore) -> list[Message]:
        """Carry out `action` for `actor`; raises UserError (the sentence to show) when it cannot be done. What the
        engine announces while the action works in this process goes to `events`."""
        handler = HANDLERS[type(action)]
        language = DEFAULT_LANGUAGE
        try:
            with session_scope(self.engine) as session:
                context = Context(self, session, actor, self.language_for(session, actor), events)
                try:
                    return handler(context, action)
                finally:
                    language = context.language
        except UserError as error:
            if error.refused:
                self.audit_refusal(action, actor, str(error))
            raise
        except DataError as error:
            # What is wrong with a file, record by record (file, record, field): for everyone who shares it.
            raise UserError("\n".join(problem_lines(error.headline, error.problems, language)), public=True) from None
        except _ENGINE_MISTAKES as error:
            # The core checked who may first; the engine's own refusals are its backstop and say why themselves.
            sentence = str(error) or say(language, "error.internal", kind=type(error).__name__)
            transient = isinstance(error, ConflictError | DatabaseNotReadyError)
            raise UserError(sentence, not_found=isinstance(error, NotFoundError), transient=transient) from None

    def audit_refusal(self, action: Action, actor: Actor, reason: str) -> None:
        """Keep a refusal on record, in its own transaction: the refused action's own work was rolled back."""
        with session_scope(self.engine) as session:
            permissions.record_refusal(session, actor, action.kind, _project_id(session, action), reason)

    async def perform_async(self, action: Action, actor: Actor) -> list[Message]:
        """`perform` off the event loop: the database and the queues are reached from a thread."""
        return await asyncio.to_thread(self.perform, action, actor)

    def parse(self, text: str, actor: Actor) -> Action:
        """Chat text as an action, mistakes answered in the person's language with the closest valid word."""
        with session_scope(self.engine) as session:
            language = self.language_for(session, actor)
            projects = [project.name for project in list_projects(session)]
        return parse(text, language, projects)

    def on_queues(self, call: Callable[[Any], Awaitable[Result]]) -> Result:
        """Run `call` with a connection to the configured queues, then close it. `perform` runs in a thread of its
        own (or the terminal's main thread), never on a face's event loop, so the queue gets a short loop here."""
        from engine.work.connection import QueuesUnreachableError, open_queues

        async def run() -> Result:
            pool = await open_queues(self.settings.redis_url)
            try:
                return await call(pool)
            finally:
                await pool.aclose()

        try:
            return asyncio.run(run())
        except QueuesUnreachableError as error:
            # Its URL shown with the password hidden; like a run that is not there, nothing to act on (exit 1).
            raise UserError(str(error), not_found=True) from None

    # --- languages and buttons ------------------------------------------------------------------------------

    def language_for(self, session: Session, actor: Actor, project: Project | None = None) -> str:
        """The person's own choice, else the project's, else English."""
        chosen = session.exec(
            select(ChatUser.language).where(ChatUser.platform == actor.platform, ChatUser.user_id == actor.user_id)
        ).first()
        if chosen:
            return chosen
        language = (project.settings or {}).get("language") if project is not None else None
        return language if language in LANGUAGES else DEFAULT_LANGUAGE

    def language_of(self, actor: Actor, project: str | None = None) -> str:
        """`language_for` in a session of its own, `project` named (None or unknown: the person's or English)."""
        with Session(self.engine) as session:
            row = session.exec(select(Project).where(Project.name == project)).first() if project else None
            return self.language_for(session, actor, row)

    def store_buttons(self, messages: list[Message]) -> list[Message]:
        """Give every button a short key under which its action is kept server-side (a chat face sends the key)."""
        with session_scope(self.engine) as session:
            for message in messages:
                for button in message.buttons:
                    if button.key is None:
                        button.key = secrets.token_urlsafe(12)  # 16 characters, unguessable
                        stored = ChatAction(
                            key=button.key, action=dump_action(button.action), asks=button.asks_for_text
                        )
                        session.add(stored)
        return messages

    def action_for_key(self, key: str) -> Action:
        return self.button_for_key(key)[0]

    def button_for_key(self, key: str) -> tuple[Action, str | None]:
        """A pressed button's action, and the prompt for the text it needs first (None: it needs none)."""
        with session_scope(self.engine) as session:
            stored = session.exec(select(ChatAction).where(ChatAction.key == key)).first()
        if stored is None:
            raise UserError(say(DEFAULT_LANGUAGE, "error.internal", kind="unknown button"))
        return load_action(stored.action), stored.asks


def _project_id(session: Session, action: Action) -> int | None:
    name = getattr(action, "project", None)
    if name is not None:
        return session.exec(select(Project.id).where(Project.name == name)).first()
    run_id = getattr(action, "run", None)
    if run_id is not None:
        return session.exec(select(Run.project_id).where(Run.id == run_id)).first()
    return None
