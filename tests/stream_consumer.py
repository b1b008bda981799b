"""A front end in a subprocess for tests/test_event_stream.py: posts each event's `n` as a line of a file.

It drains the stream and exits, or SIGKILLs itself at a chosen point, the way a crash would stop it:
`--die-before-posting N` before posting event N, `--die-before-ack N` after posting event N (and the rest of
its batch) but before acknowledging."""

import argparse
import os
import signal
from pathlib import Path

import redis

from engine.events import Event
from engine.events.stream import EventConsumer, StreamEvent


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("redis_url")
    parser.add_argument("stream")
    parser.add_argument("posted", type=Path)
    parser.add_argument("--die-before-posting", type=int)
    parser.add_argument("--die-before-ack", type=int)
    options = parser.parse_args()
    client = redis.Redis.from_url(options.redis_url, decode_responses=True)
    consumer = EventConsumer(client, "slack", "slack-1", stream=options.stream)

    def post(event: Event) -> None:
        if event.payload["n"] == options.die_before_posting:
            os.kill(os.getpid(), signal.SIGKILL)
        with options.posted.open("a") as posted:
            posted.write(f"{event.payload['n']}\n")

    acknowledge = consumer.ack

    def ack(events: list[StreamEvent]) -> None:
        if any(item.event.payload["n"] == options.die_before_ack for item in events):
            os.kill(os.getpid(), signal.SIGKILL)
        acknowledge(events)

    consumer.ack = ack  # type: ignore[method-assign]
    while True:
        consumer.consume(post, count=10, block_ms=100)
        (group,) = client.xinfo_groups(options.stream)
        if group["pending"] == 0 and group["lag"] == 0:
            return


if __name__ == "__main__":
    main()
