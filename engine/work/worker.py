"""An arq worker for one queue: `gpu` (train, generate: one job at a time) or `cpu` (synthesize, prepare, judge,
report, deploy).

It loads no model at start (a stage imports what it needs when it runs), and runs the reconciler every
`reconcile_every_s` beside its jobs, and the event relay every second. On SIGTERM it takes no new job and lets the
running one finish for `job_completion_wait_s`; after that a training saves a checkpoint and stops, and arq runs the
job again."""

import asyncio
import logging
import os
import socket
from typing import Any

from arq import Worker
from arq.connections import RedisSettings
from arq.worker import func
from sqlmodel import Session

from engine.database import get_engine
from engine.events.stream import relay_client, relay_events
from engine.settings import Settings, get_settings
from engine.work import stages
from engine.work.connection import JOB_CODEC
from engine.work.jobs import QUEUE_OF_STAGE, queue_name
from engine.work.reconcile import reconcile

logger = logging.getLogger(__name__)

QUEUES = ("gpu", "cpu")
RELAY_EVERY_S = 1.0  # how soon a run's move reaches the event stream


def worker_name() -> str:
    """What a Job records as the worker that ran it: host and process."""
    return f"{socket.gethostname()}:{os.getpid()}"


def build_worker(queue: str, *, burst: bool = False, settings: Settings | None = None) -> Worker:
    settings = settings or get_settings()
    if queue not in QUEUES:
        raise ValueError(f"'{queue}' is not a queue (queues: {', '.join(QUEUES)})")
    tries = settings.job_max_tries
    timeouts = {
        "synthesize": settings.prepare_timeout_s,
        "prepare": settings.prepare_timeout_s,
        "train": settings.train_timeout_s,
        "generate": settings.evaluate_timeout_s,
        "judge": settings.evaluate_timeout_s,
        "report": settings.evaluate_timeout_s,
        "deploy": settings.deploy_timeout_s,
    }
    functions = [
        func(getattr(stages, stage), name=stage, timeout=timeouts[stage], max_tries=tries)
        for stage, on in QUEUE_OF_STAGE.items()
        if on == queue
    ]
    return Worker(
        functions,  # type: ignore[arg-type]
        queue_name=queue_name(queue, settings),
        redis_settings=RedisSettings.from_dsn(settings.redis_url),
        **JOB_CODEC,
        burst=burst,
        max_jobs=1 if queue == "gpu" else 4,
        job_completion_wait=settings.job_completion_wait_s,
        max_tries=tries,
        poll_delay=0.5,
        on_startup=_start_reconciling,
        on_shutdown=_stop_reconciling,
        ctx={"worker_name": worker_name()},
    )


async def _reconcile_forever(pool: Any, settings: Settings) -> None:
    while True:
        try:
            with Session(get_engine(settings), expire_on_commit=False) as session:
                report = await reconcile(session, pool, silent_after_s=settings.silent_after_s)
            if report.lost or report.requeued or report.cancelled:
                logger.info("reconciled: %s", "; ".join(report.lines()))
        except Exception:  # Redis or the database away for a moment: the next pass tries again
            logger.exception("reconciling failed")
        await asyncio.sleep(settings.reconcile_every_s)


async def _relay_forever(settings: Settings) -> None:
    """Put on the event stream what the database holds and the stream does not yet: every run's moves (approved by
    a person in a chat, deployed, failed) and what a stage announced while Redis was away."""
    client = relay_client(settings.redis_url)
    while True:
        try:
            await asyncio.to_thread(relay_events, get_engine(settings), client)
        except Exception:  # Redis or the database away for a moment: the next pass tries again
            logger.exception("relaying events failed")
        await asyncio.sleep(RELAY_EVERY_S)


async def _start_reconciling(ctx: dict[str, Any]) -> None:
    settings = get_settings()
    ctx["background"] = [
        asyncio.create_task(_reconcile_forever(ctx["redis"], settings)),
        asyncio.create_task(_relay_forever(settings)),
    ]


async def _stop_reconciling(ctx: dict[str, Any]) -> None:
    for task in ctx["background"]:
        task.cancel()
