"""What the Telegram bot must remember across a restart and across bots sharing Redis, small and short-lived:
which force-reply prompt waits for what (a Fix's answer, an override's reason, a dataset), the question a button
asks to confirm, and what each edited message shows (Telegram refuses an edit that changes nothing). Kept in Redis
as JSON; when Redis cannot be reached the bot says so rather than guess."""

import json
import logging
from typing import Any

import redis.asyncio as redis

KEPT_FOR_S = 7 * 24 * 3600  # a prompt or a confirmation may be answered days later

logger = logging.getLogger(__name__)


class Memory:
    def __init__(self, client: redis.Redis, prefix: str = "tuneloop:telegram", kept_for_s: int = KEPT_FOR_S) -> None:
        self.client, self.prefix, self.kept_for_s = client, prefix, kept_for_s

    @classmethod
    def on(cls, redis_url: str) -> "Memory":
        return cls(redis.Redis.from_url(redis_url))

    async def remember(self, kind: str, key: str, value: Any) -> None:
        try:
            await self.client.set(f"{self.prefix}:{kind}:{key}", json.dumps(value), ex=self.kept_for_s)
        except redis.RedisError as error:
            logger.warning("could not remember %s %s: %s", kind, key, error)

    async def recall(self, kind: str, key: str) -> Any:
        """What was remembered under `key`; None when nothing was (or Redis cannot be reached)."""
        try:
            stored = await self.client.get(f"{self.prefix}:{kind}:{key}")
        except redis.RedisError as error:
            logger.warning("could not recall %s %s: %s", kind, key, error)
            return None
        return json.loads(stored) if stored is not None else None

    async def close(self) -> None:
        await self.client.aclose()
