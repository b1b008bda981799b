"""Posting to a chat within its limits: one outbox per face paces every channel (Slack asks for about one message a
second per channel), waits out a platform's "slow down" (Slack's 429 and Retry-After, Telegram's retry_after) and
coalesces edits of one message, so that a thousand progress events make a handful of card edits and the last state
is always the one shown. A platform plugs in a `Sender`; the outbox knows nothing else about it."""

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from bot.core.catalogue import CATALOGUE, DEFAULT_LANGUAGE, say
from bot.core.messages import Message

PACE_S = 1.1  # seconds between two sends into one channel: Slack allows about one a second, kept with a margin
MAX_RATE_LIMITED = 5  # waits for one send before it is given up
ATTACH_TRIES = 3  # tries of something sent after its message (a chart, a report file, a message's next part)

logger = logging.getLogger(__name__)
Result = TypeVar("Result")


class RateLimited(Exception):
    """The platform asked us to wait `retry_after` seconds before sending again."""

    def __init__(self, retry_after: float) -> None:
        super().__init__(f"rate limited; retry after {retry_after} s")
        self.retry_after = retry_after


class Undeliverable(Exception):
    """The platform refused for good (not in the channel, no such channel): retrying cannot help. `said` is the
    catalogue's entry for it, filled in with `values` (or a sentence the catalogue does not hold, as it is):
    `sentence(language)` for a person; str() is the English one, for logs."""

    def __init__(self, said: str, **values: object) -> None:
        self.said, self.values = said, values
        super().__init__(self.sentence(DEFAULT_LANGUAGE))

    def sentence(self, language: str) -> str:
        return say(language, self.said, **self.values) if self.said in CATALOGUE else self.said


class Sender(Protocol):
    """What a platform provides: post a message (into a thread when `thread` is set) returning its id, and replace
    a posted message. Raises RateLimited or Undeliverable; anything else is a passing failure."""

    platform: str

    async def post(self, channel: str, thread: str | None, message: Message) -> str: ...

    async def update(self, channel: str, message_id: str, message: Message) -> None: ...


@dataclass
class _Channel:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    ready_at: float = 0.0  # when the next send may go
    edits: dict[str, Message] = field(default_factory=dict)  # message id -> the latest content wanted
    editor: asyncio.Task | None = None


class Outbox:
    def __init__(
        self,
        sender: Sender,
        *,
        pace_s: float = PACE_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.sender, self.pace_s, self.clock = sender, pace_s, clock
        self._channels: dict[str, _Channel] = {}

    async def post(self, channel: str, thread: str | None, message: Message) -> str:
        """Post `message` when the channel's pace allows; its id."""
        return await self._send(channel, lambda: self.sender.post(channel, thread, message))

    def edit(self, channel: str, message_id: str, message: Message) -> None:
        """Have `message_id` show `message` soon; a later edit of the same message replaces one not yet sent."""
        state = self._channel(channel)
        state.edits[message_id] = message
        if state.editor is None or state.editor.done():
            state.editor = asyncio.create_task(self._send_edits(channel, state))

    async def drain(self) -> None:
        """Wait until every edit asked for has been sent."""
        editors = [state.editor for state in self._channels.values() if state.editor is not None]
        await asyncio.gather(*editors, return_exceptions=True)

    async def _send_edits(self, channel: str, state: _Channel) -> None:
        while state.edits:
            message_id = next(iter(state.edits))

            async def send_latest(message_id: str = message_id) -> None:
                # Read at the last moment: an edit asked for while waiting for the pace is the one sent; one asked
                # for while sending stays, to be sent next.
                message = state.edits[message_id]
                await self.sender.update(channel, message_id, message)
                if state.edits.get(message_id) is message:
                    del state.edits[message_id]

            try:
                await self._send(channel, send_latest)
            except Exception:
                # A card edit is a view of state in the database: the next one shows it; nothing to retry.
                logger.exception("could not edit message %s in %s", message_id, channel)
                state.edits.pop(message_id, None)

    async def _send(self, channel: str, send: Callable[[], Awaitable[Result]]) -> Result:
        state = self._channel(channel)
        async with state.lock:
            for _ in range(MAX_RATE_LIMITED):
                wait = state.ready_at - self.clock()
                if wait > 0:
                    await asyncio.sleep(wait)
                try:
                    result = await send()
                except RateLimited as limited:
                    state.ready_at = self.clock() + max(limited.retry_after, self.pace_s)
                    logger.warning("%s: %s", channel, limited)
                    continue
                state.ready_at = self.clock() + self.pace_s
                return result
        raise RateLimited(state.ready_at - self.clock())

    def _channel(self, channel: str) -> _Channel:
        return self._channels.setdefault(channel, _Channel())


async def attach(send: Callable[[], Awaitable[object]], what: str, tries: int = ATTACH_TRIES) -> None:
    """Send what belongs to a message already posted (a chart, the report file, the next part of a long message),
    waiting out rate limits; a failure is logged, never retried by posting the message again."""
    for _ in range(tries):
        try:
            await send()
            return
        except RateLimited as limited:
            await asyncio.sleep(limited.retry_after)
        except Exception as error:  # the message stands without it
            logger.warning("could not send %s: %s", what, error)
            return
    logger.warning("gave up sending %s: rate limited", what)
