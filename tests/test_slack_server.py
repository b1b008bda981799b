"""tests/slack_server.py speaks Slack's Web API as slack_sdk's real AsyncWebClient expects it: the bot's tests lean
on it, so what it answers is checked here against the client itself."""

import asyncio
from collections.abc import Iterator

import aiohttp
import pytest
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_async_handlers import AsyncRateLimitErrorRetryHandler
from slack_sdk.web.async_client import AsyncWebClient

from tests.slack_server import LOGIN_PAGE, SlackServer

CHANNEL = "C0TESTCHAN1"


@pytest.fixture
def slack() -> Iterator[SlackServer]:
    with SlackServer() as server:
        yield server


def client_of(slack: SlackServer, token: str | None = None, **kw: object) -> AsyncWebClient:
    return AsyncWebClient(token=token or slack.bot_token, base_url=slack.api_url, **kw)  # type: ignore[arg-type]


def test_messages_are_posted_updated_and_threaded(slack: SlackServer) -> None:
    async def scenario() -> tuple[str, str]:
        client = client_of(slack)
        assert (await client.auth_test())["user_id"] == "U0TUNELOOP"
        root = await client.chat_postMessage(channel=CHANNEL, text="card", blocks=[{"type": "section"}])
        reply = await client.chat_postMessage(channel=CHANNEL, thread_ts=root["ts"], text="a reply")
        await client.chat_update(channel=CHANNEL, ts=root["ts"], text="card, updated", blocks=[])
        note = await client.chat_postEphemeral(channel=CHANNEL, user="U0ALICE", text="only for you")
        assert note["message_ts"]
        return root["ts"], reply["ts"]

    root, reply = asyncio.run(scenario())
    assert [(m.ts, m.text) for m in slack.thread(CHANNEL, root)] == [(root, "card, updated"), (reply, "a reply")]
    assert [m.user for m in slack.messages] == [None, None, "U0ALICE"]


def test_errors_are_slacks_own(slack: SlackServer) -> None:
    slack.other_channels.add("C0OUTSIDE01")

    async def error_of(call: object) -> str:
        with pytest.raises(SlackApiError) as failed:
            await call  # type: ignore[misc]
        return failed.value.response["error"]

    async def scenario() -> list[str]:
        client = client_of(slack)
        slack.refuse("chat.postMessage", "is_archived")
        return [
            await error_of(client.chat_postMessage(channel=CHANNEL, text="x")),
            await error_of(client.chat_postMessage(channel="C0OUTSIDE01", text="x")),
            await error_of(client.chat_postMessage(channel="#general", text="x")),
            await error_of(client.chat_update(channel=CHANNEL, ts="1.000001", text="x")),
            await error_of(client_of(slack, token="xoxb-someone-else").auth_test()),
            await error_of(client.views_open(trigger_id="", view={"type": "modal"})),
        ]

    assert asyncio.run(scenario()) == [
        "is_archived",
        "not_in_channel",
        "channel_not_found",
        "message_not_found",
        "invalid_auth",
        "invalid_arguments",
    ]


def test_a_rate_limit_is_a_429_with_retry_after_which_the_retry_handler_honours(slack: SlackServer) -> None:
    async def scenario() -> float:
        slack.slow_down("chat.postMessage", retry_after=1)
        with pytest.raises(SlackApiError) as limited:
            await client_of(slack).chat_postMessage(channel=CHANNEL, text="x")
        assert limited.value.response.status_code == 429
        assert limited.value.response.headers["Retry-After"] == "1"
        slack.slow_down("chat.postMessage", retry_after=1)
        patient = client_of(slack, retry_handlers=[AsyncRateLimitErrorRetryHandler(max_retry_count=1)])
        started = asyncio.get_running_loop().time()
        await patient.chat_postMessage(channel=CHANNEL, text="after waiting")
        return asyncio.get_running_loop().time() - started

    assert asyncio.run(scenario()) >= 1.0
    assert [m.text for m in slack.messages] == ["after waiting"]


def test_files_upload_v2_into_a_thread_and_a_private_download_needs_the_token(slack: SlackServer) -> None:
    uploaded = slack.add_file("faq.jsonl", b'{"messages": []}\n')

    async def scenario() -> tuple[dict, bytes, str]:
        client = client_of(slack)
        root = await client.chat_postMessage(channel=CHANNEL, text="card")
        done = await client.files_upload_v2(
            channel=CHANNEL, thread_ts=root["ts"], content=b"\x89PNG chart", filename="loss.png", title="Loss"
        )
        info = (await client.files_info(file=done["file"]["id"]))["file"]
        assert info["shares"]["public"][CHANNEL][0]["thread_ts"] == root["ts"]
        url = (await client.files_info(file=uploaded["id"]))["file"]["url_private_download"]
        async with aiohttp.ClientSession() as session:
            async with session.get(url, headers={"Authorization": f"Bearer {slack.bot_token}"}) as answer:
                body = await answer.read()
            async with session.get(url) as answer:
                page = await answer.text()
        return info, body, page

    info, body, page = asyncio.run(scenario())
    assert (info["name"], info["title"], info["size"]) == ("loss.png", "Loss", len(b"\x89PNG chart"))
    assert slack.files[info["id"]].content == b"\x89PNG chart"
    assert [name for name, _ in slack.requests if name.startswith("files.")][:2] == [
        "files.getUploadURLExternal",
        "files.completeUploadExternal",
    ]
    assert body == b'{"messages": []}\n'
    assert page == LOGIN_PAGE  # what Slack answers a download without the token: a 200 with HTML
    assert slack.downloads == [(uploaded["id"], True), (uploaded["id"], False)]


def test_views_open_returns_the_modal(slack: SlackServer) -> None:
    async def scenario() -> dict:
        view = {"type": "modal", "title": {"type": "plain_text", "text": "Fix"}, "blocks": []}
        return (await client_of(slack).views_open(trigger_id="123.456.abc", view=view))["view"]

    opened = asyncio.run(scenario())
    assert opened["id"].startswith("V") and slack.views == [opened]
