"""A local HTTP server speaking the OpenAI chat completions wire protocol, scripted per test.

    with OpenAIServer(delay=0.3) as server:          # every reply after 300 ms
        server.script(Reply.error(429, headers={"Retry-After": "0.05"}), Reply.text("prose"))
        client = AsyncOpenAI(base_url=server.base_url, api_key="test")

Scripted replies (a `Reply`, or a callable taking the request body and returning a `Reply` or None
to pass) are used first, in order, by the chat completion requests that arrive; after that every
request gets `default_reply`: for a synthesis batch (its plan in a ```json block) one valid,
distinct conversation per plan entry; for a sub-scenario request, three sub-scenarios.
Replies are deterministic in the request, so the same request gets the same reply.

`json_schema=False` / `json_object=False` make the server reject those `response_format`s with
the 400 OpenAI returns. Every request body is kept in `requests`, in order of arrival. Error
bodies follow OpenAI's: {"error": {"message", "type", "param", "code"}}.
"""

import hashlib
import json
import random
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

_CHARS = (
    "的一是在不了有和人这中大为上个国我以要他时来用们生到作地于出就分对成会可也你对生能而子那得于着下自之年过发后"
    "作里用道行所然家种事成方多经么去法学如都同现当没动面起看定天分还进好小部其些主样理心她本前开但因只从想实日军"
    "者意无力它与长把机十民第公此已工使情明性知全三又关点正业外将两高间由问很最重并物手应战向头文体政美相见被利什"
    "退货换物流订单快递包裹地址签收售后质量尺码颜色发票优惠券积分会员客服查询进度仓库配送破损补发运费"
)
_PLAN = re.compile(r"```json\s*\n(.*?)\n```", re.DOTALL)


@dataclass
class Reply:
    status: int = 200
    body: Any = None  # a dict is sent as JSON, a str as it is
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0  # seconds before answering (longer than the client's timeout: a timeout)

    @classmethod
    def text(cls, content: str, *, finish_reason: str = "stop", model: str = "test-model", **kw: Any) -> "Reply":
        """A successful chat completion whose message is `content`."""
        return cls(body=completion(content, model=model, finish_reason=finish_reason), **kw)

    @classmethod
    def samples(cls, samples: list[Any], **kw: Any) -> "Reply":
        return cls.text(json.dumps({"samples": samples}, ensure_ascii=False), **kw)

    @classmethod
    def error(
        cls,
        status: int,
        message: str | None = None,
        *,
        type: str | None = None,
        param: str | None = None,
        code: str | None = None,
        **kw: Any,
    ) -> "Reply":
        """An error as OpenAI sends it: its type, message and `code` for the status (a 429's code is
        `rate_limit_exceeded` unless `code` says otherwise, e.g. `insufficient_quota`)."""
        kind, text, default_code = ERRORS.get(code or status, ERRORS.get(status, ERRORS["other"]))
        if status >= 500 and kind == "invalid_request_error":
            kind = "server_error"
        body = {
            "error": {"message": message or text, "type": type or kind, "param": param, "code": code or default_code}
        }
        return cls(status=status, body=body, **kw)


# OpenAI's (type, message, code) by status, and by code where one status has several (429).
ERRORS: dict[int | str, tuple[str, str, str | None]] = {
    400: ("invalid_request_error", "Invalid request.", None),
    401: (
        "invalid_request_error",
        "Incorrect API key provided: sk-test****. You can find your API key at https://platform.openai.com/account/api-keys.",
        "invalid_api_key",
    ),
    429: (
        "requests",
        "Rate limit reached for gpt-4o in organization org-test on requests per min (RPM): Limit 3, Used 3, "
        "Requested 1. Please try again in 20s.",
        "rate_limit_exceeded",
    ),
    "insufficient_quota": (
        "insufficient_quota",
        "You exceeded your current quota, please check your plan and billing details. For more information on this "
        "error, read the docs: https://platform.openai.com/docs/guides/error-codes/api-errors.",
        "insufficient_quota",
    ),
    500: ("server_error", "The server had an error while processing your request.", None),
    503: ("server_error", "The engine is currently overloaded, please try again later.", None),
    "other": ("invalid_request_error", "Error.", None),
}


def completion(content: str, *, model: str = "test-model", finish_reason: str = "stop") -> dict[str, Any]:
    prompt_tokens = 200
    return {
        "id": "chatcmpl-" + hashlib.sha1(content.encode()).hexdigest()[:12],
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content, "refusal": None},
                "logprobs": None,
                "finish_reason": finish_reason,
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": max(1, len(content) // 2),
            "total_tokens": prompt_tokens + max(1, len(content) // 2),
        },
    }


def plan_of(body: dict[str, Any]) -> list[dict[str, Any]] | None:
    """The plan a synthesis batch request carries, or None for any other request."""
    text = body["messages"][-1]["content"]
    match = _PLAN.search(text)
    return json.loads(match.group(1)) if match else None


def sentence(rng: random.Random, length: int) -> str:
    return "".join(rng.choice(_CHARS) for _ in range(length)) + "。"


def make_samples(body: dict[str, Any]) -> list[dict[str, Any]]:
    """One valid conversation per plan entry, distinct across requests (seeded by the request)."""
    plan = plan_of(body) or []
    rng = random.Random(hashlib.sha256(json.dumps(body["messages"], ensure_ascii=False).encode()).digest())
    samples = []
    for spec in plan:
        messages = []
        for _ in range(int(spec.get("turns", 1))):
            messages.append({"role": "user", "content": "请问" + sentence(rng, 24)})
            messages.append({"role": "assistant", "content": "您好," + sentence(rng, 48)})
        samples.append({"messages": messages})
    return samples


def default_reply(body: dict[str, Any]) -> Reply:
    if plan_of(body) is not None:
        return Reply.samples(make_samples(body), model=body.get("model", "test-model"))
    scenarios = [
        {"name": "退货申请", "description": "用户想退货", "weight": 0.5},
        {"name": "换货", "description": "尺码或颜色不合适", "weight": 0.2},
        {"name": "物流查询", "description": "包裹到哪了", "weight": 0.3},
    ]
    return Reply.text(json.dumps({"scenarios": scenarios}, ensure_ascii=False), model=body.get("model", "test-model"))


Script = Reply | Callable[[dict[str, Any]], Reply | None]


class _HTTPServer(ThreadingHTTPServer):
    # The default listen backlog (5) drops the SYNs of a burst of concurrent connections, which the
    # client's kernel retransmits only after a second: a 1 s stall in any test at concurrency 8.
    request_queue_size = 128


class OpenAIServer:
    def __init__(
        self,
        *,
        delay: float = 0.0,
        json_schema: bool = True,
        json_object: bool = True,
        responder: Callable[[dict[str, Any]], Reply] = default_reply,
    ) -> None:
        self.delay = delay
        self.json_schema = json_schema
        self.json_object = json_object
        self.responder = responder
        self.requests: list[dict[str, Any]] = []
        self.arrivals: list[float] = []
        self._script: list[Script] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._httpd = _HTTPServer(("127.0.0.1", 0), self._handler())
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_port}/v1"

    def script(self, *replies: Script) -> None:
        with self._lock:
            self._script.extend(replies)

    def batch_requests(self) -> list[dict[str, Any]]:
        """The requests that asked for samples (not for sub-scenarios)."""
        with self._lock:
            return [r for r in self.requests if plan_of(r) is not None]

    def start(self) -> "OpenAIServer":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> "OpenAIServer":
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    def _next_reply(self, body: dict[str, Any]) -> Reply:
        fmt = (body.get("response_format") or {}).get("type")
        if (fmt == "json_schema" and not self.json_schema) or (fmt == "json_object" and not self.json_object):
            return Reply.error(
                400,
                f"Invalid parameter: 'response_format' of type '{fmt}' is not supported with this model.",
                param="response_format",
            )
        with self._lock:
            while self._script:
                item = self._script.pop(0)
                reply = item(body) if callable(item) else item
                if reply is not None:
                    return reply
        return self.responder(body)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body go out as two writes: no 40 ms delayed-ACK stall

            def log_message(self, *_: Any) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                try:
                    body = json.loads(self.rfile.read(length) or b"{}")
                except ValueError:
                    self._send(Reply.error(400, "We could not parse the JSON body of your request."))
                    return
                if not self.path.rstrip("/").endswith("/chat/completions"):
                    self._send(Reply.error(404, f"Unknown path {self.path}", type="invalid_request_error"))
                    return
                if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
                    # OpenAI's reply; not recorded, so a stray request (another test's client retrying a port
                    # this server now holds) cannot pass for one of the requests a test counts.
                    self._send(Reply.error(400, "Missing required parameter: 'messages'.", param="messages"))
                    return
                with server._lock:
                    server.requests.append(body)
                    server.arrivals.append(time.monotonic())
                reply = server._next_reply(body)
                wait = server.delay + reply.delay
                if wait and server._stopping.wait(wait):
                    return
                self._send(reply)

            def do_GET(self) -> None:
                self._send(Reply(body={"object": "list", "data": [{"id": "test-model", "object": "model"}]}))

            def _send(self, reply: Reply) -> None:
                data = reply.body if isinstance(reply.body, str) else json.dumps(reply.body, ensure_ascii=False)
                payload = data.encode("utf-8")
                try:
                    self.send_response(reply.status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.send_header("x-request-id", "req_" + hashlib.sha1(payload).hexdigest()[:10])
                    for key, value in reply.headers.items():
                        self.send_header(key, value)
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (its timeout): nothing to answer

        return Handler
