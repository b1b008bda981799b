"""Work on real arq workers for tests: settings shared by this process and `tuneloop worker` processes, starting them,
and reading and waiting for what they do (tests/test_worker.py; the chat faces' end-to-end tests)."""

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select
from typer.testing import CliRunner

from bot.cli import app
from engine.database import get_engine
from engine.loop.projects import get_or_create_project
from engine.settings import get_settings
from storage.db import session_scope
from storage.models import Job, Run
from tests.training_data import SHOP_QA, SHOP_SYSTEM, add_dataset, qa_entries

REPO = Path(__file__).resolve().parents[1]
WAIT_S = 240  # a deadline against hanging, not a timing assertion
EVALUATION = {"max_new_tokens": 16, "stability_prompts": 0, "forgetting": False, "weakest_k": 3}
# Training steps are most of these tests' time (a step is about a second on a busy 2-core machine), so each run trains
# as long as its test needs: a run trained through needs the steps that make its adapter pass the EOS check at the end
# of training (about eight); one interrupted once its first checkpoint (step 4) appears needs steps left after it
# (`killed_at < report["steps"]` checks it had some); one stopped with SIGTERM must also outlast the worker's
# job_completion_wait, or its job would end done instead of interrupted. Epochs of two steps on the shop data:
TRAINED_THROUGH, INTERRUPTED, STOPPED = 4, 10, 30
runner = CliRunner()


@dataclass
class Setup:
    env: dict[str, str]
    engine: Engine
    redis: redis.Redis
    folder: Path
    base_model: Path
    artifacts: Path
    logs: Path
    workers: list[subprocess.Popen]

    def start_worker(self, queue: str = "gpu") -> subprocess.Popen:
        log = (self.logs / f"worker-{len(self.workers)}.log").open("w")
        worker = subprocess.Popen(
            [sys.executable, "-m", "bot.cli", "worker", "--queue", queue],
            cwd=REPO,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        self.workers.append(worker)
        return worker

    def start_workers(self) -> subprocess.Popen:
        """A gpu and a cpu worker (judge and report run on the cpu queue); returns the gpu one."""
        self.start_worker("cpu")
        return self.start_worker("gpu")

    def submit(self, *options: str, epochs: int = INTERRUPTED) -> int:
        recipe = self.folder / f"recipe-{epochs}.yaml"
        recipe.write_text(
            f"model_name_or_path: {self.base_model}\nnum_train_epochs: {epochs}\nper_device_train_batch_size: 2\n"
            "learning_rate: 0.005\nlora_dropout: 0.0\ncutoff_len: 64\nlogging_steps: 1\nsave_steps: 4\n",
            encoding="utf-8",
        )
        result = runner.invoke(app, ["submit", "--project", "shop", "--recipe", str(recipe), *options])
        assert result.exit_code == 0, result.output
        return int(result.output.split()[1])  # "run N queued for training"

    def state(self, run_id: int) -> str:
        with Session(self.engine) as session:
            return session.exec(select(Run.state).where(Run.id == run_id)).one()

    def jobs(self, run_id: int) -> list[tuple[str, str, int, str]]:
        """(arq job id, stage, attempt, status) of the run's jobs, in order."""
        with Session(self.engine) as session:
            rows = session.exec(select(Job).where(Job.run_id == run_id).order_by(col(Job.id))).all()
            return [(j.arq_job_id, j.stage, j.attempt, j.status) for j in rows]

    def run_folder(self, run_id: int) -> Path:
        return self.artifacts / "projects" / "shop" / "runs" / str(run_id)

    def checkpoints(self, run_id: int) -> list[str]:
        folder = self.run_folder(run_id) / "checkpoints"
        return sorted(p.name for p in folder.glob("checkpoint-*")) if folder.is_dir() else []

    def settled(self, run_id: int, *states: str) -> bool:
        """The run is in one of `states` and none of its jobs is waiting or running (a job records its end just
        after the run's move)."""
        return self.state(run_id) in states and all(
            job[3] not in ("queued", "running", "interrupted") for job in self.jobs(run_id)
        )

    def wait_for(self, what: str, done: Callable[[], bool]) -> None:
        deadline = time.monotonic() + WAIT_S
        while not done():
            if time.monotonic() > deadline:
                raise AssertionError(f"gave up waiting for {what}; logs:\n{self.worker_logs()}")
            time.sleep(0.3)

    def worker_logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()[-4000:]}" for p in sorted(self.logs.glob("*.log")))


@contextmanager
def worker_setup(
    redis_url: str,
    database_url: str,
    base_model: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    redis_database: int,
    *,
    dataset: bool = True,
) -> Iterator[Setup]:
    """Settings for workers and this process alike (a SQLite file or `database_url`, Redis database `redis_database`
    flushed before and after, queue names of its own), project `shop` (with its QA dataset unless `dataset` is
    False: the test brings its data); workers killed after."""
    url = redis_url.rsplit("/", 1)[0] + f"/{redis_database}"
    client = redis.Redis.from_url(url)
    client.flushdb()  # this test's own logical database
    values = {
        "TUNELOOP_DATABASE_URL": database_url,
        "TUNELOOP_ARTIFACT_ROOT": str(tmp_path / "artifacts"),
        "TUNELOOP_REDIS_URL": url,
        "TUNELOOP_QUEUE_PREFIX": f"test-{uuid.uuid4().hex[:8]}",
        "TUNELOOP_HEARTBEAT_EVERY_S": "0.5",
        "TUNELOOP_SILENT_AFTER_S": "5",
        "TUNELOOP_RECONCILE_EVERY_S": "1",
        "TUNELOOP_JOB_COMPLETION_WAIT_S": "1",
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    engine = get_engine()
    if dataset:
        add_dataset(
            qa_entries(SHOP_QA, "train", system=SHOP_SYSTEM) + qa_entries(SHOP_QA[:3], "test", system=SHOP_SYSTEM)
        )
    with session_scope(engine) as session:
        get_or_create_project(session, "shop").settings = {"evaluation": EVALUATION}
    logs = tmp_path / "logs"
    logs.mkdir()
    env = {**os.environ, **values, "PYTHONPATH": str(REPO)}
    made = Setup(env, engine, client, tmp_path, base_model, tmp_path / "artifacts", logs, [])
    yield made
    for worker in made.workers:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    engine.dispose()  # a PostgreSQL database is dropped next
    client.flushdb()
    client.close()
    get_settings.cache_clear()
