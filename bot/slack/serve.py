"""Running the Slack face: the Bolt app (Socket Mode, or HTTP on /slack/events) and the event relay, in one loop."""

import asyncio
import logging
import signal

import redis
from aiohttp import web
from slack_sdk.http_retry.builtin_async_handlers import AsyncConnectionErrorRetryHandler
from slack_sdk.web.async_client import AsyncWebClient

from bot.core.deliveries import Deliveries
from bot.core.event_relay import EventRelay
from bot.core.outbox import Outbox
from bot.core.perform import Core
from bot.slack.app import SlackFace
from bot.slack.sender import SlackSender
from engine.events.stream import EventConsumer

SLACK_API_URL = "https://slack.com/api/"
GROUP = "slack"  # the consumer group of every Slack bot on the stream
BACKLOG = 1024  # connections waiting to be accepted; aiohttp's 128 made a burst of commands wait a second for SYN
logger = logging.getLogger(__name__)


def web_client(bot_token: str, api_url: str = SLACK_API_URL) -> AsyncWebClient:
    """The Web API client; rate limits are the outbox's to wait out, so only connection errors are retried here."""
    return AsyncWebClient(
        token=bot_token,
        base_url=api_url if api_url.endswith("/") else api_url + "/",
        retry_handlers=[AsyncConnectionErrorRetryHandler()],
    )


async def serve(
    core: Core,
    *,
    bot_token: str,
    api_url: str = SLACK_API_URL,
    app_token: str | None = None,
    signing_secret: str | None = None,
    port: int | None = None,
    consumer: str = "slack-bot",
    stop: asyncio.Event | None = None,
) -> None:
    """Serve until `stop` is set (by default: SIGTERM or SIGINT), over HTTP on `port` (checking `signing_secret`),
    else over Socket Mode; then finish the work already acknowledged."""
    if stop is None:
        stop = asyncio.Event()
        for signal_number in (signal.SIGTERM, signal.SIGINT):
            asyncio.get_running_loop().add_signal_handler(signal_number, stop.set)
    client = web_client(bot_token, api_url)
    outbox = Outbox(SlackSender(client))
    deliveries = Deliveries.on(core.settings.redis_url, "slack")
    face = SlackFace(core, client, outbox, deliveries)
    http = port is not None
    events = EventConsumer(redis.Redis.from_url(core.settings.redis_url), GROUP, consumer)
    relay = asyncio.create_task(EventRelay(core, outbox, events).run(stop))
    if http:
        assert signing_secret is not None, "HTTP mode checks requests with the signing secret"
        runner = web.AppRunner(face.http(signing_secret=signing_secret))
        await runner.setup()
        await web.TCPSite(runner, "0.0.0.0", port, backlog=BACKLOG).start()
        logger.info("tuneloop's Slack app listens on port %s at /slack/events", port)
        await stop.wait()
        await runner.cleanup()
    else:
        from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler

        handler = AsyncSocketModeHandler(face.app(signing_secret=None), app_token)
        await handler.connect_async()
        logger.info("tuneloop's Slack app is connected over Socket Mode")
        await stop.wait()
        await handler.close_async()
    await relay
    await face.idle()
    await deliveries.close()
