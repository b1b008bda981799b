"""The whole loop on this machine, for the end-to-end tests of a chat face: a tiny base model, a gpu and a cpu
worker (real `tuneloop worker` processes), `tuneloop serve` as the deploy target and the gateway in front of it, all
sharing one configuration with the test's own process (a SQLite file, a Redis logical database of the test's own,
queue names of its own). Nothing here knows a chat platform: a face's test drives the loop through its own client
and reads the outcome here.

    from tests.loop_fixtures import loop_model_fixture  # noqa: F401  (the fixture `loop_model`)

    def test_x(loop_model, redis_url, tmp_path, monkeypatch):
        with running_loop(loop_model, tmp_path, redis_url, MY_REDIS_DB, monkeypatch) as loop:
            loop.project("shop")
            loop.start_workers()
            ...                                   # the face's bot on loop.core()
            loop.wait_for("run 1 to review", lambda: loop.state(1) == "reviewing")
"""

import json
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from bot.core.perform import Core
from engine.database import get_engine
from engine.loop.projects import get_or_create_project
from engine.serve.local import LocalGateway, LocalServer, free_port, local_gateway, start_local_server
from engine.settings import get_settings
from engine.train.tiny import build_tiny_model
from engine.work.local import start_worker_process, stop_process
from storage.db import session_scope
from storage.models import Run

WAIT_S = 300  # a deadline against hanging, not a timing assertion
LORA_RANK = 16  # the default recipe's; `tuneloop serve` is started to take it
# Training is most of an end-to-end test's time (a step is about a second on a busy 2-core machine): few steps of
# a tiny batch (six samples, two of them split off for the test: one step an epoch), enough for the adapter to pass
# the EOS check that ends training (tests/test_worker.py: twelve such steps).
TINY_RECIPE = {
    "num_train_epochs": 12,
    "per_device_train_batch_size": 2,
    "gradient_accumulation_steps": 2,
    "learning_rate": 0.005,
    "lora_dropout": 0.0,
    "cutoff_len": 64,
    "logging_steps": 1,
    "save_steps": 1000,
}
# An evaluation that shows every part a face posts (report, charts, weakest samples) at the least cost.
EVALUATION = {"max_new_tokens": 16, "stability_prompts": 0, "forgetting": False, "weakest_k": 3}
# A gate a tiny model passes: the mean score on its 1-5 scale only (the metric judge measures no win rate).
LENIENT_GATE = {"min_overall": 1.0, "min_win_rate": None, "max_invalid_rate": None, "max_forgetting_drop": None}


@pytest.fixture(scope="module", name="loop_model")
def loop_model_fixture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny base model every run of the module trains on."""
    return build_tiny_model(tmp_path_factory.mktemp("loop") / "model")


@dataclass
class Loop:
    engine: Engine
    redis: redis.Redis
    base_model: Path
    logs: Path
    server: LocalServer
    gateway: LocalGateway
    workers: list = field(default_factory=list)

    def core(self) -> Core:
        """The application core on the loop's configuration, as a face's bot makes it."""
        return Core(self.engine, get_settings())

    def project(self, name: str, **settings: object) -> None:
        """A project on the tiny model, trained and evaluated cheaply, that its gate lets through."""
        with session_scope(self.engine) as session:
            project = get_or_create_project(session, name)
            project.base_model = str(self.base_model)
            project.recipe = dict(TINY_RECIPE)
            project.settings = {"evaluation": EVALUATION, "gate": LENIENT_GATE, **settings}
            session.add(project)

    def start_workers(self) -> None:
        """A gpu and a cpu worker (judge, report and deploy run on the cpu queue)."""
        for queue in ("gpu", "cpu"):
            self.workers.append(start_worker_process(queue, self.logs / f"worker-{queue}.log"))

    def state(self, run_id: int) -> str | None:
        with Session(self.engine) as session:
            return session.exec(select(Run.state).where(Run.id == run_id)).first()

    def wait_for(self, what: str, done: Callable[[], object], timeout_s: float = WAIT_S) -> None:
        deadline = time.monotonic() + timeout_s
        while not done():
            if time.monotonic() > deadline:
                raise AssertionError(f"gave up waiting for {what}; logs:\n{self.log_tails()}")
            time.sleep(0.2)

    def log_tails(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-4000:]}" for p in sorted(self.logs.glob("*")))


@contextmanager
def running_loop(
    base_model: Path, folder: Path, redis_url: str, redis_db: int, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Loop]:
    """Serving and the configuration shared with the workers (started by `Loop.start_workers`); everything is
    stopped, and the Redis database `redis_db` (the caller's own) emptied, on leaving."""
    url = redis_url.rsplit("/", 1)[0] + f"/{redis_db}"
    client = redis.Redis.from_url(url)
    client.flushdb()
    logs = folder / "logs"
    server = start_local_server(base_model, logs / "serve.log", args=["--max-lora-rank", str(LORA_RANK)])
    gateway_port = free_port()
    values = {
        "TUNELOOP_DATABASE_URL": f"sqlite:///{folder / 'tuneloop.db'}",
        "TUNELOOP_ARTIFACT_ROOT": str(folder / "artifacts"),
        "TUNELOOP_REDIS_URL": url,
        "TUNELOOP_QUEUE_PREFIX": f"test-{uuid.uuid4().hex[:8]}",
        "TUNELOOP_VLLM_URLS": json.dumps([f"{server.url}#max-lora-rank={LORA_RANK}"]),
        "TUNELOOP_VLLM_API_KEY": server.api_key,
        "TUNELOOP_GATEWAY_URL": f"http://127.0.0.1:{gateway_port}/v1",
        "TUNELOOP_HEARTBEAT_EVERY_S": "1",
        "TUNELOOP_RECONCILE_EVERY_S": "2",
        "TUNELOOP_JOB_COMPLETION_WAIT_S": "1",
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)  # the workers inherit this process's environment
    get_settings.cache_clear()
    engine = get_engine()
    try:
        with local_gateway([server.url], engine, upstream_api_key=server.api_key, port=gateway_port) as gateway:
            loop = Loop(engine, client, base_model, logs, server, gateway)
            try:
                yield loop
            finally:
                for worker in loop.workers:
                    stop_process(worker, timeout_s=10)
    finally:
        server.stop()
        engine.dispose()
        client.flushdb()
        client.close()
        get_settings.cache_clear()
