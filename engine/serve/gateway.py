"""The gateway: one OpenAI-compatible address in front of the vLLM replicas, where a project's stable name works.

Clients call a project by its stable name (`model="customer_service"`); each version is also reachable by its own
name (`customer_service-v3`). vLLM only ever sees version names: reloading a LoRA under a name it has served before
can answer from stale prefix-cache blocks (vLLM keys that cache by LoRA name, not by weights), so tuneloop never
reuses a name for new weights, and the stable name is an alias resolved here.

The alias is resolved per request, from the database (`resolve_model_name`: one query by name for the active
deployment), not from a copy held in memory. A promotion or a rollback is one committed row, so it takes effect for
the very next request, on every gateway at once, with no cache to invalidate, no message to miss and no window where
two gateways disagree. The query (on indexed columns) costs far less than the generation it routes.

What it serves, and to whom. Every /v1 request needs one of the gateway's API keys (engine/serve/guards.py); the
gateway then calls the replicas with its own key for them (vLLM's --api-key), never the client's. A request is
forwarded only for a name the database resolves (a stable name, or a version kept deployed) or, when configured,
the base model's name; anything else is a 404 here, so an adapter nobody deployed is never reachable. Only chat and
completions are routed: the LoRA admin endpoints do not exist here. Callers see no replica URL, file path or
traceback: /v1/models lists the stable names from the database, /health counts replicas, and a 503 says what kind
of thing failed while the log says where.

Requests go round-robin over the replicas. A replica that refuses a connection is tried last for a while; a refused
connection means the request never arrived, so the next replica can take it. Responses stream back as they come
(server-sent events included), with the `model` field saying the name the client asked for.
"""

import asyncio
import itertools
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TypeVar

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException

from engine.serve.deploy import list_deployments, resolve_model_name
from engine.serve.guards import ApiKeyMiddleware, bearer
from engine.serve.protocol import DEFAULT_MAX_REQUEST_BYTES
from engine.serve.vllm import parse_server_url

logger = logging.getLogger("tuneloop.gateway")

# How long a replica that refused a connection waits behind the others before it is tried first again.
DOWN_FOR_S = 10.0
# Generation can take minutes, so only connecting is bounded; a replica that is down fails at once anyway.
UPSTREAM_TIMEOUT = httpx.Timeout(None, connect=5.0)
PROBE_TIMEOUT = httpx.Timeout(5.0)
# What a client's request carries that a replica needs; the rest (host, length, hop-by-hop, the client's key) is not
# the replica's business.
FORWARDED_REQUEST_HEADERS = ("content-type", "accept", "x-request-id")
FORWARDED_RESPONSE_HEADERS = ("content-type", "x-request-id")

Result = TypeVar("Result")


class NoServerError(Exception):
    """No replica accepted the connection; the message names each one and why (for the log, not the caller)."""


def openai_error(status: int, message: str, kind: str, code: str | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "param": None, "code": code}}, status_code=status)


@dataclass
class Replicas:
    """The replicas in round-robin order, with those that recently refused a connection put last."""

    urls: list[str]
    down_until: dict[str, float] = field(default_factory=dict)
    turns: itertools.count = field(default_factory=itertools.count)

    def order(self) -> list[str]:
        start = next(self.turns) % len(self.urls)
        rotated = self.urls[start:] + self.urls[:start]
        now = time.monotonic()
        return sorted(rotated, key=lambda url: self.down_until.get(url, 0.0) > now)  # stable: keeps the rotation

    def mark(self, url: str, up: bool) -> None:
        if up:
            self.down_until.pop(url, None)
        else:
            self.down_until[url] = time.monotonic() + DOWN_FOR_S


async def send_to_a_replica(
    client: httpx.AsyncClient, replicas: Replicas, path: str, headers: dict[str, str], content: bytes
) -> httpx.Response:
    """POST to the first replica that accepts the connection; the response is open, its body not yet read."""
    failures = []
    for url in replicas.order():
        request = client.build_request("POST", url + path, headers=headers, content=content)
        try:
            response = await client.send(request, stream=True)
        except (httpx.ConnectError, httpx.ConnectTimeout) as error:
            replicas.mark(url, up=False)
            failures.append(f"{url} ({error or type(error).__name__})")
            continue
        replicas.mark(url, up=True)
        return response
    raise NoServerError("no model server answered: " + ", ".join(failures))


def renamed_event(line: str, name: str) -> str:
    """One server-sent-event line with its JSON chunk's `model` set to `name`; other lines unchanged."""
    if not line.startswith("data:"):
        return line
    try:
        chunk = json.loads(line[len("data:") :])
    except ValueError:  # "data: [DONE]"
        return line
    if not isinstance(chunk, dict) or "model" not in chunk:
        return line
    chunk["model"] = name
    return "data: " + json.dumps(chunk, ensure_ascii=False)


async def renamed_events(upstream: httpx.Response, name: str) -> AsyncIterator[bytes]:
    # Line by line as they arrive: each event goes out as soon as its line is complete, nothing is held back.
    async for line in upstream.aiter_lines():
        yield (renamed_event(line, name) + "\n").encode()


async def relay(upstream: httpx.Response, rename_to: str | None) -> Response:
    """The replica's response as the client's: status and body unchanged, but for `model` when it was rewritten."""
    headers = {key: upstream.headers[key] for key in FORWARDED_RESPONSE_HEADERS if key in upstream.headers}
    close = BackgroundTask(upstream.aclose)  # also when the client goes away mid-stream
    if rename_to is None:
        return StreamingResponse(upstream.aiter_raw(), upstream.status_code, headers=headers, background=close)
    if upstream.headers.get("content-type", "").startswith("text/event-stream"):
        events = renamed_events(upstream, rename_to)
        return StreamingResponse(events, upstream.status_code, headers=headers, background=close)
    try:
        content = await upstream.aread()
    except httpx.HTTPError as error:
        logger.warning("%s stopped answering mid-reply: %r", upstream.request.url, error)
        return openai_error(502, "the model server stopped answering mid-reply", "server_error", "bad_gateway")
    finally:
        await upstream.aclose()
    try:
        answer = json.loads(content)
    except ValueError:
        answer = None
    if isinstance(answer, dict) and "model" in answer:
        answer["model"] = rename_to
        content = json.dumps(answer, ensure_ascii=False).encode()
    return Response(content, upstream.status_code, headers=headers)


def unix_time(moment: datetime) -> int:
    # SQLite hands back the stored UTC time without its zone.
    return int(moment.replace(tzinfo=moment.tzinfo or UTC).timestamp())


def create_app(
    servers: Sequence[str],
    engine: Engine,
    *,
    api_keys: Sequence[str],
    upstream_api_key: str | None = None,
    base_model: str | None = None,
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
) -> FastAPI:
    """The gateway's ASGI app, routing to `servers` (vLLM or `tuneloop serve` root URLs, as in
    TUNELOOP_VLLM_URLS) with names from `engine`'s database. Clients must send one of `api_keys`; the replicas
    are sent `upstream_api_key`; `base_model`, when given, is the one name besides deployed ones let through.
    Raises ValueError for an empty list, a URL that is not one, or no keys."""
    replicas = Replicas([parse_server_url(url)[0] for url in servers])
    if not replicas.urls:
        raise ValueError("no model servers to route to")
    client: httpx.AsyncClient

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        nonlocal client
        # No cap on connections: every streaming answer holds one for its whole length.
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=64)
        async with httpx.AsyncClient(timeout=UPSTREAM_TIMEOUT, limits=limits) as client:
            yield

    app = FastAPI(
        title="tuneloop gateway",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        max_body_size=max_request_bytes,
    )
    app.add_middleware(ApiKeyMiddleware, keys=list(api_keys))

    def in_session(work: Callable[[Session], Result]) -> Result:
        with Session(engine) as session:
            return work(session)

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, error: HTTPException) -> JSONResponse:
        return openai_error(error.status_code, str(error.detail), "invalid_request_error")

    async def route(request: Request, path: str) -> Response:
        content = await request.body()
        try:
            body = json.loads(content)
        except RecursionError:
            return openai_error(400, "the request body is nested too deeply", "invalid_request_error")
        except ValueError:
            return openai_error(400, "the request body is not valid JSON", "invalid_request_error")
        if not isinstance(body, dict):
            return openai_error(400, "the request body must be a JSON object", "invalid_request_error")
        asked = body.get("model")
        if not isinstance(asked, str):
            return openai_error(400, "`model` must be the name of a model, a string", "invalid_request_error")
        try:
            served = await asyncio.to_thread(in_session, lambda session: resolve_model_name(session, asked))
        except SQLAlchemyError as error:
            logger.warning("cannot resolve model %r: %r", asked, error)
            message = f"cannot resolve model '{asked}': the database is unavailable ({type(error).__name__})"
            return openai_error(503, message, "server_error", "database_unavailable")
        rename_to = None
        if served is None:
            if asked != base_model:
                message = f"The model `{asked}` does not exist."
                return openai_error(404, message, "invalid_request_error", "model_not_found")
        elif served != asked:
            body["model"], rename_to = served, asked
            content = json.dumps(body, ensure_ascii=False).encode()
        headers = {key: request.headers[key] for key in FORWARDED_REQUEST_HEADERS if key in request.headers}
        headers["accept-encoding"] = "identity"  # bodies pass through as they are, so they must not be compressed
        headers.update(bearer(upstream_api_key))
        try:
            upstream = await send_to_a_replica(client, replicas, path, headers, content)
        except NoServerError as error:
            logger.warning("%s", error)
            return openai_error(503, "no model server answered", "server_error", "no_server_available")
        if upstream.status_code == 401:  # the gateway's own key for the replicas, not the client's, was refused
            await upstream.aclose()
            logger.error("a model server refused the gateway's key: set TUNELOOP_VLLM_API_KEY to its --api-key")
            return openai_error(502, "the model server refused the gateway", "server_error", "bad_gateway")
        return await relay(upstream, rename_to)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        return await route(request, "/v1/chat/completions")

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await route(request, "/v1/completions")

    @app.get("/v1/models")
    async def models() -> Response:
        """Each active stable name (`root`: the version it serves) and the base model when it is let through."""
        try:
            deployed = await asyncio.to_thread(in_session, list_deployments)
        except SQLAlchemyError as error:
            logger.warning("cannot list deployed models: %r", error)
            message = f"cannot list deployed models: the database is unavailable ({type(error).__name__})"
            return openai_error(503, message, "server_error", "database_unavailable")
        cards = [
            {
                "id": deployment.model_name,
                "object": "model",
                "created": unix_time(deployment.created_at),  # when this version was deployed
                "owned_by": "tuneloop",
                "root": deployment.version_name,
                "parent": base_model,
            }
            for deployment, _ in deployed
            if deployment.status == "active"
        ]
        if base_model is not None:
            cards.append({"id": base_model, "object": "model", "owned_by": "tuneloop", "root": base_model})
        return JSONResponse({"object": "list", "data": cards})

    async def probe(url: str) -> bool:
        try:
            up = (await client.get(f"{url}/health", timeout=PROBE_TIMEOUT)).status_code == 200
        except httpx.HTTPError:
            up = False
        replicas.mark(url, up)
        return up

    @app.get("/health")
    async def health() -> Response:
        """200 while at least one replica is healthy, with how many are up; 503 when none is."""
        states = await asyncio.gather(*(probe(url) for url in replicas.urls))
        up = sum(states)
        if not up:
            logger.warning("no model server is healthy: %s", ", ".join(replicas.urls))
            return openai_error(503, "no model server is healthy", "server_error", "no_server_available")
        return JSONResponse({"status": "ok", "servers_up": up, "servers_down": len(states) - up})

    return app
