"""What the engine announces while it works, in one schema for every front end.

Engine functions take an `EventSink` and call it; the terminal draws a progress bar from the events,
and the run workers (a later issue) append them to the Redis stream the chat front ends read.
"""

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

EventType = Literal["progress", "stage", "report", "warning", "failure"]


@dataclass(frozen=True)
class Event:
    type: EventType
    project: str
    payload: dict[str, Any]
    run: int | None = None
    time: datetime = field(default_factory=lambda: datetime.now(UTC))


EventSink = Callable[[Event], None]


def ignore_events(_event: Event) -> None:
    """The sink for callers that follow nothing."""


def progress_event(
    project: str, stage: str, done: int, total: int | None, run: int | None = None, **extra: Any
) -> Event:
    return Event("progress", project, {"stage": stage, "done": done, "total": total, **extra}, run=run)
