"""A local server speaking Slack's Web API as slack_sdk's real client uses it, recording what was asked.

    with SlackServer() as slack:
        client = AsyncWebClient(token=slack.bot_token, base_url=slack.api_url)
        slack.refuse("chat.postMessage", "not_in_channel")      # the next call gets {"ok": false, ...}
        slack.slow_down("chat.update", retry_after=1)           # the next call gets 429 and Retry-After: 1
        slack.calls("chat.postMessage")                         # the arguments of each call, in order

What it speaks, as Slack does (docs.slack.dev/reference/methods, slack_sdk/web/async_client.py):
- every method at `{api_url}{method}`, arguments in the query, a form or a JSON body; the bot token as
  `Authorization: Bearer` (or a `token` argument); a missing token is `not_authed`, another one `invalid_auth`;
- `ok: false` answers with HTTP 200, except rate limits: HTTP 429, `Retry-After` in seconds, error `ratelimited`;
- chat.postMessage / chat.update / chat.postEphemeral keep messages per channel with Slack-shaped `ts`;
  an unknown channel is `channel_not_found`, one the bot was not invited to `not_in_channel`; chat.update of a
  message that is not there is `message_not_found`; blocks are checked against Block Kit's 50-block limit;
- views.open needs a `trigger_id` and a `view`;
- files_upload_v2: files.getUploadURLExternal gives an `upload_url` on this server, the bytes are POSTed there
  (answered `OK - <length>` as Slack's file server does), files.completeUploadExternal shares them in a channel
  (and thread), where the file's `shares` then lists it; files.info tells a file;
- `url_private_download` serves a file only with the bot token of an app with files:read; otherwise the answer is
  Slack's HTML login page with status 200, which is what a client that drops the header really gets;
- a slash command's `response_url` (from `response_url()`) records what is sent to it in `responses`;
- Socket Mode: apps.connections.open (with the app token, xapp-…) gives a WebSocket URL on this server, which says
  `hello`, carries the envelopes `socket_send` delivers and records the app's acknowledgements.
"""

import asyncio
import itertools
import json
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.threaded_app import ThreadedApp

BOT_TOKEN = "xoxb-test-token"
APP_TOKEN = "xapp-1-test-token"
TEAM = "T0TEST"
BOT_USER = "U0TUNELOOP"
CHANNEL_ID = re.compile(r"^[CGD][A-Z0-9]{8,}$")
LOGIN_PAGE = "<!DOCTYPE html><html><head><title>Slack</title></head><body>Sign in to your workspace</body></html>"
MAX_BLOCKS = 50


@dataclass
class Posted:
    channel: str
    ts: str
    text: str
    blocks: list[dict]
    thread_ts: str | None = None
    user: str | None = None  # an ephemeral message's only reader
    edits: list[dict] = field(default_factory=list)  # every chat.update's arguments
    edited_at: list[float] = field(default_factory=list)  # and when it came (time.monotonic)


@dataclass
class SlackFile:
    id: str
    name: str
    content: bytes
    title: str | None = None
    shares: list[tuple[str, str | None]] = field(default_factory=list)  # (channel, thread_ts)


class SlackServer:
    def __init__(self, channels: tuple[str, ...] = ("C0TESTCHAN1",), bot_token: str = BOT_TOKEN) -> None:
        self.bot_token, self.app_token = bot_token, APP_TOKEN
        self.sockets: list[web.WebSocketResponse] = []  # the Socket Mode connections open now
        self.socket_replies: list[dict[str, Any]] = []  # what the app sent back over them (acknowledgements)
        self.channels = set(channels)  # channels the bot is in
        self.other_channels: set[str] = set()  # channels that exist without the bot
        self.requests: list[tuple[str, dict[str, Any]]] = []
        self.messages: list[Posted] = []
        self.files: dict[str, SlackFile] = {}
        self.views: list[dict] = []
        self.downloads: list[tuple[str, bool]] = []  # (file id, whether the bot token came with it)
        self.responses: list[dict[str, Any]] = []  # what was sent to a slash command's response_url
        self.scopes = {"commands", "chat:write", "files:read", "files:write"}  # the bot token's
        self._refusals: dict[str, list[str]] = {}
        self._slow_downs: dict[str, list[int]] = {}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._served: ThreadedApp | None = None
        self.port = 0

    # --- the test's side ---------------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_url(self) -> str:
        return f"{self.url}/api/"

    def refuse(self, method: str, error: str) -> None:
        """The next call of `method` answers `{"ok": false, "error": error}`."""
        self._refusals.setdefault(method, []).append(error)

    def slow_down(self, method: str, retry_after: int = 1) -> None:
        """The next call of `method` answers 429 with `Retry-After: retry_after`."""
        self._slow_downs.setdefault(method, []).append(retry_after)

    def calls(self, method: str) -> list[dict[str, Any]]:
        with self._lock:
            return [args for name, args in self.requests if name == method]

    def thread(self, channel: str, thread_ts: str) -> list[Posted]:
        """The thread's root and its replies, in order."""
        with self._lock:
            return [m for m in self.messages if m.channel == channel and thread_ts in (m.ts, m.thread_ts)]

    def add_file(self, name: str, content: bytes) -> dict[str, Any]:
        """A file a person uploaded: its object as Slack shows it in events and files.info."""
        file = SlackFile(self._id("F"), name, content)
        self.files[file.id] = file
        return self._file_object(file)

    def response_url(self) -> str:
        """A slash command's response_url, on this server."""
        return f"{self.url}/commands/{next(self._ids)}"

    def __enter__(self) -> "SlackServer":
        app = web.Application()
        app.router.add_route("*", "/api/{method}", self._api)
        app.router.add_post("/upload/v1/{file}", self._upload)
        app.router.add_get("/files-pri/{team_file}/{name}", self._download)
        app.router.add_post("/commands/{id}", self._respond)
        app.router.add_get("/link", self._link)
        self._served = ThreadedApp(app, "Slack")
        self.port = self._served.start()
        return self

    def __exit__(self, *_: object) -> None:
        assert self._served is not None
        self._served.stop()

    # --- serving ---------------------------------------------------------------------------------------------

    async def _api(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        args: dict[str, Any] = dict(request.query)
        if request.content_type == "application/json":
            args.update(await request.json())
        elif request.can_read_body:
            args.update(await request.post())
        token = args.pop("token", None) or request.headers.get("Authorization", "").removeprefix("Bearer ")
        with self._lock:
            self.requests.append((method, args))
        if not token:
            return _answer({"ok": False, "error": "not_authed"})
        if token != (self.app_token if method == "apps.connections.open" else self.bot_token):
            return _answer({"ok": False, "error": "invalid_auth"})
        if self._slow_downs.get(method):
            retry_after = self._slow_downs[method].pop(0)
            return _answer({"ok": False, "error": "ratelimited"}, status=429, headers={"Retry-After": str(retry_after)})
        if self._refusals.get(method):
            return _answer({"ok": False, "error": self._refusals[method].pop(0)})
        handler = getattr(self, "_" + method.replace(".", "_"), None)
        if handler is None:
            return _answer({"ok": False, "error": "unknown_method"})
        try:
            return _answer({"ok": True, **handler(args)})
        except _Refused as refused:
            return _answer({"ok": False, "error": str(refused), **refused.extra})

    def _auth_test(self, _args: dict) -> dict:
        return {"url": "https://tuneloop-test.slack.com/", "team": "tuneloop", "user": "tuneloop", "team_id": TEAM,
                "user_id": BOT_USER, "bot_id": "B0TUNELOOP", "is_enterprise_install": False}  # fmt: skip

    def _apps_connections_open(self, _args: dict) -> dict:
        return {"url": f"ws://127.0.0.1:{self.port}/link"}

    def _chat_postMessage(self, args: dict) -> dict:
        channel = self._channel(args.get("channel"))
        posted = Posted(channel, self._ts(), args.get("text") or "", _blocks(args), args.get("thread_ts"))
        if not posted.text and not posted.blocks:
            raise _Refused("no_text")
        with self._lock:
            self.messages.append(posted)
        return {"channel": channel, "ts": posted.ts, "message": _message_object(posted)}

    def _chat_update(self, args: dict) -> dict:
        channel = self._channel(args.get("channel"))
        posted = next((m for m in self.messages if m.channel == channel and m.ts == args.get("ts")), None)
        if posted is None or posted.user is not None:
            raise _Refused("message_not_found")
        blocks = _blocks(args)
        with self._lock:
            posted.text, posted.blocks = args.get("text") or posted.text, blocks
            posted.edits.append(args)
            posted.edited_at.append(time.monotonic())
        return {"channel": channel, "ts": posted.ts, "text": posted.text, "message": _message_object(posted)}

    def _chat_postEphemeral(self, args: dict) -> dict:
        channel = self._channel(args.get("channel"))
        if not args.get("user"):
            raise _Refused("user_not_in_channel")
        posted = Posted(channel, self._ts(), args.get("text") or "", _blocks(args), args.get("thread_ts"), args["user"])
        with self._lock:
            self.messages.append(posted)
        return {"message_ts": posted.ts}

    def _views_open(self, args: dict) -> dict:
        if not args.get("trigger_id"):
            raise _Refused("invalid_arguments", response_metadata={"messages": ["[ERROR] missing trigger_id"]})
        view = args.get("view")
        view = json.loads(view) if isinstance(view, str) else view
        if not isinstance(view, dict) or view.get("type") != "modal":
            raise _Refused("invalid_arguments")
        opened = {**view, "id": self._id("V"), "team_id": TEAM, "state": {"values": {}}}
        with self._lock:
            self.views.append(opened)
        return {"view": opened}

    def _files_info(self, args: dict) -> dict:
        file = self.files.get(args.get("file", ""))
        if file is None:
            raise _Refused("file_not_found")
        return {"file": self._file_object(file)}

    def _files_getUploadURLExternal(self, args: dict) -> dict:
        if not args.get("filename") or not str(args.get("length", "")).isdigit():
            raise _Refused("invalid_arguments")
        file = SlackFile(self._id("F"), args["filename"], b"")
        self.files[file.id] = file
        return {"upload_url": f"{self.url}/upload/v1/{file.id}", "file_id": file.id}

    def _files_completeUploadExternal(self, args: dict) -> dict:
        listed = json.loads(args.get("files") or "[]")
        channel, thread_ts = args.get("channel_id"), args.get("thread_ts")
        if channel is not None:
            self._channel(channel)
        shared = []
        for item in listed:
            file = self.files.get(item.get("id", ""))
            if file is None:
                raise _Refused("file_not_found")
            file.title = item.get("title") or file.name
            if channel is not None:
                file.shares.append((channel, thread_ts))
            shared.append(self._file_object(file))
        return {"files": shared}

    async def _upload(self, request: web.Request) -> web.Response:
        file = self.files.get(request.match_info["file"])
        if file is None:
            return web.Response(status=404, text="Not Found")
        file.content = await request.read()
        return web.Response(text=f"OK - {len(file.content)}")

    async def _download(self, request: web.Request) -> web.Response:
        file_id = request.match_info["team_file"].removeprefix(f"{TEAM}-")
        # Without files:read even the bot token gets the login page, as it does on Slack.
        authorized = request.headers.get("Authorization") == f"Bearer {self.bot_token}" and "files:read" in self.scopes
        with self._lock:
            self.downloads.append((file_id, authorized))
        file = self.files.get(file_id)
        if not authorized:
            return web.Response(text=LOGIN_PAGE, content_type="text/html")
        if file is None:
            return web.Response(status=404, text="Not Found")
        return web.Response(body=file.content, content_type="application/octet-stream")

    async def _link(self, request: web.Request) -> web.WebSocketResponse:
        """A Socket Mode connection: `hello` first, then envelopes from `socket_send`; replies are recorded."""
        socket = web.WebSocketResponse()
        await socket.prepare(request)
        self.sockets.append(socket)
        await socket.send_json(
            {"type": "hello", "num_connections": len(self.sockets), "connection_info": {"app_id": "A0TUNELOOP"}}
        )
        async for frame in socket:
            if frame.type == web.WSMsgType.TEXT:
                with self._lock:
                    self.socket_replies.append(json.loads(frame.data))
        self.sockets.remove(socket)
        return socket

    def socket_send(self, kind: str, payload: dict[str, Any]) -> str:
        """Deliver `payload` over Socket Mode as an envelope of `kind` (slash_commands, interactive, events_api);
        its envelope id, which the app's acknowledgement names."""
        envelope_id = f"envelope-{next(self._ids)}"
        envelope = {"envelope_id": envelope_id, "type": kind, "payload": payload, "accepts_response_payload": True}
        assert self._served is not None and self._served.loop is not None and self.sockets, "no Socket Mode connection"
        asyncio.run_coroutine_threadsafe(self.sockets[-1].send_json(envelope), self._served.loop).result(5)
        return envelope_id

    async def _respond(self, request: web.Request) -> web.Response:
        with self._lock:
            self.responses.append(await request.json())
        return web.Response(text="ok")

    # --- helpers ---------------------------------------------------------------------------------------------

    def _channel(self, channel: Any) -> str:
        if not isinstance(channel, str) or not CHANNEL_ID.match(channel):
            raise _Refused("channel_not_found")
        if channel in self.other_channels:
            raise _Refused("not_in_channel")
        if channel not in self.channels:
            raise _Refused("channel_not_found")
        return channel

    def _file_object(self, file: SlackFile) -> dict[str, Any]:
        public: dict[str, list] = {}
        for channel, thread_ts in file.shares:
            public.setdefault(channel, []).append({"ts": self._ts(), "thread_ts": thread_ts} if thread_ts else {})
        return {
            "id": file.id,
            "name": file.name,
            "title": file.title or file.name,
            "size": len(file.content),
            "url_private": f"{self.url}/files-pri/{TEAM}-{file.id}/{file.name}",
            "url_private_download": f"{self.url}/files-pri/{TEAM}-{file.id}/{file.name}",
            "shares": {"public": public} if public else {},
        }

    def _ts(self) -> str:
        return f"{int(time.time())}.{next(self._ids):06d}"

    def _id(self, prefix: str) -> str:
        return f"{prefix}0{next(self._ids):08d}"


class _Refused(Exception):
    def __init__(self, error: str, **extra: Any) -> None:
        super().__init__(error)
        self.extra = extra


def _blocks(args: dict) -> list[dict]:
    blocks = args.get("blocks") or []
    blocks = json.loads(blocks) if isinstance(blocks, str) else blocks
    if len(blocks) > MAX_BLOCKS:
        raise _Refused("invalid_blocks")
    return blocks


def _message_object(posted: Posted) -> dict[str, Any]:
    message = {"type": "message", "user": BOT_USER, "text": posted.text, "ts": posted.ts, "blocks": posted.blocks}
    return message | ({"thread_ts": posted.thread_ts} if posted.thread_ts else {})


def _answer(body: dict, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response(body, status=status, headers=headers)
