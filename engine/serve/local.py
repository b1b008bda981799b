"""Serving on one machine: a `tuneloop serve` process and the gateway in a thread, started and stopped together.

Each gets an API key of its own unless given one (a fresh random key: these processes only need to trust each
other), handed to `tuneloop serve` through its environment so that it never shows in the process list.
The demo uses them to end with a real answer from the deployed adapter; tests use them to talk to real servers
on loopback. Production runs vLLM and `tuneloop gateway` as their own services (docker-compose.yml)."""

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
from sqlalchemy.engine import Engine

from engine.serve.guards import bearer, new_api_key

if TYPE_CHECKING:
    import uvicorn

READY_TIMEOUT_S = 120.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Loopback:
    """Something listening on a loopback port: `url` is its root, the OpenAI base is `base_url`."""

    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"


@dataclass(kw_only=True)
class LocalServer(Loopback):
    """A running `tuneloop serve`, and the key its /v1 endpoints want."""

    process: subprocess.Popen
    log: Path
    api_key: str

    @property
    def headers(self) -> dict[str, str]:
        return bearer(self.api_key)

    def stop(self) -> None:
        stop_process(self.process)


def stop_process(process: subprocess.Popen, timeout_s: float = 30) -> None:
    """SIGTERM (a server drains, a worker lets its job finish or checkpoint), then SIGKILL if it does not go."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def wait_until_healthy(url: str, timeout_s: float, alive: "subprocess.Popen | None" = None) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if alive is not None and alive.poll() is not None:
            return False
        try:
            if httpx.get(f"{url}/health", timeout=1.0).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    return False


def start_local_server(
    model: Path,
    log: Path,
    *,
    port: int | None = None,
    args: Sequence[str] = (),
    env: dict[str, str] | None = None,
    api_key: str | None = None,
    timeout_s: float = READY_TIMEOUT_S,
) -> LocalServer:
    """`tuneloop serve --model MODEL --port PORT ARGS...` on loopback, with `api_key` (a new one if None), once
    GET /health answers 200. RuntimeError with the server's own output when it exits or does not become ready."""
    port = port or free_port()
    api_key = api_key or new_api_key()
    log.parent.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "bot.cli", "serve", "--model", str(model), "--host", "127.0.0.1"]
    command += ["--port", str(port), *args]
    root = Path(__file__).resolve().parents[2]  # `python -m bot.cli` from the checkout this code runs from
    with open(log, "ab") as out:
        process = subprocess.Popen(
            command,
            cwd=root,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {}), "TUNELOOP_API_KEYS": api_key},
        )
    server = LocalServer(port=port, process=process, log=log, api_key=api_key)
    if wait_until_healthy(server.url, timeout_s, process):
        return server
    server.stop()
    raise RuntimeError(
        f"tuneloop serve did not start (exit code {process.returncode}):\n{log.read_text(errors='replace')[-4000:]}"
    )


@dataclass(kw_only=True)
class LocalGateway(Loopback):
    """The gateway, served by uvicorn in a thread of this process, and the key its clients send."""

    server: "uvicorn.Server"
    thread: threading.Thread
    api_key: str

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=20)


@contextmanager
def local_gateway(
    servers: Sequence[str],
    engine: Engine,
    *,
    upstream_api_key: str | None,
    api_key: str | None = None,
    base_model: str | None = None,
    port: int | None = None,
) -> Iterator[LocalGateway]:
    """The gateway (engine/serve/gateway.py) on loopback, in a thread of this process, once it listens (its
    /health would say 503 while no replica is up, which is a state to test, not a failure to start); stopped on
    leaving. Clients send `api_key` (a new one if None); the gateway sends the servers `upstream_api_key`."""
    import uvicorn

    from engine.serve.gateway import create_app

    port = port or free_port()
    api_key = api_key or new_api_key()
    app = create_app(servers, engine, api_keys=[api_key], upstream_api_key=upstream_api_key, base_model=base_model)
    # log_config=None: uvicorn's own dictConfig would shut down the host process's logging handlers.
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", log_config=None)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="tuneloop-gateway", daemon=True)
    gateway = LocalGateway(port=port, server=server, thread=thread, api_key=api_key)
    gateway.thread.start()
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not gateway.server.started:
            if not gateway.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the gateway did not start on port {port}")
            time.sleep(0.02)
        yield gateway
    finally:
        gateway.stop()
