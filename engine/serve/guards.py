"""What every request to `tuneloop serve` and the gateway passes before a handler sees it.

API keys: Bearer tokens checked as vLLM's own `--api-key` checks them
(vllm/entrypoints/openai/server_utils.py, AuthenticationMiddleware), so a client of one works with the other.

Every path under /v1 needs `Authorization: Bearer KEY` with one of the keys; a request without it gets vLLM's
401 `{"error": "Unauthorized"}`. /health stays open (load balancers and compose probe it), as in vLLM, and says
nothing but up or down. Keys are compared by their sha256 digests in constant time.

Request bodies are capped too (FastAPI's `max_body_size`, a 413 past it; DEFAULT_MAX_REQUEST_BYTES in
engine/serve/protocol.py): a prompt bigger than any context window is refused before it is read, let alone
tokenized."""

import hashlib
import secrets
from collections.abc import Sequence

from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

PROTECTED_PREFIX = "/v1"


def new_api_key() -> str:
    """A fresh random key, for processes started together that only need to trust each other (`make demo`)."""
    return f"tl-{secrets.token_urlsafe(32)}"


def bearer(key: str | None) -> dict[str, str]:
    """The header a client sends with `key`; none without one."""
    return {"Authorization": f"Bearer {key}"} if key else {}


class ApiKeyMiddleware:
    """Refuses /v1 requests whose Bearer token is not one of `keys` (at least one is required)."""

    def __init__(self, app: ASGIApp, keys: Sequence[str]) -> None:
        if not keys:
            raise ValueError("at least one API key is required")
        self.app = app
        self.digests = [hashlib.sha256(key.encode()).digest() for key in keys]

    def allowed(self, headers: Headers) -> bool:
        scheme, _, token = headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer":
            return False
        digest = hashlib.sha256(token.encode()).digest()
        # Every key is compared, so the time taken says nothing about which one nearly matched.
        return any([secrets.compare_digest(digest, known) for known in self.digests])

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or scope.get("method") == "OPTIONS":
            await self.app(scope, receive, send)
            return
        path = scope["path"].removeprefix(scope.get("root_path", ""))
        if path.startswith(PROTECTED_PREFIX) and not self.allowed(Headers(scope=scope)):
            await JSONResponse({"error": "Unauthorized"}, status_code=401)(scope, receive, send)
            return
        await self.app(scope, receive, send)
