"""The gateway: one OpenAI-compatible address in front of the vLLM replicas, where a project's stable name works.

Clients call a project by its stable name (`model="customer_service"`); each version is also reachable by its own
name (`customer_service-v3`). vLLM only ever sees version names: reloading a LoRA under a name it has served before
can answer from stale prefix-cache blocks (vLLM keys that cache by LoRA name, not by weights), so tuneloop never
reuses a name for new weights, and the stable name is an alias resolved here.

The alias is resolved per request, from the database (`resolve_model_name`: one query by name for the active
deployment), not from a copy held in memory. A promotion or a rollback is one committed row, so it takes effect for
the very next request, on every gateway at once, with no cache to invalidate, no message to miss and no window where
two gateways disagree. The query (on indexed columns) costs far less than the generation it routes.

Requests go round-robin over the replicas. A replica that refuses a connection is tried last for a while; a refused
connection means the request never arrived, so the next replica can take it. Responses stream back as they come
(server-sent events included), with the `model` field saying the name the client asked for.
"""

import asyncio
import itertools
import json
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException

from engine.serve.deploy import list_deployments, resolve_model_name
from engine.serve.vllm import parse_server_url

# How long a replica that refused a connection waits behind the others before it is tried first again.
DOWN_FOR_S = 10.0
# Generation can take minutes, so only connecting is bounded; a replica that is down fails at once anyway.
UPSTREAM_TIMEOUT = httpx.Timeout(None, connect=5.0)
PROBE_TIMEOUT = httpx.Timeout(5.0)
# What a client's request carries that a replica needs; the rest (host, length, hop-by-hop) is the gateway's own.
FORWARDED_REQUEST_HEADERS = ("authorization", "content-type", "accept", "x-request-id")
FORWARDED_RESPONSE_HEADERS = ("content-type", "x-request-id")

Result = TypeVar("Result")


class NoServerError(Exception):
    """No replica accepted the connection; the message names each one and why."""


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
        message = f"{upstream.request.url.host} stopped answering mid-reply ({error or type(error).__name__})"
        return openai_error(502, message, "server_error", "bad_gateway")
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


def create_app(servers: Sequence[str], engine: Engine) -> FastAPI:
    """The gateway's ASGI app, routing to `servers` (vLLM or `tuneloop serve` root URLs, as in
    TUNELOOP_VLLM_URLS) with names from `engine`'s database. Raises ValueError for an empty list or a URL that is
    not one."""
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

    app = FastAPI(title="tuneloop gateway", lifespan=lifespan)

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
        except ValueError:
            return openai_error(400, "the request body is not valid JSON", "invalid_request_error")
        if not isinstance(body, dict):
            return openai_error(400, "the request body must be a JSON object", "invalid_request_error")
        asked = body.get("model")
        rename_to = None
        if isinstance(asked, str):
            try:
                served = await asyncio.to_thread(in_session, lambda session: resolve_model_name(session, asked))
            except SQLAlchemyError as error:
                message = f"cannot resolve model '{asked}': the database is unavailable ({type(error).__name__})"
                return openai_error(503, message, "server_error", "database_unavailable")
            if served is not None and served != asked:
                body["model"], rename_to = served, asked
                content = json.dumps(body, ensure_ascii=False).encode()
        headers = {key: request.headers[key] for key in FORWARDED_REQUEST_HEADERS if key in request.headers}
        headers["accept-encoding"] = "identity"  # bodies pass through as they are, so they must not be compressed
        try:
            upstream = await send_to_a_replica(client, replicas, path, headers, content)
        except NoServerError as error:
            return openai_error(503, str(error), "server_error", "no_server_available")
        return await relay(upstream, rename_to)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        return await route(request, "/v1/chat/completions")

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await route(request, "/v1/completions")

    async def listed_models(url: str) -> list[dict[str, Any]] | None:
        try:
            response = await client.get(f"{url}/v1/models", timeout=PROBE_TIMEOUT)
            response.raise_for_status()
            cards = response.json()["data"]
        except (httpx.HTTPError, ValueError, KeyError, TypeError):
            replicas.mark(url, up=False)
            return None
        replicas.mark(url, up=True)
        return cards

    @app.get("/v1/models")
    async def models() -> Response:
        """What the replicas serve, and each active stable name (`root` its version, `parent` the base)."""
        listings = await asyncio.gather(*(listed_models(url) for url in replicas.urls))
        if all(listing is None for listing in listings):
            return openai_error(503, "no model server answered: " + ", ".join(replicas.urls), "server_error")
        cards = {card["id"]: card for listing in listings if listing for card in listing}
        try:
            deployed = await asyncio.to_thread(in_session, list_deployments)
        except SQLAlchemyError as error:
            message = f"cannot list deployed models: the database is unavailable ({type(error).__name__})"
            return openai_error(503, message, "server_error", "database_unavailable")
        for deployment, adapter in deployed:
            if deployment.status != "active":
                continue
            # The version's own card where a replica lists it (its `parent` is the base as served), else the record's.
            version = cards.get(deployment.version_name) or {
                "object": "model",
                "owned_by": "tuneloop",
                "parent": adapter.base_model,
            }
            cards[deployment.model_name] = version | {
                "id": deployment.model_name,
                "root": deployment.version_name,
                "created": unix_time(deployment.created_at),  # when this version was deployed
            }
        return JSONResponse({"object": "list", "data": list(cards.values())})

    async def probe(url: str) -> bool:
        try:
            up = (await client.get(f"{url}/health", timeout=PROBE_TIMEOUT)).status_code == 200
        except httpx.HTTPError:
            up = False
        replicas.mark(url, up)
        return up

    @app.get("/health")
    async def health() -> Response:
        """200 while at least one replica is healthy, with each replica's state; 503 when none is."""
        states = dict(zip(replicas.urls, await asyncio.gather(*(probe(url) for url in replicas.urls)), strict=True))
        if not any(states.values()):
            return openai_error(503, "no model server is healthy: " + ", ".join(states), "server_error")
        return JSONResponse({"status": "ok", "servers": {url: "up" if up else "down" for url, up in states.items()}})

    return app
