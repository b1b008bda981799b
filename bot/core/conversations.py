"""Where each run lives in a chat, and how a face's answers reach it: a run's card opens a thread the first time it
is posted and is edited in place afterwards; anything else about a run is posted in that thread; the rest goes
where it was asked. Kept in the `conversations` table, so a restarted bot edits the same card and replaces the
same stale buttons. Every face (Slack, Telegram) delivers through here with its own Sender."""

import asyncio
from dataclasses import dataclass
from typing import Any

from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, select

from bot.core.messages import Message
from bot.core.outbox import Outbox
from bot.core.perform import Core
from storage.db import session_scope
from storage.models import Conversation


@dataclass(frozen=True)
class Place:
    """A run's conversation as read from the table."""

    id: int
    run_id: int
    channel: str
    thread: str | None
    card: str | None


def find(engine: Engine, platform: str, run_id: int) -> Place | None:
    return _find(engine, Conversation.platform == platform, Conversation.run_id == run_id)


def find_thread(engine: Engine, platform: str, channel: str, thread: str | None) -> Place | None:
    """The run whose conversation is `thread` of `channel`, if any."""
    if thread is None:
        return None
    return _find(
        engine, Conversation.platform == platform, Conversation.channel == channel, Conversation.thread == thread
    )


def _find(engine: Engine, *conditions: Any) -> Place | None:
    with Session(engine) as session:
        row = session.exec(select(Conversation).where(*conditions)).first()
        return _place(row) if row is not None else None


def reserve(engine: Engine, platform: str, run_id: int, channel: str) -> Place:
    """Claim `run_id`'s conversation in `channel` before its card is posted; its thread stays unset until the card
    is (`opened`), which tells the relay to wait for it rather than drop an event that comes in between. The one
    already recorded wins."""
    try:
        with session_scope(engine) as session:
            row = Conversation(run_id=run_id, platform=platform, channel=channel, buttons=[])
            session.add(row)
            session.flush()
            return _place(row)
    except IntegrityError:
        found = find(engine, platform, run_id)
        assert found is not None
        return found


def opened(engine: Engine, conversation_id: int, thread: str, card: str | None) -> Place:
    """Record the thread a reserved conversation lives in, and its card (None: posts only)."""
    with session_scope(engine) as session:
        row = session.get(Conversation, conversation_id)
        assert row is not None
        row.thread, row.card = thread, card
        session.add(row)
        session.flush()
        return _place(row)


def keep_buttons(engine: Engine, conversation_id: int, message_id: str, title: str) -> None:
    """Remember a posted message whose buttons will go stale when the run moves on."""
    with session_scope(engine) as session:
        row = session.get(Conversation, conversation_id)
        assert row is not None
        row.buttons = [*(row.buttons or []), {"id": message_id, "title": title}]
        session.add(row)


def take_buttons(engine: Engine, conversation_id: int) -> list[dict]:
    """The messages holding buttons, forgotten as they are returned (their buttons are about to be replaced)."""
    with session_scope(engine) as session:
        row = session.get(Conversation, conversation_id)
        assert row is not None
        held, row.buttons = list(row.buttons or []), []
        session.add(row)
        return held


def _place(row: Conversation) -> Place:
    assert row.id is not None
    return Place(row.id, row.run_id, row.channel, row.thread, row.card)


async def deliver(core: Core, outbox: Outbox, messages: list[Message], channel: str, thread: str | None) -> None:
    """Post an action's answers, asked in `thread` of `channel`: a run's card opens its thread (or, once there is
    one, edits the card in place, and is shown where asked too when that is another channel); other messages about
    a run with a thread go into it; the rest where asked."""
    platform = outbox.sender.platform
    await asyncio.to_thread(core.store_buttons, messages)
    places: dict[int, Place | None] = {}
    for message in messages:
        if message.run_id is not None and message.run_id not in places:
            places[message.run_id] = await asyncio.to_thread(find, core.engine, platform, message.run_id)
    cards = [message for message in messages if message.kind == "card" and message.run_id is not None]
    card_ids = {id(card) for card in cards}
    for card in cards:  # first, so that the other answers about that run land in its new thread
        assert card.run_id is not None
        place = places[card.run_id]
        if place is None:
            place = await asyncio.to_thread(reserve, core.engine, platform, card.run_id, channel)
        if place.thread is None:  # ours to open, or left half open by a bot that stopped
            card_id = await outbox.post(place.channel, None, card)
            place = await asyncio.to_thread(opened, core.engine, place.id, card_id, card_id)
        elif place.card is not None:
            outbox.edit(place.channel, place.card, card)
        places[card.run_id] = place
    for message in messages:
        if id(message) in card_ids:
            place = places[message.run_id]  # type: ignore[index]
            if place is not None and place.channel != channel:
                await outbox.post(channel, thread, message)  # asked from elsewhere: shown there too
            continue
        place = places.get(message.run_id) if message.run_id is not None else None
        await post(core, outbox, message, place, channel, thread)


async def post(
    core: Core, outbox: Outbox, message: Message, place: Place | None, channel: str, thread: str | None
) -> str:
    """Post `message` in its run's thread when it has one, else in `thread` of `channel`; its buttons remembered."""
    where, into = (place.channel, place.thread) if place is not None else (channel, thread)
    message_id = await outbox.post(where, into, message)
    if place is not None and message.buttons:
        await asyncio.to_thread(keep_buttons, core.engine, place.id, message_id, message.title)
    return message_id


def is_card(engine: Engine, platform: str, channel: str, message_id: str) -> bool:
    """Whether a posted message is a run's card, which the relay keeps up to date itself."""
    with Session(engine) as session:
        found = session.exec(
            select(Conversation.id).where(
                Conversation.platform == platform, Conversation.channel == channel, Conversation.card == message_id
            )
        ).first()
        return found is not None
