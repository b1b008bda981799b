"""The queues carry JSON only, on a Redis with a password: against a real `tuneloop worker` process and a real
password-protected Redis server of this test's own, a pickled job planted in the queue (what anyone able to write to
Redis would do) is refused and nothing in it runs, a job our own pool enqueues still runs, and the password is in
none of the worker's or the command's output."""

import asyncio
import os
import pickle
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from arq.constants import job_key_prefix, result_key_prefix
from typer.testing import CliRunner

from bot.cli import app
from engine.serve.local import free_port, stop_process
from engine.settings import get_settings
from engine.work.connection import loads_job, open_queues

REPO = Path(__file__).resolve().parents[1]
PASSWORD = f"pw-{uuid.uuid4().hex}"
WAIT_S = 120  # a deadline against hanging, not a timing assertion


class Planted:
    """Unpickling this runs a shell command: the attack arq's default (pickle) serializer allows."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return os.system, (f"touch {self.marker}",)


@pytest.fixture(scope="module")
def redis_with_password(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Redis server of this module's own that asks for a password; its URL carries it."""
    folder = tmp_path_factory.mktemp("redis")
    port = free_port()
    server = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--requirepass", PASSWORD, "--save", ""],
        cwd=folder,
        stdout=subprocess.DEVNULL,
    )
    url = f"redis://:{PASSWORD}@127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    deadline = time.monotonic() + WAIT_S
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            assert time.monotonic() < deadline and server.poll() is None, "redis-server did not start"
            time.sleep(0.1)
    client.close()
    yield url
    stop_process(server)


@pytest.fixture(scope="module")
def worker(redis_with_password: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[dict, Path]]:
    """A cpu worker on that Redis and a SQLite file; yields its environment and its log."""
    folder = tmp_path_factory.mktemp("worker")
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "TUNELOOP_HOME": str(folder / "home"),
        "TUNELOOP_REDIS_URL": redis_with_password,
        "TUNELOOP_QUEUE_PREFIX": f"test-{uuid.uuid4().hex[:8]}",
    }
    log = folder / "worker.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "bot.cli", "worker", "--queue", "cpu"], cwd=REPO, env=env, stdout=out, stderr=out
        )
    yield env, log
    stop_process(process)


def wait_for_result(client: redis.Redis, job_id: str, log: Path) -> dict:
    deadline = time.monotonic() + WAIT_S
    while (raw := client.get(result_key_prefix + job_id)) is None:
        assert time.monotonic() < deadline, f"the worker did not take job {job_id}; its log:\n{log.read_text()}"
        time.sleep(0.2)
    return loads_job(raw)


def test_a_pickled_job_planted_in_redis_is_refused_and_does_not_run(
    worker: tuple[dict, Path], redis_with_password: str, tmp_path: Path
) -> None:
    env, log = worker
    marker = tmp_path / "pwned"
    payload = pickle.dumps({"t": 1, "f": "report", "a": [Planted(marker)], "k": {}, "et": int(time.time() * 1000)})
    job_id = f"planted-{uuid.uuid4().hex}"
    client = redis.Redis.from_url(redis_with_password)
    client.set(job_key_prefix + job_id, payload)
    client.zadd(f"{env['TUNELOOP_QUEUE_PREFIX']}:cpu", {job_id: time.time() * 1000})

    result = wait_for_result(client, job_id, log)
    assert result["s"] is False and "DeserializationError" in result["r"]  # failed unrun, recorded as JSON
    assert not marker.exists()
    pickle.loads(payload)  # the payload was armed: unpickled, it runs its command
    assert marker.exists()
    client.close()


def test_a_job_from_our_own_pool_runs_on_the_worker(worker: tuple[dict, Path], redis_with_password: str) -> None:
    env, log = worker

    async def enqueue_and_wait() -> object:
        pool = await open_queues(redis_with_password)
        try:
            name = f"{env['TUNELOOP_QUEUE_PREFIX']}:cpu"
            job = await pool.enqueue_job("report", 987654, _job_id=f"ours-{uuid.uuid4().hex}", _queue_name=name)
            assert job is not None
            return await job.result(timeout=WAIT_S)
        finally:
            await pool.aclose()

    # No such run in this worker's database: the job ran, claimed nothing, and said so.
    assert asyncio.run(enqueue_and_wait()) == "skipped", log.read_text()
    assert PASSWORD not in log.read_text()


def test_the_redis_password_is_not_shown_when_it_is_wrong(
    redis_with_password: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    wrong = redis_with_password.replace(PASSWORD, "not-the-password")
    monkeypatch.setenv("TUNELOOP_REDIS_URL", wrong)
    monkeypatch.setenv("TUNELOOP_QUEUE_PREFIX", f"test-{uuid.uuid4().hex[:8]}")
    get_settings.cache_clear()
    result = CliRunner().invoke(app, ["reconcile"])
    assert result.exit_code == 1, result.output
    assert "cannot reach the queues' Redis at redis://:***@127.0.0.1" in result.output
    assert "not-the-password" not in result.output and PASSWORD not in result.output
