"""Running the Telegram face: the aiogram dispatcher (long polling, or a webhook whose secret token is checked) and
the event relay, in one loop, against Telegram's Bot API or a local Bot API server (`TelegramAPIServer.from_base`)."""

import asyncio
import logging
import secrets
import signal
from urllib.parse import urlsplit

import redis
from aiogram import Bot, Dispatcher
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.client.telegram import TelegramAPIServer
from aiogram.webhook.aiohttp_server import SimpleRequestHandler, setup_application
from aiohttp import web

from bot.core.deliveries import Deliveries
from bot.core.event_relay import EventRelay
from bot.core.outbox import Outbox
from bot.core.perform import Core
from bot.telegram.app import TelegramFace
from bot.telegram.memory import Memory
from bot.telegram.sender import TelegramSender
from engine.events.stream import EventConsumer

TELEGRAM_API_URL = "https://api.telegram.org"
GROUP = "telegram"  # the consumer group of every Telegram bot on the stream
WEBHOOK_PATH = "/telegram/webhook"
PACE_S = 1.1  # about one message a second per chat (core.telegram.org/bots/faq#my-bot-is-hitting-limits)
POLLING_TIMEOUT_S = 10
logger = logging.getLogger(__name__)


def telegram_bot(token: str, api_url: str = TELEGRAM_API_URL, *, local_files: bool = False) -> Bot:
    """The bot's client: `{api_url}/bot{token}/{method}`, files from `{api_url}/file/bot{token}/{path}`, or read
    from disk when `local_files` (a local Bot API server started with --local, whose folder this bot sees)."""
    api = TelegramAPIServer.from_base(api_url.rstrip("/"), is_local=local_files)
    return Bot(token, session=AiohttpSession(api=api))


async def serve(
    core: Core,
    *,
    token: str,
    api_url: str = TELEGRAM_API_URL,
    local_files: bool = False,
    webhook: str | None = None,
    secret: str | None = None,
    port: int = 8443,
    consumer: str = "telegram-bot",
    stop: asyncio.Event | None = None,
    polling_timeout: int = POLLING_TIMEOUT_S,
    pace_s: float = PACE_S,
) -> None:
    """Serve until `stop` is set (by default: SIGTERM or SIGINT): over a webhook at `webhook` (Telegram posts to
    it, and this bot listens on `port` at its path, checking `secret`), else by long polling; then finish the work
    already taken."""
    if stop is None:
        stop = asyncio.Event()
        for signal_number in (signal.SIGTERM, signal.SIGINT):
            asyncio.get_running_loop().add_signal_handler(signal_number, stop.set)
    bot = telegram_bot(token, api_url, local_files=local_files)
    memory = Memory.on(core.settings.redis_url)
    outbox = Outbox(TelegramSender(bot, memory), pace_s=pace_s)
    deliveries = Deliveries.on(core.settings.redis_url, "telegram")
    face = TelegramFace(core, bot, outbox, deliveries, memory, local_files=local_files)
    dispatcher = face.dispatcher()
    events = EventConsumer(redis.Redis.from_url(core.settings.redis_url), GROUP, consumer)
    relay = asyncio.create_task(EventRelay(core, outbox, events).run(stop))
    me = await bot.get_me()
    try:
        if webhook is not None:
            await _serve_webhook(bot, dispatcher, webhook, secret, port, stop)
        else:
            await bot.delete_webhook()  # getUpdates answers 409 Conflict while a webhook is set
            logger.info("@%s polls %s for updates", me.username, api_url)
            polling = asyncio.create_task(
                dispatcher.start_polling(
                    bot, polling_timeout=polling_timeout, handle_signals=False, close_bot_session=False
                )
            )
            await stop.wait()
            await dispatcher.stop_polling()
            await polling
        await relay
        await face.idle()
    finally:
        await bot.session.close()
        await deliveries.close()
        await memory.close()


async def _serve_webhook(
    bot: Bot, dispatcher: Dispatcher, url: str, secret: str | None, port: int, stop: asyncio.Event
) -> None:
    """Telegram posts updates to `url`, each with the secret token in X-Telegram-Bot-Api-Secret-Token; a request
    without it is refused with 401 (aiogram compares it in constant time) and never reaches the dispatcher. Without
    a secret given, a new one is made at each start: this bot hands it to Telegram itself (setWebhook)."""
    secret = secret or secrets.token_urlsafe(32)
    if not urlsplit(url).path.strip("/"):
        url = url.rstrip("/") + WEBHOOK_PATH
    path = urlsplit(url).path
    app = web.Application()
    SimpleRequestHandler(dispatcher=dispatcher, bot=bot, secret_token=secret).register(app, path=path)
    setup_application(app, dispatcher, bot=bot)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "0.0.0.0", port).start()
    await bot.set_webhook(url, secret_token=secret, allowed_updates=dispatcher.resolve_used_update_types())
    logger.info("listening on port %s at %s for Telegram's updates to %s", port, path, url)
    await stop.wait()
    await runner.cleanup()
