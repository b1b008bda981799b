"""Serving on one machine: a `tuneloop serve` process and the gateway in a thread, started and stopped together.

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
    """A running `tuneloop serve`."""

    process: subprocess.Popen
    log: Path

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
    timeout_s: float = READY_TIMEOUT_S,
) -> LocalServer:
    """`tuneloop serve --model MODEL --port PORT ARGS...` on loopback, once GET /health answers 200.
    RuntimeError with the server's own output when it exits or does not become ready."""
    port = port or free_port()
    log.parent.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "bot.cli", "serve", "--model", str(model), "--host", "127.0.0.1"]
    command += ["--port", str(port), *args]
    root = Path(__file__).resolve().parents[2]  # `python -m bot.cli` from the checkout this code runs from
    with open(log, "ab") as out:
        process = subprocess.Popen(
            command, cwd=root, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}
        )
    server = LocalServer(port=port, process=process, log=log)
    if wait_until_healthy(server.url, timeout_s, process):
        return server
    server.stop()
    raise RuntimeError(
        f"tuneloop serve did not start (exit code {process.returncode}):\n{log.read_text(errors='replace')[-4000:]}"
    )


@dataclass(kw_only=True)
class LocalGateway(Loopback):
    """The gateway, served by uvicorn in a thread of this process."""

    server: "uvicorn.Server"
    thread: threading.Thread

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=20)


def start_local_gateway(servers: Sequence[str], engine: Engine, *, port: int | None = None) -> LocalGateway:
    """The gateway (engine/serve/gateway.py) on loopback, in a thread of this process, once it listens (its
    /health would say 503 while no replica is up, which is a state to test, not a failure to start)."""
    import uvicorn

    from engine.serve.gateway import create_app

    port = port or free_port()
    # log_config=None: uvicorn's own dictConfig would shut down the host process's logging handlers.
    app = create_app(servers, engine)
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", log_config=None)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="tuneloop-gateway", daemon=True)
    gateway = LocalGateway(port=port, server=server, thread=thread)
    gateway.thread.start()
    deadline = time.monotonic() + READY_TIMEOUT_S
    while not gateway.server.started:
        if not gateway.thread.is_alive() or time.monotonic() > deadline:
            gateway.stop()
            raise RuntimeError(f"the gateway did not start on port {port}")
        time.sleep(0.02)
    return gateway


@contextmanager
def local_gateway(servers: Sequence[str], engine: Engine, *, port: int | None = None) -> Iterator[LocalGateway]:
    gateway = start_local_gateway(servers, engine, port=port)
    try:
        yield gateway
    finally:
        gateway.stop()
