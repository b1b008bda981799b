"""Runs on real arq workers (`tuneloop worker` processes) against a real Redis and a SQLite file: a run goes through
training and evaluation to reviewing; a worker killed mid-training, or Redis wiped, does not lose the run (training
resumes from its checkpoint); two GPU workers never run one job twice; a cancelled run stops and keeps its
checkpoints. Each test owns a Redis logical database (flushed before and after) and its own queue names."""

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select
from typer.testing import CliRunner

from bot.cli import app
from engine.database import get_engine
from engine.projects import get_or_create_project
from engine.settings import get_settings
from engine.train.tiny import build_tiny_model
from storage.db import session_scope
from storage.models import Adapter, Job, Metric, Run
from tests.training_data import SHOP_QA, SHOP_SYSTEM, add_dataset, qa_entries

REPO = Path(__file__).resolve().parents[1]
WORKER_REDIS_DB = int(os.environ.get("TUNELOOP_TEST_WORKER_REDIS_DB", "13"))
WAIT_S = 240  # a deadline against hanging, not a timing assertion
EVALUATION = {"max_new_tokens": 16, "stability_prompts": 0, "forgetting": False, "weakest_k": 3}
runner = CliRunner()


@pytest.fixture(scope="module")
def base_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("worker") / "model")


@dataclass
class Setup:
    env: dict[str, str]
    engine: Engine
    redis: redis.Redis
    recipe: Path
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

    def submit(self) -> int:
        result = runner.invoke(app, ["submit", "--project", "shop", "--recipe", str(self.recipe)])
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


@pytest.fixture
def setup(redis_url: str, base_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Setup]:
    url = redis_url.rsplit("/", 1)[0] + f"/{WORKER_REDIS_DB}"
    client = redis.Redis.from_url(url)
    client.flushdb()  # this test's own logical database
    values = {
        "TUNELOOP_DATABASE_URL": f"sqlite:///{tmp_path / 'tuneloop.db'}",
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
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        f"model_name_or_path: {base_model}\nnum_train_epochs: 30\nper_device_train_batch_size: 2\n"
        "learning_rate: 0.005\nlora_dropout: 0.0\ncutoff_len: 64\nlogging_steps: 1\nsave_steps: 4\n",
        encoding="utf-8",
    )
    engine = get_engine()
    add_dataset(qa_entries(SHOP_QA, "train", system=SHOP_SYSTEM) + qa_entries(SHOP_QA[:3], "test", system=SHOP_SYSTEM))
    with session_scope(engine) as session:
        get_or_create_project(session, "shop").settings = {"evaluation": EVALUATION}
    logs = tmp_path / "logs"
    logs.mkdir()
    env = {**os.environ, **values, "PYTHONPATH": str(REPO)}
    made = Setup(env, engine, client, recipe, tmp_path / "artifacts", logs, [])
    yield made
    for worker in made.workers:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    client.flushdb()
    client.close()
    get_settings.cache_clear()


def test_a_submitted_run_is_trained_and_evaluated_by_workers_and_waits_for_review(setup: Setup) -> None:
    run_id = setup.submit()
    setup.start_worker()
    setup.wait_for("the run to reach reviewing", lambda: setup.settled(run_id, "reviewing", "failed"))
    assert setup.state(run_id) == "reviewing", setup.worker_logs()
    assert setup.jobs(run_id) == [
        (f"{run_id}:train:1", "train", 1, "done"),
        (f"{run_id}:evaluate:1", "evaluate", 1, "done"),
    ]
    shown = runner.invoke(app, ["run", "show", str(run_id)])
    assert shown.exit_code == 0
    assert f"{run_id}:train:1 train done (attempt 1)" in shown.output, shown.output
    assert "training → evaluating by worker:" in shown.output
    assert "evaluating → reviewing by worker:" in shown.output

    approved = runner.invoke(app, ["approve", str(run_id), "--by", "alice"])
    assert approved.exit_code == 0 and f"deployment queued as job {run_id}:deploy:1" in approved.output
    setup.start_worker("cpu")
    setup.wait_for("the deployment to end", lambda: setup.settled(run_id, "deployed", "failed"))
    assert setup.state(run_id) == "failed"  # no serving servers are configured: the worker says so on the run
    assert setup.jobs(run_id)[-1] == (f"{run_id}:deploy:1", "deploy", 1, "failed")


def test_a_worker_stopped_mid_training_saves_a_checkpoint_and_the_next_worker_resumes_there(setup: Setup) -> None:
    run_id = setup.submit()
    first = setup.start_worker()
    setup.wait_for("a checkpoint", lambda: bool(setup.checkpoints(run_id)))
    first.send_signal(signal.SIGTERM)  # training outlasts job_completion_wait, so the worker stops it
    assert first.wait(timeout=WAIT_S) == 0
    assert setup.jobs(run_id) == [(f"{run_id}:train:1", "train", 1, "interrupted")]
    setup.start_worker()
    setup.wait_for("the run to reach reviewing", lambda: setup.settled(run_id, "reviewing", "failed"))
    assert setup.state(run_id) == "reviewing", setup.worker_logs()
    assert setup.jobs(run_id) == [
        (f"{run_id}:train:1", "train", 1, "done"),
        (f"{run_id}:evaluate:1", "evaluate", 1, "done"),
    ]
    with Session(setup.engine) as session:
        steps = session.exec(select(Metric.step).where(Metric.run_id == run_id, col(Metric.loss).is_not(None))).all()
    assert steps.count(1) == 1


def test_a_worker_killed_mid_training_is_replaced_and_training_resumes_from_its_checkpoint(setup: Setup) -> None:
    run_id = setup.submit()
    first = setup.start_worker()
    setup.wait_for("a checkpoint", lambda: bool(setup.checkpoints(run_id)))
    first.send_signal(signal.SIGKILL)
    first.wait()
    with Session(setup.engine) as session:
        killed_at = max(session.exec(select(Metric.step).where(Metric.run_id == run_id)).all())
    setup.start_worker()
    setup.wait_for("the run to reach reviewing", lambda: setup.settled(run_id, "reviewing", "failed"))
    assert setup.state(run_id) == "reviewing", setup.worker_logs()
    assert setup.jobs(run_id) == [
        (f"{run_id}:train:1", "train", 1, "lost"),
        (f"{run_id}:train:2", "train", 2, "done"),
        (f"{run_id}:evaluate:1", "evaluate", 1, "done"),
    ]
    with Session(setup.engine) as session:
        steps = session.exec(select(Metric.step).where(Metric.run_id == run_id, col(Metric.loss).is_not(None))).all()
    report = json.loads((setup.run_folder(run_id) / "train_report.json").read_text(encoding="utf-8"))
    assert killed_at < report["steps"]  # killed before training ended
    assert steps.count(1) == 1  # the second worker did not start over from step 0
    assert max(steps) == report["steps"]


def test_redis_wiped_with_work_waiting_and_again_mid_training_loses_no_run(setup: Setup) -> None:
    run_id = setup.submit()
    setup.redis.flushdb()
    reconciled = runner.invoke(app, ["reconcile"])
    assert reconciled.exit_code == 0 and f"re-queued: {run_id}:train:1" in reconciled.output
    setup.start_worker()
    setup.wait_for("a checkpoint", lambda: bool(setup.checkpoints(run_id)))
    setup.redis.flushdb()
    setup.wait_for("the run to reach reviewing", lambda: setup.settled(run_id, "reviewing", "failed"))
    assert setup.state(run_id) == "reviewing", setup.worker_logs()
    assert setup.jobs(run_id) == [
        (f"{run_id}:train:1", "train", 1, "done"),
        (f"{run_id}:evaluate:1", "evaluate", 1, "done"),
    ]


def test_two_gpu_workers_share_four_runs_and_never_run_a_job_twice(setup: Setup) -> None:
    runs = [setup.submit() for _ in range(4)]
    setup.start_worker()
    setup.start_worker()
    for run_id in runs:
        setup.wait_for(f"run {run_id} to reach reviewing", lambda r=run_id: setup.settled(r, "reviewing", "failed"))
    assert [setup.state(run_id) for run_id in runs] == ["reviewing"] * 4, setup.worker_logs()
    with Session(setup.engine) as session:
        jobs = session.exec(select(Job)).all()
    assert sorted(j.arq_job_id for j in jobs) == sorted(f"{r}:{s}:1" for r in runs for s in ("train", "evaluate"))
    assert {j.status for j in jobs} == {"done"}
    assert len({j.worker for j in jobs}) == 2  # both workers took work, each job once


def test_a_run_cancelled_mid_training_stops_and_keeps_its_checkpoints(setup: Setup) -> None:
    run_id = setup.submit()
    setup.start_worker()
    setup.wait_for("a checkpoint", lambda: bool(setup.checkpoints(run_id)))
    cancelled = runner.invoke(app, ["cancel", str(run_id), "--by", "bob"])
    assert cancelled.exit_code == 0, cancelled.output
    setup.wait_for("the job to stop", lambda: setup.settled(run_id, "cancelled"))
    assert setup.state(run_id) == "cancelled"
    assert setup.jobs(run_id) == [(f"{run_id}:train:1", "train", 1, "cancelled")]
    assert setup.checkpoints(run_id)
    with Session(setup.engine) as session:
        assert session.exec(select(Adapter).where(Adapter.run_id == run_id)).first() is None
