"""The run events, into each run's conversation: a face reads the event stream through its own consumer group
(`EventConsumer`: redelivery after a crash, repeats ignored by event id, progress coalesced) and every event of a
run that lives in its chat becomes an edit of the run's card, and, when it matters to people, a reply in the thread:
a warning, a failure, a report, the evaluation and the samples to review, the outcome of approval and deployment.
When the run moves on, the buttons posted for its previous state are replaced by what happened.

An event is acknowledged only after its replies were posted, so a bot that restarts posts what it missed and,
the stream remembering what it handled, nothing twice. Card edits are not waited for: a card shows the state in
the database, and the next edit shows it again."""

import asyncio
import json
import logging
from dataclasses import dataclass, field

from sqlmodel import Session, col, select

from bot.core import conversations
from bot.core.actions import ShowReport, ShowReview, dump_action
from bot.core.errors import UserError
from bot.core.identity import Actor
from bot.core.messages import Button, Message
from bot.core.outbox import Outbox, Undeliverable
from bot.core.perform import Core
from bot.core.render import deployed_message, event_message, progress_bar, progress_text, run_card
from engine.events import Event
from engine.events.stream import EventConsumer
from storage.models import Deployment, Project, Run

# The moves people are told of in the thread; the others show on the card only.
TOLD_MOVES = frozenset({"reviewing", "awaiting_approval", "deployed", "failed", "cancelled"})
OPENING_WAIT_S = 10.0  # how long an event waits for its run's card to be posted (Slack allows 3 s a call)

logger = logging.getLogger(__name__)


@dataclass
class _Plan:
    card: Message
    posts: list[Message] = field(default_factory=list)
    moved: str | None = None  # what replaces stale buttons, when the run moved


class EventRelay:
    def __init__(self, core: Core, outbox: Outbox, consumer: EventConsumer) -> None:
        self.core, self.outbox, self.consumer = core, outbox, consumer
        self.platform = outbox.sender.platform
        self.reader = Actor(self.platform, "tuneloop")  # reads what the run's people see, in the project's language
        self._card_keys: dict[str, str] = {}  # a card button's action -> the key it was stored under

    async def run(self, stop: asyncio.Event, block_ms: int = 1000) -> None:
        """Relay events until `stop` is set."""
        while not stop.is_set():
            await self.relay_batch(block_ms)

    async def relay_batch(self, block_ms: int = 1000) -> int:
        """Relay one batch read from the stream; how many events were handled."""
        loop = asyncio.get_running_loop()

        def handle(event: Event) -> None:  # called by the consumer in its thread; waits for the posts
            asyncio.run_coroutine_threadsafe(self.relay(event), loop).result()

        return await asyncio.to_thread(self.consumer.consume, handle, 100, block_ms)

    async def relay(self, event: Event) -> None:
        """Post what `event` means to its run's conversation; nothing when the run has none on this platform."""
        if event.run is None:
            return
        place = await asyncio.to_thread(conversations.find, self.core.engine, self.platform, event.run)
        if place is not None and place.thread is None:
            place = await self._opened(place)
        if place is None:
            return
        plan = await asyncio.to_thread(self._plan, event)
        if plan is None:
            return
        # A card is edited at every event, progress too, with the same buttons most of the time: each is stored
        # once, not once an edit.
        for button in plan.card.buttons:
            button.key = self._card_keys.get(_button_id(button))
        await asyncio.to_thread(self.core.store_buttons, [plan.card, *plan.posts])
        self._card_keys.update((_button_id(button), button.key) for button in plan.card.buttons if button.key)
        if place.card is not None:
            self.outbox.edit(place.channel, place.card, plan.card)
        if plan.moved is not None:
            stale = await asyncio.to_thread(conversations.take_buttons, self.core.engine, place.id)
            for held in stale:
                self.outbox.edit(place.channel, held["id"], Message(held["title"], lines=[plan.moved]))
        for message in plan.posts:
            try:
                await conversations.post(self.core, self.outbox, message, place, place.channel, place.thread)
            except Undeliverable as refused:
                # Removed from the channel, the channel gone: retrying cannot post it; the run goes on.
                logger.warning("run %s: %s", event.run, refused)
                return

    async def _opened(self, place: conversations.Place) -> conversations.Place | None:
        """The conversation once its card is posted: a face is posting it now (the run just started), and what the
        event says belongs in the thread the card opens. None when it stays unopened (its bot stopped meanwhile)."""
        deadline = asyncio.get_running_loop().time() + OPENING_WAIT_S
        while asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
            found = await asyncio.to_thread(conversations.find, self.core.engine, self.platform, place.run_id)
            if found is not None and found.thread is not None:
                return found
        return None

    def _plan(self, event: Event) -> _Plan | None:
        with Session(self.core.engine) as session:
            run = session.get(Run, event.run)
            project = session.get(Project, run.project_id) if run is not None else None
            if run is None or project is None:
                return None
            language = self.core.language_for(session, self.reader, project)
            plan = _Plan(run_card(session, run, language))
            serving = session.exec(
                select(Deployment.version_name)
                .where(Deployment.project_id == project.id, Deployment.status == "active")
                .order_by(col(Deployment.id).desc())
            ).first()
        payload, said = event.payload, event_message(event, language)
        if event.type == "progress":
            stage = str(payload.get("stage", ""))
            plan.card.lines = [f"{stage} {progress_bar(payload.get('done', 0), payload.get('total'))}".strip()]
            plan.card.lines.append(progress_text(event))
            return plan
        assert said is not None
        plan.card.lines = [said.title]
        moved_to = payload.get("state") if event.type == "stage" and payload.get("stage") == "run" else None
        if moved_to is not None:
            plan.moved = said.title
        if event.type == "report" and payload.get("stage") == "evaluate":
            plan.posts += self._asked(ShowReport(run=event.run))  # type: ignore[arg-type]
        elif moved_to == "deployed" and serving is not None:
            gateway = self.core.settings.gateway_url
            plan.posts.append(deployed_message(project.name, serving, run.id, language, gateway, [said.title]))  # type: ignore[arg-type]
        elif event.type in ("report", "warning", "failure") or moved_to in TOLD_MOVES:
            plan.posts.append(said)
        if moved_to == "reviewing":
            plan.posts += self._asked(ShowReview(run=event.run))  # type: ignore[arg-type]
        return plan

    def _asked(self, action: ShowReport | ShowReview) -> list[Message]:
        try:
            return self.core.perform(action, self.reader)
        except UserError as error:
            return [Message(str(error), kind="error", run_id=action.run)]


def _button_id(button: Button) -> str:
    return json.dumps([dump_action(button.action), button.asks_for_text], sort_keys=True)
