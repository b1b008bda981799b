"""The event stream on Redis: the engine appends every `Event`, and each front end reads it through its own
consumer group.

Schema of a stream entry (all strings): `id` (a uuid the producer assigns, so a front end can tell a repeat),
`run` (empty when the event belongs to no run), `project`, `type`, `payload` (JSON with Chinese kept as is)
and `time` (ISO 8601).

Delivery is at least once: a front end that dies before acknowledging gets the entry again. `EventConsumer`
turns that into "posted once" by remembering, per group, which event ids it has handled.

Consumer groups start at the beginning of the stream (`id="0"`), not at "$": after Redis is wiped the group
is recreated on the next read, and events the engine appended in between must not be lost. A brand-new
front end therefore sees the history the stream keeps (at most `DEFAULT_MAXLEN` entries); pass `start="$"`
for a front end that wants only what comes after it first connects.

Progress is coalesced twice: the producer appends at most one progress event per (run, stage) every
`interval` seconds, and a consumer hands its handler only the latest progress of each (run, stage) in a batch.

A run's moves announce themselves: `engine.loop.runs.transition` keeps the move's event in the move's transaction
and marks the session, and when that session commits on the configured database (engine.database.get_engine), the
kept events not yet on the stream are relayed to the configured Redis at once (`relay_committed_moves`). When Redis
is away the commit goes on after at most `RELAY_TIMEOUT_S` and the workers' periodic relay sends them once it is
back. A relay claims the rows it sends (`relay_events`), so of two relays at once only one sends an event; a repeat
can still reach the stream (a relay that appended and died before recording it), and followers and consumers skip it
by id.
"""

import json
import logging
import time
import uuid
import weakref
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from typing import Any, get_args

import redis
from sqlalchemy import event as sqlalchemy_event
from sqlalchemy import update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session as OrmSession
from sqlmodel import Session, col, select

from engine.events import Event, EventSink, EventType
from engine.events.log import EventKeeper
from engine.settings import get_settings
from storage.models import RunEvent, utcnow

DEFAULT_STREAM = "tuneloop:events"
DEFAULT_MAXLEN = 100_000
PROGRESS_INTERVAL_S = 2.0
CLAIM_IDLE_MS = 60_000
HANDLED_TTL_S = 7 * 24 * 3600
FINAL_STATES = frozenset({"deployed", "failed", "cancelled"})
RELAY_TIMEOUT_S = 1.0  # how long a commit's relay waits for Redis (connecting, or one command)
RELAY_BACKOFF_S = 10.0  # after Redis did not answer, commits leave relaying to the workers this long
MOVES_TO_RELAY = "tuneloop.moves_to_relay"  # Session.info: this transaction moved a run

logger = logging.getLogger(__name__)

EVENT_TYPES = frozenset(get_args(EventType))
FIELDS = ("id", "run", "project", "type", "payload", "time")


class MalformedEntry(ValueError):
    """A stream entry that does not follow the schema."""


@dataclass(frozen=True)
class StreamEvent:
    event: Event
    entry_id: str  # the stream's id, what XACK takes
    event_id: str  # the producer's uuid, the same in every delivery of one event


def encode(event: Event, event_id: str | None = None) -> dict[str, str]:
    return {
        "id": event_id or uuid.uuid4().hex,
        "run": "" if event.run is None else str(event.run),
        "project": event.project,
        "type": event.type,
        "payload": json.dumps(event.payload, ensure_ascii=False),
        "time": event.time.isoformat(),
    }


def decode(entry_id: str | bytes, fields: Mapping[str | bytes, str | bytes]) -> StreamEvent:
    """An entry as read from the stream (bytes or str); raises `MalformedEntry` when it breaks the schema."""
    data = {_text(key): _text(value) for key, value in fields.items()}
    missing = [name for name in FIELDS if name not in data]
    if missing:
        raise MalformedEntry(f"entry {_text(entry_id)} lacks {', '.join(missing)}")
    if data["type"] not in EVENT_TYPES:
        raise MalformedEntry(f"entry {_text(entry_id)} has unknown type {data['type']!r}")
    try:
        payload = json.loads(data["payload"])
        run = int(data["run"]) if data["run"] else None
        when = datetime.fromisoformat(data["time"])
    except ValueError as error:
        raise MalformedEntry(f"entry {_text(entry_id)}: {error}") from None
    if not isinstance(payload, dict):
        raise MalformedEntry(f"entry {_text(entry_id)}: payload is not a JSON object")
    event = Event(data["type"], data["project"], payload, run, when)  # type: ignore[arg-type]
    return StreamEvent(event, _text(entry_id), data["id"])


def is_final(event: Event) -> bool:
    """Whether the run has nothing more to say: deployed, failed or cancelled."""
    return event.type == "failure" or (event.type == "stage" and event.payload.get("state") in FINAL_STATES)


# ---- producer


def stream_sink(
    client: redis.Redis,
    *,
    stream: str = DEFAULT_STREAM,
    maxlen: int = DEFAULT_MAXLEN,
    interval: float = PROGRESS_INTERVAL_S,
    clock: Callable[[], float] = time.monotonic,
) -> EventSink:
    """A sink that appends to the stream, keeping it near `maxlen` entries and coalescing progress."""
    return Announcer(None, client, stream=stream, maxlen=maxlen, interval=interval, clock=clock)


class Announcer:
    """How the engine announces a run's events: each kept in the database (engine.events.log) when there is an
    `engine`, and appended to the stream when there is a `client`, under one id; progress coalesced first.
    `close()` when done: it waits for the events still being written to the database."""

    def __init__(
        self,
        engine: Engine | None,
        client: redis.Redis | None,
        *,
        stream: str = DEFAULT_STREAM,
        maxlen: int = DEFAULT_MAXLEN,
        interval: float = PROGRESS_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.keeper = EventKeeper(engine) if engine is not None else None
        self.client, self.stream, self.maxlen = client, stream, maxlen
        self.send = coalesce_progress(self._announce, interval=interval, clock=clock)

    def __call__(self, event: Event) -> None:
        self.send(event)

    def close(self) -> None:
        if self.keeper is not None:
            self.keeper.close()

    def _announce(self, event: Event) -> None:
        event_id = uuid.uuid4().hex
        streamed = self.client is not None and _append(self.client, self.stream, self.maxlen, event, event_id)
        if self.keeper is not None:
            self.keeper.keep(event, event_id, streamed=streamed)


def relay_events(engine: Engine, client: redis.Redis, *, stream: str = DEFAULT_STREAM, batch: int = 500) -> int:
    """Append to the stream the kept events that have not reached it (a run's moves, events announced while Redis
    was away), oldest first, and mark them; how many.

    The rows are claimed and marked by one conditional UPDATE (`... WHERE streamed_at IS NULL`), appended, and the
    claim committed only then: a second relay meanwhile waits for the claim (a row lock on PostgreSQL, the write lock
    on SQLite) and finds the rows taken, so it never sends them again nor ahead of them. What could not be appended
    is unmarked before the commit, and a relay that dies leaves its claim uncommitted: the next relay sends it."""
    oldest = (
        select(RunEvent.id)
        .where(col(RunEvent.streamed_at).is_(None))
        .order_by(col(RunEvent.id))
        .limit(batch)
        .with_for_update()  # PostgreSQL locks in id order, so two relays cannot deadlock; SQLite has no such clause
    )
    claim = (
        update(RunEvent)
        .where(col(RunEvent.id).in_(oldest), col(RunEvent.streamed_at).is_(None))
        .values(streamed_at=utcnow())
        .returning(RunEvent)
        .execution_options(synchronize_session=False)
    )
    with Session(engine) as session:
        claimed = sorted(session.exec(claim).scalars(), key=lambda row: row.id)  # type: ignore[call-overload]
        sent = 0
        for row in claimed:
            event = Event(row.type, row.project, row.payload or {}, row.run_id, row.created_at)  # type: ignore[arg-type]
            if not _append(client, stream, DEFAULT_MAXLEN, event, row.event_id):
                break
            sent += 1
        unsent = [row.id for row in claimed[sent:]]
        if unsent:
            session.exec(
                update(RunEvent)
                .where(col(RunEvent.id).in_(unsent))
                .values(streamed_at=None)
                .execution_options(synchronize_session=False)
            )
        session.commit()
        return sent


def announce_moves_at_commit(session: Session) -> None:
    """Mark `session` as holding a run's move, to be relayed to the stream when it commits."""
    session.info[MOVES_TO_RELAY] = True


_RELAYING: "weakref.WeakSet[Engine]" = weakref.WeakSet()
_redis_away_until: dict[str, float] = {}


def relay_moves_of(engine: Engine) -> None:
    """Relay the moves committed on `engine` (the configured database's) to the configured Redis at commit."""
    _RELAYING.add(engine)


@cache
def relay_client(url: str) -> redis.Redis:
    """The client relays use: short timeouts, because a relay holds its claim (on SQLite, the write lock) meanwhile."""
    return redis.Redis.from_url(url, socket_connect_timeout=RELAY_TIMEOUT_S, socket_timeout=RELAY_TIMEOUT_S)


def relay_committed_moves(engine: Engine, url: str) -> None:
    """Relay now what is waiting for the stream, unless Redis did not answer within the last `RELAY_BACKOFF_S`.
    Never raises: the move is committed, and the workers' periodic relay catches up."""
    if time.monotonic() < _redis_away_until.get(url, 0.0):
        return
    client = relay_client(url)
    try:
        client.ping()  # away: one short wait, not one per event
        relay_events(engine, client)
    except redis.RedisError as error:
        _redis_away_until[url] = time.monotonic() + RELAY_BACKOFF_S
        logger.warning("the event stream is away (%s); the workers will relay the run's moves", error)
    except SQLAlchemyError as error:  # e.g. SQLite's write lock held by another transaction too long
        logger.warning("could not relay the run's moves now (%s); the workers will", error)


@sqlalchemy_event.listens_for(OrmSession, "after_commit")
def _relay_after_commit(session: OrmSession) -> None:
    if session.info.pop(MOVES_TO_RELAY, False):
        engine = session.get_bind()
        if isinstance(engine, Engine) and engine in _RELAYING:
            relay_committed_moves(engine, get_settings().redis_url)


@sqlalchemy_event.listens_for(OrmSession, "after_rollback")
def _forget_rolled_back_moves(session: OrmSession) -> None:
    session.info.pop(MOVES_TO_RELAY, None)  # never announced: the move did not happen


def _append(client: redis.Redis, stream: str, maxlen: int, event: Event, event_id: str) -> bool:
    try:
        client.xadd(stream, encode(event, event_id), maxlen=maxlen, approximate=True)  # type: ignore[arg-type]
    except redis.RedisError:
        # A training must not die because the display is down; the run's state lives in the database.
        logger.exception("could not append a %s event of run %s to %s", event.type, event.run, stream)
        return False
    return True


def coalesce_progress(
    sink: EventSink, *, interval: float = PROGRESS_INTERVAL_S, clock: Callable[[], float] = time.monotonic
) -> EventSink:
    """Pass at most one progress event per (project, run, stage) every `interval` seconds, always the first and
    the final one (done == total). Progress held back is sent before the run's next other event, so a failure
    follows the step it failed at."""
    last_sent: dict[tuple[str, int | None, Any], float] = {}
    held: dict[tuple[str, int | None, Any], Event] = {}

    def send(event: Event) -> None:
        if event.type != "progress":
            for key in [key for key in held if key[:2] == (event.project, event.run)]:
                sink(held.pop(key))
            sink(event)
            return
        key = (event.project, event.run, event.payload.get("stage"))
        now = clock()
        final = event.payload.get("total") is not None and event.payload.get("done") == event.payload["total"]
        if final or key not in last_sent or now - last_sent[key] >= interval:
            held.pop(key, None)
            if final:
                last_sent.pop(key, None)  # a later pass of the same stage starts afresh
            else:
                last_sent[key] = now
            sink(event)
        else:
            held[key] = event

    return send


def fan_out(*sinks: EventSink) -> EventSink:
    """One sink that hands every event to each of `sinks`, e.g. the terminal and the stream."""

    def send(event: Event) -> None:
        for sink in sinks:
            sink(event)

    return send


# ---- consumers


class EventConsumer:
    """One front end's reader: consumer `consumer` of group `group` on `stream`.

    `read` re-delivers this consumer's own unacknowledged entries first (after a restart), then entries idle
    longer than `claim_idle_ms` in a dead consumer of the same group, then new ones."""

    def __init__(
        self,
        client: redis.Redis,
        group: str,
        consumer: str,
        *,
        stream: str = DEFAULT_STREAM,
        start: str = "0",
        claim_idle_ms: int = CLAIM_IDLE_MS,
        handled_ttl_s: int = HANDLED_TTL_S,
    ) -> None:
        self.client, self.group, self.consumer, self.stream = client, group, consumer, stream
        self.start, self.claim_idle_ms, self.handled_ttl_s = start, claim_idle_ms, handled_ttl_s
        self._backlog_cursor: str | None = "0"  # walks our own pending entries; None once they are done
        self._ensure_group()

    def read(self, count: int = 100, block_ms: int = 1000) -> list[StreamEvent]:
        """The next entries for this consumer, decoded; malformed ones are logged, acknowledged and left out."""
        if self._backlog_cursor is not None:
            entries = self._redis(
                self.client.xreadgroup, self.group, self.consumer, {self.stream: self._backlog_cursor}, count
            )
            entries = entries[0][1] if entries else []
            if entries:
                self._backlog_cursor = _text(entries[-1][0])
                return self._decoded(entries)
            self._backlog_cursor = None
        claimed = self._redis(
            self.client.xautoclaim, self.stream, self.group, self.consumer, self.claim_idle_ms, "0-0", count
        )
        if claimed and claimed[1]:
            return self._decoded(claimed[1])
        entries = self._redis(self.client.xreadgroup, self.group, self.consumer, {self.stream: ">"}, count, block_ms)
        return self._decoded(entries[0][1] if entries else [])

    def ack(self, events: list[StreamEvent]) -> None:
        if events:
            self._ack_ids([event.entry_id for event in events])

    def handled(self, event_id: str) -> bool:
        return bool(self.client.exists(self._handled_key(event_id)))

    def mark_handled(self, event_id: str) -> None:
        self.client.set(self._handled_key(event_id), 1, ex=self.handled_ttl_s)

    def consume(self, handler: Callable[[Event], None], count: int = 100, block_ms: int = 1000) -> int:
        """Read one batch and hand each new event to `handler` (a post to the chat), then acknowledge the batch.

        Events already handled (re-delivered after a crash between post and acknowledgement) are skipped, and of
        several progress events of one (run, stage) only the latest is handled. An event whose handler raises is
        left unacknowledged, so it is retried once it has been idle `claim_idle_ms`. Returns how many were
        handled. The one window left is a crash between the handler's post and `mark_handled`."""
        batch = self.read(count, block_ms)
        latest_progress = {_progress_key(item.event): item.entry_id for item in batch if item.event.type == "progress"}
        done: list[StreamEvent] = []
        handled = 0
        for item in batch:
            superseded = item.event.type == "progress" and latest_progress[_progress_key(item.event)] != item.entry_id
            if not superseded and not self.handled(item.event_id):
                try:
                    handler(item.event)
                except Exception:
                    logger.exception("handler of group %s failed on entry %s", self.group, item.entry_id)
                    continue
                self.mark_handled(item.event_id)
                handled += 1
            done.append(item)
        self.ack(done)
        return handled

    def _decoded(self, entries: list[tuple[Any, Any]]) -> list[StreamEvent]:
        events, rejected = [], []
        for entry_id, fields in entries:
            if entry_id is None:
                continue  # redis-py's placeholder for an entry trimmed while pending
            try:
                events.append(decode(entry_id, fields or {}))
            except MalformedEntry as error:
                logger.warning("skipping a malformed event in %s: %s", self.stream, error)
                rejected.append(_text(entry_id))
        if rejected:
            self._ack_ids(rejected)
        return events

    def _ack_ids(self, entry_ids: list[str]) -> None:
        self._redis(self.client.xack, self.stream, self.group, *entry_ids)

    def _handled_key(self, event_id: str) -> str:
        return f"{self.stream}:handled:{self.group}:{event_id}"

    def _ensure_group(self) -> None:
        try:
            self.client.xgroup_create(self.stream, self.group, id=self.start, mkstream=True)
        except redis.ResponseError as error:
            if "BUSYGROUP" not in str(error):
                raise

    def _redis(self, command: Callable[..., Any], *args: Any) -> Any:
        """Run `command`; when the stream or group has gone (Redis wiped), recreate them and run it again."""
        try:
            return command(*args)
        except redis.ResponseError as error:
            if "NOGROUP" not in str(error):
                raise
        logger.warning("group %s of %s was gone (Redis wiped?); recreating it", self.group, self.stream)
        self._ensure_group()
        self._backlog_cursor = None
        return command(*args)


# ---- followers


def follow_run(
    client: redis.Redis,
    run: int,
    *,
    stream: str = DEFAULT_STREAM,
    from_start: bool = False,
    after: str | None = None,
    timeout_s: float | None = None,
    block_ms: int = 1000,
    until: Callable[[], bool] | None = None,
) -> Iterator[Event]:
    """The events of `run` as they are appended, until a final one (yielded too), `timeout_s`, or `until()` says
    so (asked after every read: the database knows a state no event announces, such as `reviewing`).

    A follower only watches, so it reads with plain XREAD and leaves no group behind; it starts after the
    stream's current last entry, with `from_start` at the oldest entry the stream keeps, or `after` a given entry
    (`last_entry_id` read before starting the work, so that none of its events is missed). An event yielded once is
    not yielded again when a repeat of it (the same event id) follows."""
    last_id = after if after is not None else "0-0" if from_start else last_entry_id(client, stream)
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    seen: set[str] = set()  # event ids: a repeat of an event (relayed twice) is shown once
    while True:
        wait_ms = block_ms
        if deadline is not None:
            wait_ms = int(min(block_ms, (deadline - time.monotonic()) * 1000))
            if wait_ms <= 0:
                return
        reply = client.xread({stream: last_id}, count=100, block=wait_ms)
        for entry_id, fields in reply[0][1] if reply else []:
            last_id = _text(entry_id)
            try:
                item = decode(entry_id, fields)
            except MalformedEntry as error:
                logger.warning("skipping a malformed event in %s: %s", stream, error)
                continue
            if item.event.run == run and item.event_id not in seen:
                seen.add(item.event_id)
                yield item.event
                if is_final(item.event):
                    return
        if until is not None and until():
            return


def last_entry_id(client: redis.Redis, stream: str = DEFAULT_STREAM) -> str:
    newest = client.xrevrange(stream, count=1)
    return _text(newest[0][0]) if newest else "0-0"


def _progress_key(event: Event) -> tuple[str, int | None, Any]:
    return event.project, event.run, event.payload.get("stage")


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value
