"""A local server speaking Telegram's Bot API as aiogram's real client uses it, recording what was asked.

    with TelegramServer() as telegram:
        bot = Bot(telegram.token, session=AiohttpSession(api=TelegramAPIServer.from_base(telegram.url)))
        sent = telegram.command(GROUP, ALICE, "/finetune status 3")    # an update, handed over by getUpdates
        telegram.press(card, "Keep", BOB)                             # a callback query on a button the bot sent
        telegram.slow_down("sendMessage", retry_after=1)              # the next call gets 429 with retry_after

What it speaks, as the Bot API does (core.telegram.org/bots/api; aiogram/client/session/base.py check_response):
- every method at `/bot<token>/<method>`, arguments as a query, a form, multipart (aiogram sends multipart, objects
  as JSON strings, files as `attach://<field>`) or JSON; answers `{"ok": true, "result": …}`, or `{"ok": false,
  "error_code": …, "description": …}` with that HTTP status: 401 "Unauthorized" for a wrong token, 404 "Not Found"
  for an unknown method, 400 "Bad Request: …", 403 "Forbidden: …", 409 "Conflict: …", and 429 "Too Many Requests:
  retry after N" with `parameters.retry_after`;
- getUpdates: updates from `offset` on (a higher offset confirms, and forgets, every update below it; a negative
  one counts from the end), at most `limit`, waiting up to `timeout` seconds for one; 409 while a webhook is set,
  and a newer getUpdates ends one still waiting with 409;
- sendMessage / editMessageText with parse_mode HTML parsed into text and entities (Telegram's tag set; an unknown
  or unclosed tag is "can't parse entities"), 1 to 4,096 characters after parsing (UTF-16 code units), captions to
  1,024; callback_data of 1 to 64 bytes ("BUTTON_DATA_INVALID"); an edit that changes neither text nor keyboard is
  "message is not modified", an edit without reply_markup removes the keyboard; unknown chats are "chat not found",
  a chat the bot was removed from is 403;
- sendPhoto / sendDocument take the file as multipart and keep it; answerCallbackQuery answers a query once
  ("query is too old … or query ID is invalid" otherwise); getFile gives a `file_path` served at
  `/file/bot<token>/<path>`, and refuses files over 20 MB ("file is too big"), as the cloud Bot API does;
- setWebhook / deleteWebhook / getWebhookInfo keep the webhook (its URL and secret token).
"""

import asyncio
import itertools
import json
import threading
import time
from dataclasses import dataclass, field
from html.parser import HTMLParser
from typing import Any

from aiohttp import web

from tests.threaded_app import ThreadedApp

TOKEN = "123456789:AAF-test-token_for_tuneloop"
BOT = {"id": 123456789, "is_bot": True, "first_name": "tuneloop", "username": "tuneloop_bot"}
MESSAGE_TEXT, CAPTION, CALLBACK_DATA = 4096, 1024, 64
DOWNLOAD_LIMIT = 20 * 1024 * 1024
NOT_MODIFIED = (
    "Bad Request: message is not modified: specified new message content and reply markup are exactly the same as "
    "a current content and reply markup of the message"
)
QUERY_TOO_OLD = "Bad Request: query is too old and response timeout expired or query ID is invalid"
# Telegram's HTML: tag -> entity type (core.telegram.org/bots/api#html-style)
TAGS = {
    "b": "bold", "strong": "bold", "i": "italic", "em": "italic", "u": "underline", "ins": "underline",
    "s": "strikethrough", "strike": "strikethrough", "del": "strikethrough", "code": "code", "pre": "pre",
    "a": "text_link", "tg-spoiler": "spoiler", "blockquote": "blockquote",
}  # fmt: skip


def person(user_id: int, name: str) -> dict[str, Any]:
    return {"id": user_id, "is_bot": False, "first_name": name.title(), "username": name}


def group(chat_id: int, title: str = "ML team") -> dict[str, Any]:
    return {"id": chat_id, "type": "supergroup", "title": title}


def private(user: dict[str, Any]) -> dict[str, Any]:
    return {"id": user["id"], "type": "private", "first_name": user["first_name"], "username": user["username"]}


class Refused(Exception):
    def __init__(self, status: int, description: str, parameters: dict | None = None) -> None:
        super().__init__(description)
        self.status, self.description, self.parameters = status, description, parameters


def units(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


class _Entities(HTMLParser):
    """Telegram HTML into (text, entities), offsets and lengths in UTF-16 code units."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.text, self.entities, self.open = "", [], []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        kind = TAGS.get(tag)
        if tag == "span" and ("class", "tg-spoiler") in attrs:
            kind = "spoiler"
        if kind is None:
            raise Refused(400, f'Bad Request: can\'t parse entities: Unsupported start tag "{tag}"')
        entity: dict[str, Any] = {"type": kind, "offset": units(self.text)}
        if tag == "a":
            entity["url"] = dict(attrs).get("href") or ""
        self.open.append((tag, entity))

    def handle_endtag(self, tag: str) -> None:
        if not self.open or self.open[-1][0] != tag:
            raise Refused(400, f'Bad Request: can\'t parse entities: Unmatched end tag "{tag}"')
        _, entity = self.open.pop()
        entity["length"] = units(self.text) - entity["offset"]
        if entity["length"]:
            self.entities.append(entity)

    def handle_data(self, data: str) -> None:
        self.text += data


def parse_html(html: str) -> tuple[str, list[dict[str, Any]]]:
    parser = _Entities()
    parser.feed(html)
    parser.close()
    if parser.open:
        tag = parser.open[-1][0]
        said = f'Can\'t find end tag corresponding to start tag "{tag}"'
        raise Refused(400, f"Bad Request: can't parse entities: {said}")
    return parser.text, sorted(parser.entities, key=lambda e: e["offset"])


@dataclass
class Sent:
    """A message the bot sent, as Telegram keeps it; `edits` every editMessageText that changed it."""

    message: dict[str, Any]
    kind: str  # text, photo, document
    content: bytes | None = None  # a photo's or document's bytes
    file_name: str | None = None
    edits: list[dict[str, Any]] = field(default_factory=list)
    markup: dict[str, Any] | None = None  # the reply_markup it was sent with (a force reply is not kept on it)

    @property
    def chat(self) -> int:
        return self.message["chat"]["id"]

    @property
    def id(self) -> int:
        return self.message["message_id"]

    @property
    def text(self) -> str:
        return self.message.get("text") or self.message.get("caption") or ""

    @property
    def reply_to(self) -> int | None:
        return (self.message.get("reply_to_message") or {}).get("message_id")

    @property
    def buttons(self) -> list[dict[str, Any]]:
        markup = self.message.get("reply_markup") or {}
        return [button for row in markup.get("inline_keyboard", []) for button in row]

    def button(self, label: str) -> dict[str, Any]:
        return next(button for button in self.buttons if button["text"] == label)


class TelegramServer:
    def __init__(self, token: str = TOKEN) -> None:
        self.token = token
        self.bot = dict(BOT, id=int(token.split(":")[0]))
        self.sent: list[Sent] = []  # every message the bot sent, in order
        self.calls: list[tuple[str, dict[str, Any]]] = []  # every request that was answered ok
        self.refused: list[tuple[str, int, str]] = []  # (method, status, description) of every refusal
        self.answers: dict[str, dict[str, Any]] = {}  # callback query id -> its answer, with when it came
        self.webhook: dict[str, Any] = {}
        self.chats: dict[int, dict[str, Any]] = {}
        self.received: list[dict[str, Any]] = []  # the people's messages, as the bot was handed them
        self.kicked: set[int] = set()  # chats the bot was removed from
        self.files: dict[str, dict[str, Any]] = {}  # file_id -> {file_path, content, size, ...}
        self._updates: list[dict[str, Any]] = []  # not yet confirmed
        self._handed: dict[int, float] = {}  # update id -> when getUpdates first handed it over
        self._handed_updates: list[dict[str, Any]] = []
        self._queries: dict[str, float] = {}  # callback query id -> when it was handed over
        self._slow_downs: dict[str, list[int]] = {}
        self._update_ids = itertools.count(500_000_001)
        self._message_ids = itertools.count(1)
        self._file_ids = itertools.count(1)
        self._polls = itertools.count(1)
        self._poll = 0  # the getUpdates request that is current
        self._lock = threading.Lock()
        self._served: ThreadedApp | None = None
        self.url = ""  # the Bot API's base, once it serves

    # --- the test's side ---------------------------------------------------------------------------------------

    def slow_down(self, method: str, retry_after: int = 1) -> None:
        """The next call of `method` answers 429 with parameters.retry_after."""
        self._slow_downs.setdefault(method, []).append(retry_after)

    def called(self, method: str) -> list[dict[str, Any]]:
        with self._lock:
            return [args for name, args in self.calls if name == method]

    def in_chat(self, chat: int) -> list[Sent]:
        with self._lock:
            return [sent for sent in self.sent if sent.chat == chat]

    def replies_to(self, chat: int, message_id: int) -> list[Sent]:
        return [sent for sent in self.in_chat(chat) if sent.reply_to == message_id]

    def pending(self) -> int:
        """Updates not yet confirmed by the bot."""
        with self._lock:
            return len(self._updates)

    def add_file(self, name: str, content: bytes, *, size: int | None = None) -> dict[str, Any]:
        """A document a person sends: its object as Telegram shows it; `size` claims another size (a file over
        the download limit without holding 20 MB here)."""
        number = next(self._file_ids)
        file_id = f"BQACAgIAAx0file{number:04d}"
        stored = {"file_path": f"documents/file_{number}{_suffix(name)}", "content": content}
        stored["size"] = len(content) if size is None else size
        self.files[file_id] = stored
        return {"file_id": file_id, "file_unique_id": f"AgAD{number:04d}", "file_name": name,
                "mime_type": "application/octet-stream", "file_size": stored["size"]}  # fmt: skip

    def message(
        self, chat: dict, user: dict, text: str | None = None, *, document: dict | None = None,
        reply_to: Sent | None = None,
    ) -> dict[str, Any]:  # fmt: skip
        """A person's message in `chat`, handed to the bot as an update; a command's entity marked as Telegram
        marks it; a document's text goes as its caption."""
        self.chats[chat["id"]] = chat
        message: dict[str, Any] = {"message_id": next(self._message_ids), "date": int(time.time()),
                                   "chat": chat, "from": user}  # fmt: skip
        if text is not None:
            words = "caption" if document is not None else "text"
            message[words] = text
            if text.startswith("/"):
                command = {"type": "bot_command", "offset": 0, "length": units(text.split()[0])}
                message["caption_entities" if document is not None else "entities"] = [command]
        if document is not None:
            message["document"] = document
        if reply_to is not None:
            message["reply_to_message"] = {k: v for k, v in reply_to.message.items() if k != "reply_to_message"}
        with self._lock:
            self.received.append(message)
        self._add_update({"message": message})
        return message

    def press(self, sent: Sent, label: str, user: dict) -> str:
        """`user` presses the button labelled `label` on a message the bot sent; the callback query's id."""
        query_id = f"{next(self._update_ids)}77"
        button = sent.button(label)
        query = {"id": query_id, "from": user, "chat_instance": f"-{sent.chat}", "data": button["callback_data"],
                 "message": sent.message}  # fmt: skip
        self._add_update({"callback_query": query})
        return query_id

    def hand_over_again(self) -> None:
        """The last update once more, under its own id: what a bot that stopped before confirming it is given."""
        with self._lock:
            last = max(self._handed)
            self._updates.append(next(u for u in self._handed_updates if u["update_id"] == last))

    def answered_within(self, query_id: str) -> float:
        """Seconds from handing a callback query over to its answer."""
        return self.answers[query_id]["at"] - self._queries[query_id]

    def __enter__(self) -> "TelegramServer":
        app = web.Application(client_max_size=60 * 1024 * 1024)  # sendDocument takes up to 50 MB
        app.router.add_route("*", "/bot{token}/{method}", self._api)
        app.router.add_get("/file/bot{token}/{path:.+}", self._file)
        self._served = ThreadedApp(app, "Telegram")
        self.url = f"http://127.0.0.1:{self._served.start()}"
        return self

    def __exit__(self, *_: object) -> None:
        assert self._served is not None
        self._served.stop()

    # --- serving ---------------------------------------------------------------------------------------------

    def _add_update(self, content: dict[str, Any]) -> None:
        with self._lock:
            self._updates.append({"update_id": next(self._update_ids), **content})

    async def _api(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        if request.match_info["token"] != self.token:
            return _refusal(Refused(401, "Unauthorized"), method, self)
        args, files = await _arguments(request)
        try:
            slowed = self._slow_downs.get(method)
            if slowed:
                wait = slowed.pop(0)
                raise Refused(429, f"Too Many Requests: retry after {wait}", {"retry_after": wait})
            handler = getattr(self, f"_{method.lower()}", None)
            if handler is None:
                raise Refused(404, "Not Found")
            if method.lower() == "getupdates":
                result = await self._getupdates(args, request)
            else:
                result = await handler(args, files)
        except Refused as refused:
            return _refusal(refused, method, self)
        with self._lock:
            self.calls.append((method, args))
        return web.json_response({"ok": True, "result": result})

    async def _file(self, request: web.Request) -> web.Response:
        stored = next((f for f in self.files.values() if f["file_path"] == request.match_info["path"]), None)
        if request.match_info["token"] != self.token or stored is None:
            return web.json_response({"ok": False, "error_code": 404, "description": "Not Found"}, status=404)
        return web.Response(body=stored["content"], content_type="application/octet-stream")

    # --- methods ---------------------------------------------------------------------------------------------

    async def _getme(self, args: dict, files: dict) -> dict:
        return self.bot

    async def _getupdates(self, args: dict, request: web.Request) -> list[dict]:
        if self.webhook.get("url"):
            raise Refused(409, "Conflict: can't use getUpdates method while webhook is active; use deleteWebhook "
                          "to delete the webhook first")  # fmt: skip
        poll = self._poll = next(self._polls)
        offset, limit = int(args.get("offset") or 0), min(int(args.get("limit") or 100), 100)
        deadline = time.monotonic() + float(args.get("timeout") or 0)
        while True:
            with self._lock:
                if offset > 0:  # confirmed: forgotten
                    self._updates = [u for u in self._updates if u["update_id"] >= offset]
                chosen = self._updates[offset:] if offset < 0 else self._updates
                chosen = chosen[:limit]
                if chosen:
                    now = time.monotonic()
                    for update in chosen:
                        if update["update_id"] not in self._handed:
                            self._handed_updates.append(update)
                        self._handed.setdefault(update["update_id"], now)
                        if "callback_query" in update:
                            self._queries.setdefault(update["callback_query"]["id"], now)
                    return chosen
            if request.transport is None or request.transport.is_closing():
                return []  # the bot went away (a stopped poll): nothing is handed to nobody
            if poll != self._poll:
                raise Refused(409, "Conflict: terminated by other getUpdates request; make sure that only one bot "
                              "instance is running")  # fmt: skip
            if time.monotonic() >= deadline:
                return []
            await asyncio.sleep(0.02)

    async def _setwebhook(self, args: dict, files: dict) -> bool:
        secret = args.get("secret_token")
        if secret is not None and not (1 <= len(secret) <= 256 and all(c.isalnum() or c in "_-" for c in secret)):
            raise Refused(400, "Bad Request: secret token contains unallowed characters")
        self.webhook = {"url": args["url"], "secret_token": secret}
        return True

    async def _deletewebhook(self, args: dict, files: dict) -> bool:
        self.webhook = {}
        return True

    async def _getwebhookinfo(self, args: dict, files: dict) -> dict:
        return {"url": self.webhook.get("url", ""), "has_custom_certificate": False, "pending_update_count": 0}

    async def _sendmessage(self, args: dict, files: dict) -> dict:
        text, entities = self._text(args, "text", MESSAGE_TEXT)
        if not text.strip():
            raise Refused(400, "Bad Request: message text is empty")
        message = self._new_message(args, text=text, entities=entities)
        return self._keep(Sent(message, "text", markup=_markup(args)))

    async def _sendphoto(self, args: dict, files: dict) -> dict:
        return await self._send_file(args, files, "photo")

    async def _senddocument(self, args: dict, files: dict) -> dict:
        return await self._send_file(args, files, "document")

    async def _send_file(self, args: dict, files: dict, kind: str) -> dict:
        given = args.get(kind, "")
        name = given.removeprefix("attach://") if given.startswith("attach://") else kind
        if name not in files:
            raise Refused(400, f"Bad Request: there is no {kind} in the request")
        file_name, content = files[name]
        caption, entities = self._text(args, "caption", CAPTION) if args.get("caption") else ("", [])
        message = self._new_message(args, caption=caption, caption_entities=entities)
        file_id = f"BQACAgIAAx0sent{next(self._file_ids):04d}"
        if kind == "photo":
            message["photo"] = [{"file_id": file_id, "file_unique_id": file_id[-8:], "width": 640, "height": 480,
                                 "file_size": len(content)}]  # fmt: skip
        else:
            message["document"] = {"file_id": file_id, "file_unique_id": file_id[-8:], "file_name": file_name,
                                   "file_size": len(content)}  # fmt: skip
        return self._keep(Sent(message, kind, content, file_name))

    async def _editmessagetext(self, args: dict, files: dict) -> dict:
        sent = self._find(args)
        text, entities = self._text(args, "text", MESSAGE_TEXT)
        markup = _markup(args)
        before = sent.message
        if (before.get("text"), before.get("entities", []), before.get("reply_markup")) == (text, entities, markup):
            raise Refused(400, NOT_MODIFIED)
        sent.message = {**before, "text": text, "entities": entities, "edit_date": int(time.time())}
        if markup is None:
            sent.message.pop("reply_markup", None)
        else:
            sent.message["reply_markup"] = markup
        sent.edits.append(args)
        return sent.message

    async def _answercallbackquery(self, args: dict, files: dict) -> bool:
        query_id = args.get("callback_query_id", "")
        if query_id not in self._queries or query_id in self.answers:
            raise Refused(400, QUERY_TOO_OLD)
        self.answers[query_id] = {**args, "at": time.monotonic()}
        return True

    async def _getfile(self, args: dict, files: dict) -> dict:
        stored = self.files.get(args.get("file_id", ""))
        if stored is None:
            raise Refused(400, "Bad Request: invalid file_id")
        if stored["size"] > DOWNLOAD_LIMIT:
            raise Refused(400, "Bad Request: file is too big")
        file_id = args["file_id"]
        return {"file_id": file_id, "file_unique_id": file_id[-8:], "file_size": stored["size"],
                "file_path": stored["file_path"]}  # fmt: skip

    # --- helpers ---------------------------------------------------------------------------------------------

    def _chat(self, args: dict) -> dict:
        chat_id = int(args.get("chat_id", 0))
        if chat_id in self.kicked:
            raise Refused(403, "Forbidden: bot was kicked from the supergroup chat")
        if chat_id not in self.chats:
            raise Refused(400, "Bad Request: chat not found")
        return self.chats[chat_id]

    def _text(self, args: dict, name: str, limit: int) -> tuple[str, list]:
        raw = args.get(name, "")
        text, entities = parse_html(raw) if args.get("parse_mode") == "HTML" else (raw, [])
        if units(text) > limit:
            raise Refused(400, "Bad Request: message is too long" if name == "text" else
                          "Bad Request: message caption is too long")  # fmt: skip
        return text, entities

    def _new_message(self, args: dict, **content: Any) -> dict:
        chat = self._chat(args)
        message = {"message_id": next(self._message_ids), "date": int(time.time()), "chat": chat, "from": self.bot}
        message.update({key: value for key, value in content.items() if value})
        markup = _markup(args)
        if markup is not None and "inline_keyboard" in markup:  # a message shows only an inline keyboard
            message["reply_markup"] = markup
        reply = json.loads(args["reply_parameters"]) if args.get("reply_parameters") else {}
        if reply:
            with self._lock:
                known = [sent.message for sent in self.sent] + self.received
            replied = next(
                (m for m in known if m["chat"]["id"] == chat["id"] and m["message_id"] == reply["message_id"]), None
            )
            if replied is None and not reply.get("allow_sending_without_reply"):
                raise Refused(400, "Bad Request: message to be replied not found")
            if replied is not None:
                message["reply_to_message"] = {k: v for k, v in replied.items() if k != "reply_to_message"}
        return message

    def _keep(self, sent: Sent) -> dict:
        with self._lock:
            self.sent.append(sent)
        return sent.message

    def _find(self, args: dict) -> Sent:
        chat = self._chat(args)
        message_id = int(args.get("message_id", 0))
        with self._lock:
            found = next((s for s in self.sent if s.chat == chat["id"] and s.id == message_id), None)
        if found is None:
            raise Refused(400, "Bad Request: message to edit not found")
        return found


async def _arguments(request: web.Request) -> tuple[dict[str, Any], dict[str, tuple[str, bytes]]]:
    """A request's arguments (strings, as Telegram reads them) and its files by field name."""
    args: dict[str, Any] = dict(request.query)
    files: dict[str, tuple[str, bytes]] = {}
    if request.content_type == "application/json":
        args.update({k: v if isinstance(v, str) else json.dumps(v) for k, v in (await request.json()).items()})
    elif request.method == "POST":
        for name, value in (await request.post()).items():
            if isinstance(value, web.FileField):
                files[name] = (value.filename, value.file.read())
            else:
                args[name] = str(value)
    return args, files


def _markup(args: dict) -> dict | None:
    """A reply_markup as kept; callback data checked as Telegram checks it."""
    if not args.get("reply_markup"):
        return None
    markup = json.loads(args["reply_markup"])
    for row in markup.get("inline_keyboard", []):
        for button in row:
            data = button.get("callback_data")
            if data is not None and not 1 <= len(data.encode()) <= CALLBACK_DATA:
                raise Refused(400, "Bad Request: BUTTON_DATA_INVALID")
    placeholder = markup.get("input_field_placeholder")
    if placeholder is not None and not 1 <= len(placeholder) <= 64:
        raise Refused(400, "Bad Request: invalid input field placeholder")
    return markup


def _refusal(refused: Refused, method: str, server: TelegramServer) -> web.Response:
    with server._lock:
        server.refused.append((method, refused.status, refused.description))
    body: dict[str, Any] = {"ok": False, "error_code": refused.status, "description": refused.description}
    if refused.parameters:
        body["parameters"] = refused.parameters
    return web.json_response(body, status=refused.status)


def _suffix(name: str) -> str:
    return "." + name.rsplit(".", 1)[1] if "." in name else ""
