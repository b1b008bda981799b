"""Events kept in the database beside the stream: a run's moves announced with the move itself, relayed to the
stream once; what was announced while Redis was away is relayed later; a stage's events kept even while its own
SQLite transaction holds the write lock; and the whole story read back after the fact."""

from pathlib import Path

import redis
from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from engine.event_log import run_events
from engine.event_stream import Announcer, decode, relay_events
from engine.events import Event, progress_event
from engine.runs import approve_run, run_history, transition
from storage.db import make_engine
from storage.migrate import upgrade
from storage.models import Run, RunEvent
from tests.test_runs import add_run


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
