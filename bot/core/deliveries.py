"""Telling a repeated delivery from a new one, across every bot process that shares Redis: Slack retries an event
it thinks was missed, Socket Mode spreads payloads over connections, and Telegram may hand an update over twice.
A face asks `first_time(key)` with the platform's own id of what arrived (an event id, an action timestamp)."""

import logging

import redis.asyncio as redis

SEEN_FOR_S = 3600  # Slack retries for minutes, not hours
logger = logging.getLogger(__name__)


class Deliveries:
    def __init__(self, client: redis.Redis, prefix: str, seen_for_s: int = SEEN_FOR_S) -> None:
        self.client, self.prefix, self.seen_for_s = client, prefix, seen_for_s

    @classmethod
    def on(cls, redis_url: str, platform: str) -> "Deliveries":
        return cls(redis.Redis.from_url(redis_url), f"tuneloop:deliveries:{platform}")

    async def first_time(self, key: str) -> bool:
        """Whether `key` arrives for the first time; remembered for `seen_for_s`. When Redis cannot be reached the
        delivery is taken as new: the engine's conditional moves still keep a repeated action from acting twice."""
        try:
            return bool(await self.client.set(f"{self.prefix}:{key}", 1, nx=True, ex=self.seen_for_s))
        except redis.RedisError as error:
            logger.warning("cannot tell repeats apart (%s); taking %s as new", error, key)
            return True

    async def close(self) -> None:
        await self.client.aclose()
