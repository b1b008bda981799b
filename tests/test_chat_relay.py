"""The platform-neutral chat plumbing every face shares (bot/core): the outbox that paces channels, honours "retry
after" and coalesces card edits; conversations that tie a run to its thread and card; the relay that turns the run
event stream (real Redis, its own consumer group) into card edits and thread replies, and after a restart posts
what it missed and nothing twice. A fake sender stands in for the platform and records what it was asked."""

import asyncio
import time
from collections import Counter
from collections.abc import Iterator
from itertools import pairwise

import pytest
import redis
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from bot.core import conversations
from bot.core.actions import Status
from bot.core.event_relay import EventRelay
from bot.core.identity import Actor
from bot.core.messages import Message
from bot.core.outbox import Outbox, RateLimited, Undeliverable
from bot.core.perform import Core
from engine.events import Event, progress_event
from engine.events.stream import EventConsumer, stream_sink
from engine.settings import get_settings
from storage.models import Conversation
from tests.test_reviews import build

ALICE = Actor("slack", "U0ALICE", "Alice")


class FakeSender:
    """Records posts and edits with the time they were sent; `refuse` maps a call number to what it raises."""

    platform = "slack"

    def __init__(self) -> None:
        self.posts: list[tuple[str, str | None, Message]] = []
        self.edits: list[tuple[str, str, Message, float]] = []
        self.sent_at: list[tuple[str, float]] = []
        self.refuse: dict[int, Exception] = {}
        self.calls = 0

    def _call(self, channel: str) -> None:
        self.calls += 1
        if self.calls in self.refuse:
            raise self.refuse.pop(self.calls)
        self.sent_at.append((channel, time.monotonic()))

    async def post(self, channel: str, thread: str | None, message: Message) -> str:
        self._call(channel)
        self.posts.append((channel, thread, message))
        return f"{len(self.posts)}.000"

    async def update(self, channel: str, message_id: str, message: Message) -> None:
        self._call(channel)
        self.edits.append((channel, message_id, message, time.monotonic()))


# --- the outbox -------------------------------------------------------------------------------------------------


def test_posts_in_one_channel_keep_the_pace_and_other_channels_do_not_wait() -> None:
    async def scenario() -> FakeSender:
        sender = FakeSender()
        outbox = Outbox(sender, pace_s=0.2)
        await asyncio.gather(
            *(outbox.post("C1", None, Message(f"m{n}")) for n in range(3)), outbox.post("C2", None, Message("x"))
        )
        return sender

    sender = asyncio.run(scenario())
    times = [at for channel, at in sender.sent_at if channel == "C1"]
    assert [gap >= 0.19 for gap in (b - a for a, b in pairwise(times))] == [True, True]
    other = next(at for channel, at in sender.sent_at if channel == "C2")
    assert other - times[0] < 0.1  # C2 did not queue behind C1
    assert sorted(m.title for _, _, m in sender.posts) == ["m0", "m1", "m2", "x"]


def test_a_rate_limit_is_waited_out_and_nothing_is_lost() -> None:
    async def scenario() -> tuple[FakeSender, float]:
        sender = FakeSender()
        sender.refuse[1] = RateLimited(0.3)
        outbox = Outbox(sender, pace_s=0.01)
        started = time.monotonic()
        message_id = await outbox.post("C1", "1.0", Message("hello"))
        assert message_id == "1.000"
        return sender, time.monotonic() - started

    sender, took = asyncio.run(scenario())
    assert took >= 0.3  # Retry-After honoured
    assert [(c, t, m.title) for c, t, m in sender.posts] == [("C1", "1.0", "hello")]


def test_a_thousand_card_edits_become_a_few_and_the_last_state_is_shown() -> None:
    async def scenario() -> FakeSender:
        sender = FakeSender()
        outbox = Outbox(sender, pace_s=0.1)
        for step in range(1, 1001):
            outbox.edit("C1", "card", Message(f"step {step}"))
            if step % 100 == 0:
                await asyncio.sleep(0.05)  # the events arrive over half a second
        await outbox.drain()
        return sender

    sender = asyncio.run(scenario())
    assert 2 <= len(sender.edits) <= 8
    assert sender.edits[-1][2].title == "step 1000"
    times = [at for *_, at in sender.edits]
    assert all(b - a >= 0.09 for a, b in pairwise(times))


# --- conversations and the relay ------------------------------------------------------------------------------


@pytest.fixture
def core(db_engine: Engine) -> Iterator[Core]:
    get_settings.cache_clear()
    yield Core(db_engine, get_settings())


def consumer(client: redis.Redis, stream: str) -> EventConsumer:
    return EventConsumer(client, "slack", "bot-1", stream=stream, claim_idle_ms=60_000)


def move(run: int, state: str, by: str = "worker") -> Event:
    return Event("stage", "shop", {"stage": "run", "state": state, "from": "evaluating", "by": by}, run=run)


def test_a_runs_card_opens_its_thread_and_answers_about_it_go_there(core: Core, db_engine: Engine) -> None:
    run_id = build(db_engine).run_id

    async def scenario() -> FakeSender:
        sender = FakeSender()
        outbox = Outbox(sender, pace_s=0)
        card = core.perform(Status(run=run_id), ALICE)
        note = Message("about the run", run_id=run_id)
        await conversations.deliver(core, outbox, [note, *card], "C1", None)
        # Asked again from elsewhere in the channel: the same card is edited, no second thread.
        await conversations.deliver(core, outbox, core.perform(Status(run=run_id), ALICE), "C1", None)
        # Asked from another channel: the card is edited, and shown there too.
        await conversations.deliver(core, outbox, core.perform(Status(run=run_id), ALICE), "C2", "7.0")
        await outbox.drain()
        return sender

    sender = asyncio.run(scenario())
    (card_channel, card_thread, card), (note_channel, note_thread, note), elsewhere = sender.posts
    assert (elsewhere[0], elsewhere[1], elsewhere[2].kind) == ("C2", "7.0", "card")
    assert (card_channel, card_thread, card.kind) == ("C1", None, "card")
    assert (note_channel, note_thread, note.title) == ("C1", "1.000", "about the run")
    assert {(c, m) for c, m, _, _ in sender.edits} == {("C1", "1.000")}  # only the card in its own channel is edited
    assert all(button.key for button in card.buttons)  # stored under short keys before posting
    with Session(db_engine) as session:
        (row,) = session.exec(select(Conversation)).all()
        assert (row.run_id, row.platform, row.channel, row.thread, row.card) == (
            run_id,
            "slack",
            "C1",
            "1.000",
            "1.000",
        )


def test_events_edit_the_card_reply_in_the_thread_and_replace_stale_buttons(
    core: Core, db_engine: Engine, client: redis.Redis, stream: str
) -> None:
    run_id = build(db_engine).run_id
    place = conversations.opened(
        db_engine, conversations.reserve(db_engine, "slack", run_id, "C1").id, "100.1", "100.1"
    )
    conversations.keep_buttons(db_engine, place.id, "100.5", "Run card of iteration 1")
    sink = stream_sink(client, stream=stream, interval=0)
    for step in range(1, 51):
        sink(progress_event("shop", "train", step, 50, run=run_id, loss=1.0 / step))
    sink(Event("warning", "shop", {"message": "loss is <!channel> high"}, run=run_id))
    sink(move(run_id, "reviewing"))
    sink(Event("warning", "elsewhere", {"message": "a run with no conversation"}, run=run_id + 100))

    async def scenario() -> FakeSender:
        sender = FakeSender()
        outbox = Outbox(sender, pace_s=0)
        relay = EventRelay(core, outbox, consumer(client, stream))
        while await relay.relay_batch(block_ms=100):
            pass
        await outbox.drain()
        return sender

    sender = asyncio.run(scenario())
    titles = [message.title for _, _, message in sender.posts]
    assert all(thread == "100.1" and channel == "C1" for channel, thread, _ in sender.posts)
    assert titles[0] == f"run {run_id}: warning: loss is <!channel> high"  # plain text; the face escapes it
    assert titles[1] == f"run {run_id}: evaluating → waiting for review by worker"
    assert titles[2:] == [
        f"Run {run_id}: the 3 weakest samples to review",
        *(f"Sample #{n} · score {n + 1}.0" for n in (1, 2, 3)),
    ]
    reviewed = [message for _, _, message in sender.posts if message.buttons]
    assert reviewed and all(button.key for message in reviewed for button in message.buttons)
    card_edits = [message for _, message_id, message, _ in sender.edits if message_id == "100.1"]
    assert len(card_edits) < 10  # fifty progress events and two moves, coalesced
    assert card_edits[-1].lines[0] == titles[1]
    # The card keeps its buttons, keyed (a face shows no unkeyed button) once for all its edits alike.
    card_keys = {tuple(button.key for button in message.buttons) for message in card_edits}
    assert len(card_keys) == 1 and all(next(iter(card_keys))) and len(next(iter(card_keys))) == 4
    # The buttons posted for the previous state are replaced by what happened.
    (stale,) = [message for _, message_id, message, _ in sender.edits if message_id == "100.5"]
    assert stale.buttons == [] and stale.lines == [titles[1]]
    with Session(db_engine) as session:
        kept = session.get(Conversation, place.id).buttons
        assert {held["id"] for held in kept} == {
            f"{n}.000" for n in range(1, len(sender.posts) + 1) if sender.posts[n - 1][2].buttons
        }


def test_a_restarted_relay_posts_what_it_missed_and_nothing_twice(
    core: Core, db_engine: Engine, client: redis.Redis, stream: str
) -> None:
    run_id = build(db_engine).run_id
    place = conversations.reserve(db_engine, "slack", run_id, "C1")
    conversations.opened(db_engine, place.id, "100.1", None)  # no card: posts only
    sink = stream_sink(client, stream=stream, interval=0)
    for n in range(1, 5):
        sink(Event("warning", "shop", {"message": f"note {n}"}, run=run_id))
    sender = FakeSender()

    async def first_life() -> None:
        sender.refuse[2] = ConnectionError("the network dropped")  # the second post fails: not acknowledged
        relay = EventRelay(core, Outbox(sender, pace_s=0), consumer(client, stream))
        await relay.relay_batch(block_ms=100)

    asyncio.run(first_life())
    sink(Event("warning", "shop", {"message": "note 5"}, run=run_id))  # announced while the bot was down

    async def second_life() -> None:
        relay = EventRelay(core, Outbox(sender, pace_s=0), consumer(client, stream))
        while await relay.relay_batch(block_ms=100):
            pass

    asyncio.run(second_life())
    notes = [message.title.rsplit(" ", 1)[-1] for _, _, message in sender.posts]
    assert Counter(notes) == Counter({"1": 1, "2": 1, "3": 1, "4": 1, "5": 1})


def test_a_channel_that_refuses_for_good_does_not_block_the_stream(
    core: Core, db_engine: Engine, client: redis.Redis, stream: str
) -> None:
    run_id = build(db_engine).run_id
    conversations.opened(db_engine, conversations.reserve(db_engine, "slack", run_id, "C1").id, "100.1", None)
    sink = stream_sink(client, stream=stream, interval=0)
    sink(Event("warning", "shop", {"message": "first"}, run=run_id))
    sink(Event("warning", "shop", {"message": "second"}, run=run_id))
    sender = FakeSender()
    sender.refuse[1] = Undeliverable("invite @tuneloop to the channel")

    async def scenario() -> None:
        relay = EventRelay(core, Outbox(sender, pace_s=0), consumer(client, stream))
        while await relay.relay_batch(block_ms=100):
            pass

    asyncio.run(scenario())
    assert [message.title.rsplit(" ", 1)[-1] for _, _, message in sender.posts] == ["second"]
    assert client.xpending(stream, "slack")["pending"] == 0


def test_an_event_while_the_runs_card_is_being_posted_waits_for_its_thread(
    core: Core, db_engine: Engine, client: redis.Redis, stream: str
) -> None:
    run_id = build(db_engine).run_id
    reserved = conversations.reserve(db_engine, "slack", run_id, "C1")  # a face is posting the card right now
    stream_sink(client, stream=stream, interval=0)(Event("warning", "shop", {"message": "early"}, run=run_id))

    async def scenario() -> FakeSender:
        sender = FakeSender()
        outbox = Outbox(sender, pace_s=0)
        relay = EventRelay(core, outbox, consumer(client, stream))
        relaying = asyncio.create_task(relay.relay_batch(block_ms=100))
        await asyncio.sleep(0.3)
        assert sender.posts == []  # nowhere to post yet: it waits rather than dropping the warning
        await asyncio.to_thread(conversations.opened, db_engine, reserved.id, "100.1", "100.1")
        await relaying
        await outbox.drain()
        return sender

    sender = asyncio.run(scenario())
    assert [(channel, thread, message.title) for channel, thread, message in sender.posts] == [
        ("C1", "100.1", f"run {run_id}: warning: early")
    ]
