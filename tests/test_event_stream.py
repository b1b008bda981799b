"""The event stream on the real Redis: schema, coalescing, consumer groups, crashes, wipes and `tuneloop follow`."""

import logging
import subprocess
import sys
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
import redis
from typer.testing import CliRunner

from bot.cli import app
from engine.events import Event, progress_event
from engine.events.stream import EventConsumer, decode, encode, fan_out, stream_sink

REPOSITORY = Path(__file__).resolve().parent.parent
runner = CliRunner()
ANNOUNCED = datetime(2025, 5, 1, 8, 30, tzinfo=UTC)  # fixed, so that an event read back equals a fresh one


@pytest.fixture
def follow_redis(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """`tuneloop follow` reads the test server, named so a test can see it waiting."""
    name = f"follow-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("TUNELOOP_REDIS_URL", f"{redis_url}?client_name={name}")
    return name


def warning(n: int, run: int = 7) -> Event:
    return Event("warning", "客服", {"n": n, "message": f"第 {n} 条"}, run=run, time=ANNOUNCED)


def stored(client: redis.Redis, stream: str) -> list[Event]:
    return [decode(entry_id, fields).event for entry_id, fields in client.xrange(stream)]


def collect(consumer: EventConsumer) -> list[Event]:
    posted: list[Event] = []
    consumer.consume(posted.append, block_ms=100)
    return posted


def test_schema_round_trip_keeps_chinese_and_every_field(client: redis.Redis, stream: str) -> None:
    events = [
        Event("report", "客服", {"headline": "通过:胜率 0.82", "weak": ["退货政策"]}, run=12),
        Event("warning", "客服", {"message": "没有运行编号"}),
    ]
    sink = stream_sink(client, stream=stream)
    for event in events:
        sink(event)

    (_, fields), _ = client.xrange(stream)
    assert {key.decode() for key in fields} == {"id", "run", "project", "type", "payload", "time"}
    assert "通过:胜率 0.82" in fields[b"payload"].decode()  # stored readable, not as \u escapes
    assert stored(client, stream) == events
    ids = {decode(entry, fields).event_id for entry, fields in client.xrange(stream)}
    assert len(ids) == 2


def test_producer_coalesces_a_long_training_to_a_handful_of_entries(client: redis.Redis, stream: str) -> None:
    sink = stream_sink(client, stream=stream)
    for step in range(1, 10_001):
        sink(progress_event("客服", "train", step, 10_000, run=7, loss=1 / step))

    steps = [event.payload["done"] for event in stored(client, stream)]
    assert len(steps) <= 10
    assert steps[0] == 1
    assert steps[-1] == 10_000


def test_progress_held_back_is_sent_before_the_runs_failure(client: redis.Redis, stream: str) -> None:
    sink = stream_sink(client, stream=stream, clock=lambda: 0.0)  # time stands still: only the first passes
    for step in range(1, 5_001):
        sink(progress_event("客服", "train", step, 10_000, run=7))
    sink(Event("failure", "客服", {"stage": "train", "error": "CUDA out of memory"}, run=7))

    assert [(event.type, event.payload.get("done")) for event in stored(client, stream)] == [
        ("progress", 1),
        ("progress", 5_000),
        ("failure", None),
    ]


def test_fan_out_hands_each_event_to_every_sink(client: redis.Redis, stream: str) -> None:
    printed: list[Event] = []
    sink = fan_out(printed.append, stream_sink(client, stream=stream))
    sink(warning(1))
    assert printed == stored(client, stream) == [warning(1)]


def test_each_front_end_gets_every_event_once(client: redis.Redis, stream: str) -> None:
    sink = stream_sink(client, stream=stream)
    slack = EventConsumer(client, "slack", "slack-1", stream=stream)
    telegram = EventConsumer(client, "telegram", "telegram-1", stream=stream)
    events = [warning(n) for n in range(5)]
    for event in events:
        sink(event)

    assert collect(slack) == events
    assert collect(telegram) == events
    assert collect(slack) == collect(telegram) == []


def test_an_event_on_the_stream_twice_is_handed_on_once(client: redis.Redis, stream: str) -> None:
    # A relay that appended an event and died before recording it: the next relay appends it again, same id.
    repeated = encode(warning(1), "e1")
    for fields in (encode(warning(0), "e0"), repeated, repeated, encode(warning(2), "e2")):
        client.xadd(stream, fields)  # type: ignore[arg-type]
    slack = EventConsumer(client, "slack", "slack-1", stream=stream)
    assert collect(slack) == [warning(0), warning(1), warning(2)]


def test_a_batch_hands_only_the_latest_progress_of_each_stage(client: redis.Redis, stream: str) -> None:
    sink = stream_sink(client, stream=stream, interval=0)  # every step reaches the stream
    for step in range(1, 6):
        sink(progress_event("客服", "train", step, 100, run=7))
        sink(progress_event("客服", "synth", step, 100, run=8))
    sink(warning(1))
    consumer = EventConsumer(client, "slack", "slack-1", stream=stream)

    posted = collect(consumer)

    assert [(event.type, event.payload.get("stage"), event.payload.get("done")) for event in posted] == [
        ("progress", "train", 5),
        ("progress", "synth", 5),
        ("warning", None, None),
    ]
    assert client.xpending(stream, "slack")["pending"] == 0  # the superseded ones are acknowledged too


def test_a_killed_front_end_posts_every_event_exactly_once(
    client: redis.Redis, stream: str, redis_url: str, tmp_path: Path
) -> None:
    sink = stream_sink(client, stream=stream)
    for n in range(60):
        sink(warning(n))
    posted = tmp_path / "posted.txt"

    def front_end(*crash: str) -> int:
        command = [sys.executable, "-m", "tests.stream_consumer", redis_url, stream, str(posted), *crash]
        return subprocess.run(command, cwd=REPOSITORY, timeout=60).returncode

    # killed mid-batch: events 20-24 posted, not acknowledged; then killed after posting 30-39, before the ack
    assert front_end("--die-before-posting", "25") == -9
    assert posted.read_text().split() == [str(n) for n in range(25)]
    assert front_end("--die-before-ack", "37") == -9
    assert front_end() == 0

    assert posted.read_text().split() == [str(n) for n in range(60)]
    assert client.xpending(stream, "slack")["pending"] == 0


def test_a_dead_consumers_entries_are_claimed_by_another(client: redis.Redis, stream: str) -> None:
    sink = stream_sink(client, stream=stream)
    events = [warning(n) for n in range(4)]
    for event in events:
        sink(event)
    dead = EventConsumer(client, "slack", "slack-1", stream=stream)
    assert [item.event for item in dead.read(block_ms=100)] == events  # read, never acknowledged

    survivor = EventConsumer(client, "slack", "slack-2", stream=stream, claim_idle_ms=0)

    assert collect(survivor) == events
    assert client.xpending(stream, "slack")["pending"] == 0


def test_a_malformed_entry_is_skipped_and_acknowledged(
    client: redis.Redis, stream: str, caplog: pytest.LogCaptureFixture
) -> None:
    consumer = EventConsumer(client, "slack", "slack-1", stream=stream)
    client.xadd(stream, {"type": "progress"})
    client.xadd(stream, {"id": "x", "run": "7", "project": "客服", "type": "warning", "payload": "{", "time": "now"})
    stream_sink(client, stream=stream)(warning(1))

    with caplog.at_level(logging.WARNING, logger="engine.events.stream"):
        assert collect(consumer) == [warning(1)]

    assert client.xpending(stream, "slack")["pending"] == 0
    assert caplog.text.count("malformed") == 2


def test_a_consumer_recovers_when_redis_is_wiped(client: redis.Redis, stream: str) -> None:
    # FLUSHDB on a database of its own: other tests share the server's database 0.
    scratch = redis.Redis(**{**client.connection_pool.connection_kwargs, "db": 15})
    try:
        sink = stream_sink(scratch, stream=stream)
        consumer = EventConsumer(scratch, "slack", "slack-1", stream=stream)
        sink(warning(1))
        assert collect(consumer) == [warning(1)]

        scratch.flushdb()
        assert collect(consumer) == []
        scratch.flushdb()
        sink(warning(2))  # appended before the group exists again, and still delivered

        assert collect(consumer) == [warning(2)]
    finally:
        scratch.flushdb()
        scratch.close()


def test_follow_shows_a_run_live_until_it_is_deployed(client: redis.Redis, stream: str, follow_redis: str) -> None:
    sink = stream_sink(client, stream=stream, interval=0)
    sink(warning(0))  # before `follow` starts: not shown

    def engine() -> None:
        # Announce once `follow` waits on the stream, so nothing depends on how fast it starts.
        while not any(c["name"] == follow_redis and c["cmd"] == "xread" for c in client.client_list()):
            time.sleep(0.01)
        sink(Event("stage", "客服", {"stage": "train", "state": "training", "out_dir": "/runs/7"}, run=7))
        for step in (1, 50, 100):
            sink(progress_event("客服", "train", step, 100, run=7, loss=2 / step))
        sink(warning(1, run=8))  # another run: not shown
        sink(Event("report", "客服", {"stage": "evaluate", "headline": "通过:胜率 0.82"}, run=7))
        sink(Event("stage", "客服", {"stage": "deploy", "state": "deployed"}, run=7))
        sink(warning(2))  # after the final event: not waited for

    producer = threading.Thread(target=engine)
    producer.start()
    result = runner.invoke(app, ["follow", "7", "--stream", stream, "--timeout", "5"])
    producer.join()

    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == "run 7: training into /runs/7"
    assert "step 100/100, loss 0.0200" in result.output
    assert "run 7: evaluate report 通过:胜率 0.82" in lines
    assert lines[-1] == "run 7: deploy deployed"
    assert "第 0 条" not in result.output
    assert "第 1 条" not in result.output
    assert "第 2 条" not in result.output


def test_follow_from_start_replays_a_failed_run(client: redis.Redis, stream: str, follow_redis: str) -> None:
    sink = stream_sink(client, stream=stream)
    sink(progress_event("客服", "train", 1, 100, run=7))
    sink(Event("failure", "客服", {"stage": "train", "error": "CUDA out of memory"}, run=7))

    result = runner.invoke(app, ["follow", "7", "--stream", stream, "--from-start", "--timeout", "5"])

    assert result.exit_code == 1
    assert "step 1/100" in result.output
    assert "run 7 failed (train): CUDA out of memory" in result.output


def test_follow_gives_up_after_its_timeout(stream: str, follow_redis: str) -> None:
    result = runner.invoke(app, ["follow", "7", "--stream", stream, "--timeout", "0.2"])

    assert result.exit_code == 124
    assert "run 7 is still going" in result.output


def test_follow_shows_a_move_on_the_stream_twice_once(client: redis.Redis, stream: str, follow_redis: str) -> None:
    def move(origin: str, state: str, by: str) -> Event:
        return Event("stage", "客服", {"stage": "run", "state": state, "from": origin, "by": by}, run=7, time=ANNOUNCED)

    approved = encode(move("reviewing", "deploying", "王经理"), "approved")
    for fields in (approved, approved, encode(move("deploying", "deployed", "worker:cpu-1"), "deployed")):
        client.xadd(stream, fields)  # type: ignore[arg-type]

    result = runner.invoke(app, ["follow", "7", "--stream", stream, "--from-start", "--timeout", "5"])

    assert result.exit_code == 0, result.output
    assert result.output.count("run 7: waiting for review → deploying by 王经理") == 1, result.output
    assert result.output.count("run 7: deploying → deployed by worker:cpu-1") == 1, result.output
