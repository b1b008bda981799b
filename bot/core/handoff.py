"""Work a chat face hands off once it has answered the platform (Slack's ack, Telegram's callback answer): run as
tasks, a few at a time, so that a burst of actions never delays answering the next one; failures logged, and a
clean stop waits for what was handed off."""

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

WORKING_AT_ONCE = 8  # actions carried out at once; the rest wait their turn

logger = logging.getLogger(__name__)


class HandOff:
    def __init__(self, platform: str, at_once: int = WORKING_AT_ONCE) -> None:
        self.platform = platform
        self.tasks: set[asyncio.Task] = set()
        self._working = asyncio.Semaphore(at_once)

    def start(self, work: Coroutine[Any, Any, None], *, in_turn: bool = True) -> None:
        """Run `work` as a task; `in_turn`: once fewer than `at_once` others are running (work that must answer
        quickly, such as reading a command's text before a modal's 3 s are up, does not wait)."""
        task = asyncio.create_task(self.in_turn(work) if in_turn else work)
        self.tasks.add(task)
        task.add_done_callback(self._finished)

    async def in_turn(self, work: Coroutine[Any, Any, None]) -> None:
        async with self._working:
            await work

    async def idle(self) -> None:
        """Wait for the work handed off so far (tests, and a clean stop)."""
        while self.tasks:
            await asyncio.gather(*list(self.tasks), return_exceptions=True)

    def _finished(self, task: asyncio.Task) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("a %s action failed", self.platform, exc_info=task.exception())
