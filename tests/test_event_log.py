"""Events kept in the database beside the stream: a run's moves announced with the move itself and relayed to the
stream when it commits, exactly once even when relays race; what was announced while Redis was away is relayed
later; a stage's events kept even while its own SQLite transaction holds the write lock; and the whole story read
back after the fact."""

import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import redis
from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from engine.database import get_engine
from engine.events import Event, progress_event
from engine.events.log import run_events
from engine.events.stream import DEFAULT_STREAM, Announcer, decode, relay_events
from engine.loop.runs import approve_run, get_run, run_history, transition
from engine.settings import get_settings
from storage.db import make_engine, session_scope
from storage.migrate import upgrade
from storage.models import Run, RunEvent, utcnow
from tests.test_runs import add_run

EVENTS_REDIS_DB = 5  # a logical database of these tests' own: the relay at commit writes the default stream


def on_stream(client: redis.Redis, stream: str) -> list[tuple[str, Event]]:
    """(event id, event) of every entry, oldest first."""
    return [(item.event_id, item.event) for item in (decode(i, f) for i, f in client.xrange(stream))]


def test_a_move_is_announced_with_the_move_and_relayed_to_the_stream_once(
    db_engine: Engine, client: redis.Redis, stream: str
) -> None:
    run_id = add_run(db_engine, "reviewing")
    with Session(db_engine) as session:
        approve_run(session, run_id, "王经理", platform="slack")
        session.rollback()  # a move that did not happen is never announced
    with Session(db_engine) as session:
        assert run_events(session, run_id) == []
        approve_run(session, run_id, "王经理", platform="slack")
        session.commit()
    assert relay_events(db_engine, client, stream=stream) == 1
    assert relay_events(db_engine, client, stream=stream) == 0  # marked: a second relay sends nothing
    [(event_id, event)] = on_stream(client, stream)
    assert event.type == "stage" and event.run == run_id and event.project == "shop"
    assert event.payload == {
        "stage": "run",
        "state": "deploying",
        "from": "reviewing",
        "by": "王经理",
        "platform": "slack",
    }
    with Session(db_engine) as session:
        [kept] = run_events(session, run_id)
        assert kept.event_id == event_id and kept.streamed_at is not None


def test_events_announced_while_redis_is_away_are_kept_and_relayed_later(
    db_engine: Engine, client: redis.Redis, stream: str
) -> None:
    run_id = add_run(db_engine, "training")
    away = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2)  # nothing listens on port 1
    announcer = Announcer(db_engine, away, stream=stream)
    announcer(progress_event("shop", "train", 1, 10, run=run_id))
    announcer(Event("warning", "shop", {"message": "验证集损失上升"}, run=run_id))
    announcer(Event("failure", "shop", {"stage": "train", "error": "CUDA out of memory"}, run=run_id))
    announcer.close()
    with Session(db_engine) as session:
        kept = run_events(session, run_id)
    assert [(e.type, e.streamed_at) for e in kept] == [("warning", None), ("failure", None)]  # progress: not kept
    assert relay_events(db_engine, client, stream=stream) == 2
    relayed = on_stream(client, stream)
    assert [e.payload.get("message") or e.payload.get("error") for _, e in relayed] == [
        "验证集损失上升",
        "CUDA out of memory",
    ]
    assert [event_id for event_id, _ in relayed] == [e.event_id for e in kept]  # the ids front ends dedupe by


def test_events_announced_with_redis_up_reach_the_stream_at_once_and_are_kept_as_streamed(
    db_engine: Engine, client: redis.Redis, stream: str
) -> None:
    run_id = add_run(db_engine, "evaluating")
    announcer = Announcer(db_engine, client, stream=stream)
    announcer(Event("report", "shop", {"stage": "evaluate", "headline": "门槛未通过"}, run=run_id))
    announcer.close()
    [(event_id, event)] = on_stream(client, stream)
    assert event.payload["headline"] == "门槛未通过"
    with Session(db_engine) as session:
        [kept] = run_events(session, run_id)
    assert kept.event_id == event_id and kept.streamed_at is not None
    assert relay_events(db_engine, client, stream=stream) == 0


def test_a_stage_that_announces_inside_its_own_sqlite_transaction_loses_no_event(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'tuneloop.db'}"
    upgrade(url)
    engine = make_engine(url)
    run_id = add_run(engine, "evaluating")
    announcer = Announcer(engine, None)
    with Session(engine) as session:  # the stage's own write, not committed yet: SQLite's write lock is held
        session.exec(text("UPDATE runs SET error = 'writing' WHERE id = :id").bindparams(id=run_id))
        for n in range(3):
            announcer(Event("stage", "shop", {"stage": "evaluate", "step": f"step {n}"}, run=run_id))
        session.commit()
    announcer.close()  # waits for the writer, which waited for the lock
    with Session(engine) as session:
        assert [e.payload["step"] for e in run_events(session, run_id)] == ["step 0", "step 1", "step 2"]
    engine.dispose()


def test_a_runs_history_holds_its_moves_and_events(db_engine: Engine) -> None:
    run_id = add_run(db_engine, "queued")
    with Session(db_engine) as session:
        run = session.exec(select(Run).where(Run.id == run_id)).one()
        transition(session, run, "training", actor="worker:gpu-1")
        session.commit()
    announcer = Announcer(db_engine, None)
    announcer(Event("warning", "shop", {"message": "loss is rising"}, run=run_id))
    announcer.close()
    with Session(db_engine) as session:
        history = run_history(session, run_id)
        types = [(e.type, (e.payload or {}).get("state") or (e.payload or {}).get("message")) for e in history.events]
        assert types == [("stage", "training"), ("warning", "loss is rising")]
        assert session.exec(select(RunEvent)).all()  # in the database, whatever Redis keeps


def test_relays_racing_each_other_send_every_event_exactly_once_in_order(
    db_engine: Engine, client: redis.Redis, stream: str
) -> None:
    run_id = add_run(db_engine, "training")
    with Session(db_engine) as session:  # kept while Redis was away: waiting for the stream
        for n in range(60):
            session.add(
                RunEvent(
                    event_id=uuid.uuid4().hex,
                    run_id=run_id,
                    project="shop",
                    type="warning",
                    payload={"message": f"warning {n}"},
                    created_at=utcnow(),
                )
            )
        session.commit()

    def relay_until_none_left() -> int:
        sent = total = 0
        while sent := relay_events(db_engine, client, stream=stream, batch=4):  # small batches: the relays interleave
            total += sent
        return total

    with ThreadPoolExecutor(4) as relays:  # as the gpu and cpu workers and a command relay at once
        counts = list(relays.map(lambda _: relay_until_none_left(), range(4)))
    relayed = on_stream(client, stream)
    assert [event.payload["message"] for _, event in relayed] == [f"warning {n}" for n in range(60)]
    assert sum(counts) == 60
    with Session(db_engine) as session:
        assert all(row.streamed_at is not None for row in run_events(session, run_id))


@pytest.fixture
def configured(
    db_url: str, db_engine: Engine, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[redis.Redis]:
    """The configured database is `db_url`'s and the configured Redis a logical database of these tests'; a client of
    it, whose default stream is emptied before and after."""
    url = f"{redis_url.rsplit('/', 1)[0]}/{EVENTS_REDIS_DB}"
    monkeypatch.setenv("TUNELOOP_DATABASE_URL", db_url)
    monkeypatch.setenv("TUNELOOP_REDIS_URL", url)
    get_settings.cache_clear()
    client = redis.Redis.from_url(url)
    client.delete(DEFAULT_STREAM)
    yield client
    client.delete(DEFAULT_STREAM)
    client.close()
    get_engine().dispose()  # a PostgreSQL database is dropped next


def test_a_committed_move_reaches_the_stream_once_without_anyone_relaying_it(configured: redis.Redis) -> None:
    engine = get_engine()
    run_id = add_run(engine, "reviewing")
    with Session(engine) as session:
        transition(session, get_run(session, run_id), "cancelled", actor="rita")
        session.rollback()  # never happened: never announced
    with session_scope(engine) as session:
        approve_run(session, run_id, "王经理", platform="slack")
        assert configured.xlen(DEFAULT_STREAM) == 0  # not before the move is committed
    [(event_id, event)] = on_stream(configured, DEFAULT_STREAM)
    assert (event.run, event.payload["from"], event.payload["state"]) == (run_id, "reviewing", "deploying")
    with Session(engine) as session:
        [kept] = run_events(session, run_id)
    assert kept.event_id == event_id and kept.streamed_at is not None
    assert relay_events(engine, configured) == 0  # nothing left for the workers' relay


def test_a_move_committed_while_redis_is_away_is_kept_and_relayed_once_it_is_back(
    db_url: str, db_engine: Engine, client: redis.Redis, stream: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TUNELOOP_DATABASE_URL", db_url)
    monkeypatch.setenv("TUNELOOP_REDIS_URL", "redis://127.0.0.1:1/0")  # nothing listens on port 1
    get_settings.cache_clear()
    engine = get_engine()
    run_id = add_run(engine, "reviewing")
    with session_scope(engine) as session:  # the commit goes through
        approve_run(session, run_id, "王经理", platform="slack")
    with Session(engine) as session:
        [kept] = run_events(session, run_id)
    assert kept.streamed_at is None
    assert relay_events(engine, client, stream=stream) == 1  # a worker's relay, Redis back
    assert [event_id for event_id, _ in on_stream(client, stream)] == [kept.event_id]
    engine.dispose()
