"""The one way onto arq's queues: jobs and their results travel as JSON, never pickle.

arq pickles by default, and a worker unpickles whatever it finds under a job key, so anyone able to write to Redis
would run code on every worker. Every pool and every Worker is made with JOB_CODEC; a payload that is not JSON is
refused by the worker (arq records the job as failed) and nothing in it runs. Redis asks for a password, carried in
its URL, which is shown only as `shown_url` writes it."""

import json
from typing import Any

from arq.connections import ArqRedis, RedisSettings, create_pool
from redis.exceptions import RedisError

from engine.settings import shown_url

__all__ = ["JOB_CODEC", "QueuesUnreachableError", "dumps_job", "loads_job", "open_queues"]


def dumps_job(data: dict[str, Any]) -> bytes:
    """A job or its result as JSON; a failed job's exception is kept as its type and message."""
    return json.dumps(data, default=_failure_text).encode()


def _failure_text(value: object) -> str:
    if isinstance(value, BaseException):  # arq stores what a failed job raised as its result
        return f"{type(value).__name__}: {value}"
    raise TypeError(f"a job carries JSON values only, not {type(value).__name__}")


def loads_job(raw: bytes) -> dict[str, Any]:
    """A job or result read back; anything but a JSON object raises, and arq then fails the job unrun."""
    data = json.loads(raw)
    if not isinstance(data, dict):
        raise ValueError(f"an arq job is a JSON object, not {type(data).__name__}")
    return data


JOB_CODEC: dict[str, Any] = {"job_serializer": dumps_job, "job_deserializer": loads_job}


class QueuesUnreachableError(RuntimeError):
    pass


async def open_queues(url: str) -> ArqRedis:
    """A connection to the queues on the Redis at `url` (its password, if any, in the URL); close it with aclose()."""
    try:
        return await create_pool(RedisSettings.from_dsn(url), **JOB_CODEC)
    except (RedisError, OSError) as error:  # arq has retried a few times already
        raise QueuesUnreachableError(f"cannot reach the queues' Redis at {shown_url(url)}: {error}") from None
