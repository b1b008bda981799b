"""`tuneloop bot slack`, `tuneloop bot telegram`: the chat faces, run as long-lived bots."""

import asyncio
import logging
from typing import Annotated

import typer

from bot.cli.act import fail_plain

app = typer.Typer(help="Run a chat bot.", no_args_is_help=True)


@app.command("slack")
def slack_command(
    http: Annotated[bool, typer.Option("--http", help="Serve Slack's HTTP requests instead of Socket Mode.")] = False,
    port: Annotated[int, typer.Option(help="The HTTP port (with --http); Slack posts to /slack/events.")] = 3000,
    bot_token: Annotated[str, typer.Option(envvar="SLACK_BOT_TOKEN", show_default=False, hidden=True)] = "",
    app_token: Annotated[str, typer.Option(envvar="SLACK_APP_TOKEN", show_default=False, hidden=True)] = "",
    signing_secret: Annotated[str, typer.Option(envvar="SLACK_SIGNING_SECRET", show_default=False, hidden=True)] = "",
    api_url: Annotated[
        str, typer.Option(envvar="TUNELOOP_SLACK_API_URL", help="Slack's Web API base URL (a proxy, or a test server).")
    ] = "https://slack.com/api/",
    consumer: Annotated[str, typer.Option(help="This bot's name in the event stream's 'slack' group.")] = "slack-bot",
) -> None:
    """The Slack bot: /finetune, the run threads and their buttons. Tokens come from SLACK_BOT_TOKEN and, in
    Socket Mode, SLACK_APP_TOKEN (xapp-…); with --http, requests are checked with SLACK_SIGNING_SECRET. SIGTERM or
    Ctrl-C stops it after the work it has acknowledged."""
    from bot.core.perform import Core
    from bot.slack.serve import serve

    if not bot_token.startswith("xoxb-"):
        fail_plain("set SLACK_BOT_TOKEN to the app's bot token (xoxb-…, OAuth & Permissions)")
    if http and not signing_secret:
        fail_plain("--http needs SLACK_SIGNING_SECRET (Basic Information → App Credentials) to check requests")
    if not http and not app_token.startswith("xapp-"):
        fail_plain("Socket Mode needs SLACK_APP_TOKEN (xapp-…, with connections:write); or serve HTTP with --http")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    options = {"port": port, "signing_secret": signing_secret} if http else {"app_token": app_token}
    asyncio.run(serve(Core.from_settings(), bot_token=bot_token, api_url=api_url, consumer=consumer, **options))


@app.command("telegram")
def telegram_command(
    webhook: Annotated[
        str | None,
        typer.Option(help="Take updates on this public HTTPS URL instead of long polling (Telegram posts there)."),
    ] = None,
    port: Annotated[int, typer.Option(help="The port to listen on with --webhook (behind your HTTPS proxy).")] = 8443,
    token: Annotated[str, typer.Option(envvar="TELEGRAM_BOT_TOKEN", show_default=False, hidden=True)] = "",
    secret: Annotated[str, typer.Option(envvar="TELEGRAM_WEBHOOK_SECRET", show_default=False, hidden=True)] = "",
    api_url: Annotated[
        str,
        typer.Option(
            envvar="TUNELOOP_TELEGRAM_API_URL", help="The Bot API's base URL: Telegram's, or a local Bot API server."
        ),
    ] = "https://api.telegram.org",
    local_files: Annotated[
        bool,
        typer.Option(
            "--local-files",
            envvar="TUNELOOP_TELEGRAM_LOCAL_FILES",
            help="The local Bot API server runs with --local: files up to 2 GB, read from its folder, which this "
            "bot must see at the same path.",
        ),
    ] = False,
    consumer: Annotated[str, typer.Option(help="This bot's name in the event stream's 'telegram' group.")] = (
        "telegram-bot"
    ),
) -> None:
    """The Telegram bot: /finetune in groups and private chats, each run's message and its buttons. The token
    comes from TELEGRAM_BOT_TOKEN (BotFather's); with --webhook, requests are checked against a secret token
    (TELEGRAM_WEBHOOK_SECRET, else a new one each start, given to Telegram with setWebhook). SIGTERM or Ctrl-C stops
    it after the work it has taken."""
    import re

    from bot.core.perform import Core
    from bot.telegram.serve import serve

    if not re.fullmatch(r"\d+:[\w-]+", token):
        fail_plain("set TELEGRAM_BOT_TOKEN to the token BotFather gave the bot (123456:ABC…)")
    if secret and not re.fullmatch(r"[A-Za-z0-9_-]{1,256}", secret):
        fail_plain("TELEGRAM_WEBHOOK_SECRET takes 1 to 256 characters of A-Z, a-z, 0-9, _ and -")
    if webhook is not None and not webhook.startswith("https://"):
        fail_plain("--webhook needs an https:// URL: Telegram posts updates only over HTTPS")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    options = {"webhook": webhook, "secret": secret or None, "port": port}
    asyncio.run(
        serve(Core.from_settings(), token=token, api_url=api_url, local_files=local_files, consumer=consumer, **options)
    )
