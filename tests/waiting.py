"""Waiting in tests for what a bot does in its own time: a deadline against hanging, never a timing assertion."""

import asyncio
import socket
import time
from collections.abc import Callable


async def until(what: str, condition: Callable[[], object], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


def listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0
