"""What Slack sends a Slack app, for the tests that drive tuneloop's: requests signed exactly as Slack signs them
(v0 HMAC over `v0:{timestamp}:{body}`): slash commands, button presses (`block_actions`) and modal submissions
(`view_submission`), and waiting for what the app does after acknowledging."""

import asyncio
import json
import time
import urllib.parse
from dataclasses import dataclass
from typing import Any

import aiohttp
from slack_sdk.signature import SignatureVerifier

from bot.slack.app import SlackFace
from tests.slack_server import SlackServer

SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
CHANNEL = "C0TESTCHAN1"


@dataclass
class Bot:
    """A way to send the app what Slack sends; `face` when it runs in this process."""

    url: str
    session: aiohttp.ClientSession
    face: SlackFace | None = None

    async def idle(self) -> None:
        """Wait for the work the app handed off."""
        assert self.face is not None
        await self.face.idle()

    async def send(self, body: str, *, content_type: str, signed_at: int | None = None, secret: str = SECRET) -> Any:
        stamp = str(signed_at or int(time.time()))
        signature = SignatureVerifier(secret).generate_signature(timestamp=stamp, body=body)
        headers = {
            "Content-Type": content_type,
            "X-Slack-Request-Timestamp": stamp,
            "X-Slack-Signature": signature,
        }
        async with self.session.post(self.url, data=body.encode(), headers=headers) as answer:
            text = await answer.text()
            return answer.status, (json.loads(text) if text.startswith("{") else text)

    async def command(self, slack: SlackServer, text: str, user: str = "U0ALICE", channel: str = CHANNEL) -> Any:
        form = {
            "token": "legacy",
            "team_id": "T0TEST",
            "channel_id": channel,
            "user_id": user,
            "user_name": user.lower(),
            "command": "/finetune",
            "text": text,
            "response_url": slack.response_url(),
            "trigger_id": f"{time.time()}.trigger",
        }
        return await self.send(urllib.parse.urlencode(form), content_type="application/x-www-form-urlencoded")

    async def share(self, file: dict, text: str = "", *, thread: str | None = None, user: str = "U0ALICE") -> Any:
        """The Events API callback of `user` sharing `file` (an object from SlackServer.add_file) in CHANNEL, in
        `thread` when given, with `text` (docs.slack.dev/reference/events/message/file_share)."""
        ts = f"{time.time():.6f}"
        event = {
            "type": "message",
            "subtype": "file_share",
            "channel": CHANNEL,
            "channel_type": "channel",
            "user": user,
            "text": text,
            "ts": ts,
            "files": [file],
            "upload": False,
        }
        if thread is not None:
            event["thread_ts"] = thread
        body = {
            "token": "legacy",
            "team_id": "T0TEST",
            "api_app_id": "A0TUNELOOP",
            "event": event,
            "type": "event_callback",
            "event_id": f"Ev{ts.replace('.', '')}",
            "event_time": int(time.time()),
        }
        return await self.send(json.dumps(body), content_type="application/json")

    async def interact(self, payload: dict) -> Any:
        body = urllib.parse.urlencode({"payload": json.dumps(payload)})
        return await self.send(body, content_type="application/x-www-form-urlencoded")


async def opened(slack: SlackServer, count: int = 1) -> list[dict]:
    """The modals opened, once `count` are: Bolt runs a listener on after acknowledging, so it may still be going."""
    deadline = time.monotonic() + 5
    while len(slack.views) < count and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    return slack.views


def press(message: Any, label: str, *, user: str = "U0ALICE", action_ts: str | None = None) -> dict:
    """The block_actions payload Slack sends when `user` presses the button labelled `label` on `message`."""
    element = next(
        element
        for block in message.blocks
        if block["type"] == "actions"
        for element in block["elements"]
        if element["text"]["text"] == label
    )
    return {
        **sent_by(user, "block_actions"),
        "container": {"type": "message", "message_ts": message.ts, "channel_id": CHANNEL},
        "channel": {"id": CHANNEL, "name": "ml"},
        "message": {"type": "message", "ts": message.ts, "thread_ts": message.thread_ts, "blocks": message.blocks},
        "actions": [
            {
                "type": "button",
                "block_id": "b",
                "action_id": element["action_id"],
                "value": element["value"],
                "text": element["text"],
                "action_ts": action_ts or f"{time.time():.6f}",
            }
        ],
    }


def submit(view: dict, values: dict, user: str = "U0ALICE") -> dict:
    return {**sent_by(user, "view_submission"), "view": {**view, "state": {"values": values}}}


def sent_by(user: str, kind: str) -> dict:
    """What every interaction payload carries: its type, the workspace, the person, a fresh trigger id."""
    return {
        "type": kind,
        "team": {"id": "T0TEST", "domain": "tuneloop"},
        "user": {"id": user, "username": user.lower(), "team_id": "T0TEST"},
        "api_app_id": "A0TUNELOOP",
        "trigger_id": f"{time.time()}.trigger",
    }
