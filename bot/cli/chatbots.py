"""`tuneloop bot slack`: the chat faces, run as long-lived bots."""

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
