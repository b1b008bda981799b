"""The events the engine announced, kept in the database: the stream on Redis is for following a run live and may be
trimmed or wiped, while a run's story must stay readable after the fact (`tuneloop run show`).

Every event is kept with the time it reached the stream, or none when it did not (Redis away); a run's moves are
kept by the move itself (engine.loop.runs.transition). Workers relay what has not reached the stream yet.

Events are written by a thread of their own, in order: a stage often announces while its own transaction is open,
and on SQLite a second writer would wait for that transaction (and hold the stage's heartbeat back with it).
Progress events are not kept: a training's steps are its Metric rows, and a Job row holds its stage's progress."""

import logging
import queue
import threading
import time

from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError, SQLAlchemyError
from sqlmodel import Session, col, select

from engine.events import Event
from storage.models import RunEvent, utcnow

logger = logging.getLogger(__name__)

CLOSE_WAIT_S = 60.0  # how long `close` waits for events still to be written (a stage's transaction to end)


class EventKeeper:
    """Writes events into `run_events` from a thread, retrying while the database is locked; `close` drains it."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.pending: queue.Queue[RunEvent | None] = queue.Queue()
        self.thread = threading.Thread(target=self._write_all, name="event-keeper", daemon=True)
        self.thread.start()

    def keep(self, event: Event, event_id: str, *, streamed: bool) -> None:
        """Keep the event; `streamed` says it is on the stream already (else a worker relays it there)."""
        if event.type == "progress":
            return
        row = RunEvent(
            event_id=event_id,
            run_id=event.run,
            project=event.project,
            type=event.type,
            payload=event.payload,
            created_at=event.time,
            streamed_at=utcnow() if streamed else None,
        )
        self.pending.put(row)

    def close(self) -> None:
        self.pending.put(None)
        self.thread.join(CLOSE_WAIT_S)
        if self.thread.is_alive():
            logger.error("events were still waiting to be kept after %.0f s; they are lost", CLOSE_WAIT_S)

    def _write_all(self) -> None:
        while (row := self.pending.get()) is not None:
            self._write(row)

    def _write(self, row: RunEvent) -> None:
        delay = 0.1
        while True:
            try:
                with Session(self.engine) as session:
                    session.add(row)
                    session.commit()
                return
            except OperationalError as error:  # SQLite's lock, or the server away for a moment
                if self.thread.is_alive() and delay < CLOSE_WAIT_S:
                    time.sleep(delay)
                    delay *= 2
                    continue
                logger.error("could not keep a %s event of run %s: %s", row.type, row.run_id, error)
                return
            except SQLAlchemyError:
                logger.exception("could not keep a %s event of run %s", row.type, row.run_id)
                return


def run_events(session: Session, run_id: int) -> list[RunEvent]:
    """The run's kept events, oldest first."""
    query = select(RunEvent).where(RunEvent.run_id == run_id).order_by(col(RunEvent.created_at), col(RunEvent.id))
    return list(session.exec(query).all())
