"""A scripted HTTP server for the replies of vLLM's LoRA protocol that a real server gives only when things go
wrong: each request gets the next scripted reply, and every request is kept.

    with ScriptedServer() as server:
        server.script(Reply(400, nested_error("name already loaded", "BadRequestError")))
        VLLMClient(server.url).load_adapter("a", "/x")  # raises VLLMError(400, ...)
"""

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Reply:
    status: int = 200
    body: str = "Success"
    content_type: str = "text/plain; charset=utf-8"
    delay_s: float = 0.0


@dataclass
class Request:
    method: str
    path: str
    body: dict | None
    authorization: str | None = None


def nested_error(message: str, kind: str, status: int = 400) -> Reply:
    """The error body vLLM's OpenAI server writes now."""
    body = {"error": {"message": message, "type": kind, "param": None, "code": status}}
    return Reply(status, json.dumps(body), "application/json")


def flat_error(message: str, kind: str, status: int = 400) -> Reply:
    """The error body older vLLM releases write."""
    body = {"object": "error", "message": message, "type": kind, "param": None, "code": status}
    return Reply(status, json.dumps(body), "application/json")


@dataclass
class ScriptedServer:
    replies: list[Reply] = field(default_factory=list)
    requests: list[Request] = field(default_factory=list)

    def script(self, *replies: Reply) -> None:
        self.replies.extend(replies)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> "ScriptedServer":
        scripted = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self._answer()

            def do_POST(self) -> None:
                self._answer()

            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                body = json.loads(raw) if raw else None
                scripted.requests.append(Request(self.command, self.path, body, self.headers.get("Authorization")))
                reply = scripted.replies.pop(0) if scripted.replies else Reply(404, "no reply scripted")
                time.sleep(reply.delay_s)
                data = reply.body.encode("utf-8")
                try:
                    self.send_response(reply.status)
                    self.send_header("Content-Type", reply.content_type)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:  # the client gave up waiting (the timeout test)
                    pass

            def log_message(self, *_args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
