"""Runs on real arq workers (`tuneloop worker` processes) against a real Redis and a SQLite file (PostgreSQL too where
the test says so): a run goes through preparation, training, generation, judging and its report to reviewing; a worker
killed mid-training, stopped, or frozen while another takes its job, or Redis wiped, does not lose the run (training
resumes from its checkpoint); two GPU workers never run one job twice; a cancelled run stops and keeps its
checkpoints. Each test owns a Redis logical database (flushed before and after) and its own queue names. The tests
that start worker processes are marked slow (`pytest -m "not slow"` leaves them out)."""

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
from arq.constants import job_key_prefix, result_key_prefix
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select
from typer.testing import CliRunner

from bot.cli import app
from engine.database import get_engine
from engine.events.stream import DEFAULT_STREAM, decode
from engine.loop.projects import get_or_create_project
from engine.loop.runs import fail_run, transition
from engine.settings import get_settings
from engine.train.tiny import build_tiny_model
from engine.work.jobs import queue_name
from storage.db import session_scope
from storage.migrate import upgrade
from storage.models import Adapter, Job, Metric, Run
from tests.conftest import fresh_postgres_database
from tests.training_data import SHOP_QA, SHOP_SYSTEM, add_dataset, qa_entries

REPO = Path(__file__).resolve().parents[1]
WORKER_REDIS_DB = int(os.environ.get("TUNELOOP_TEST_WORKER_REDIS_DB", "13"))
WAIT_S = 240  # a deadline against hanging, not a timing assertion
EVALUATION = {"max_new_tokens": 16, "stability_prompts": 0, "forgetting": False, "weakest_k": 3}
# Training steps are most of these tests' time (a step is about a second on a busy 2-core machine), so each run trains
# as long as its test needs: a run trained through needs the steps that make its adapter pass the EOS check at the end
# of training (about eight); one interrupted once its first checkpoint (step 4) appears needs steps left after it
# (`killed_at < report["steps"]` checks it had some); one stopped with SIGTERM must also outlast the worker's
# job_completion_wait, or its job would end done instead of interrupted. Epochs of two steps on the shop data:
TRAINED_THROUGH, INTERRUPTED, STOPPED = 4, 10, 30
runner = CliRunner()


@pytest.fixture(scope="module")
def base_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("worker") / "model")


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
        # Rank 16 as in tuneloop's default recipe: a recipe file's unset keys take LLaMA-Factory's defaults (rank 8),
        # which needs more steps than these tests give before the adapter passes the EOS check.
        recipe.write_text(
            f"model_name_or_path: {self.base_model}\nnum_train_epochs: {epochs}\nper_device_train_batch_size: 2\n"
            "learning_rate: 0.005\nlora_rank: 16\nlora_dropout: 0.0\ncutoff_len: 64\nlogging_steps: 1\nsave_steps: 4\n",
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


@pytest.fixture
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """SQLite unless a test asks for `postgresql` (parametrize indirect)."""
    if getattr(request, "param", "sqlite") == "sqlite":
        yield f"sqlite:///{tmp_path / 'tuneloop.db'}"
        return
    with fresh_postgres_database(request.getfixturevalue("postgres_admin")) as url:
        upgrade(url)
        yield url


POSTGRESQL = pytest.param("postgresql", marks=pytest.mark.postgres)
BOTH_DATABASES = pytest.mark.parametrize("database_url", ["sqlite", POSTGRESQL], indirect=True)
ON_POSTGRESQL = pytest.mark.parametrize("database_url", [POSTGRESQL], indirect=True)


@pytest.fixture
def setup(
    redis_url: str, database_url: str, base_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Setup]:
    url = redis_url.rsplit("/", 1)[0] + f"/{WORKER_REDIS_DB}"
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
    add_dataset(qa_entries(SHOP_QA, "train", system=SHOP_SYSTEM) + qa_entries(SHOP_QA[:3], "test", system=SHOP_SYSTEM))
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


def evaluated(run_id: int) -> list[tuple[str, str, int, str]]:
    """The jobs of a trained run's evaluation: generate on the gpu queue, judge and report on the cpu queue."""
    return [(f"{run_id}:{stage}:1", stage, 1, "done") for stage in ("generate", "judge", "report")]


@pytest.mark.slow
def test_a_submitted_run_is_prepared_trained_and_evaluated_by_workers_and_waits_for_review(setup: Setup) -> None:
    # The filter drops the test copies of train; what the split leaves trains one step an epoch: thrice the epochs.
    run_id = setup.submit("--filter", "--split", "--test-size", "2", epochs=3 * TRAINED_THROUGH)
    setup.start_workers()
    setup.wait_for("the run to reach reviewing", lambda: setup.settled(run_id, "reviewing", "failed"))
    assert setup.state(run_id) == "reviewing", setup.worker_logs()
    assert setup.jobs(run_id) == [
        (f"{run_id}:prepare:1", "prepare", 1, "done"),
        (f"{run_id}:train:1", "train", 1, "done"),
        *evaluated(run_id),
    ]
    with Session(setup.engine) as session:
        ran_on = dict(session.exec(select(Job.stage, Job.worker).where(Job.run_id == run_id)).all())
    assert ran_on["prepare"] == ran_on["judge"] == ran_on["report"] != ran_on["train"] == ran_on["generate"]
    shown = runner.invoke(app, ["run", "show", str(run_id)])
    assert shown.exit_code == 0
    assert f"{run_id}:train:1 train done (attempt 1)" in shown.output, shown.output
    for move in ("queued → preparing", "preparing → training", "training → evaluating", "evaluating → reviewing"):
        assert f"{move} by worker:" in shown.output, shown.output
    # The events the workers announced, read back from the database (the stream is for following live).
    assert "stage prepare filter (preparing)" in shown.output, shown.output
    assert "stage evaluate judge (evaluating)" in shown.output
    assert "report evaluate: " in shown.output

    approved = runner.invoke(app, ["approve", str(run_id), "--by", "alice", "--override", "a tiny model; testing"])
    assert approved.exit_code == 0, approved.output
    assert f"deployment queued as job {run_id}:deploy:1" in approved.output
    setup.wait_for("the deployment to end", lambda: setup.settled(run_id, "deployed", "failed"))
    assert setup.state(run_id) == "failed"  # no serving servers are configured: the worker says so on the run
    assert setup.jobs(run_id)[-1] == (f"{run_id}:deploy:1", "deploy", 1, "failed")

    def moves_on_stream() -> list[str]:
        """The run's moves as front ends read them from the event stream, every entry (a repeat would show)."""
        entries = (decode(entry_id, fields) for entry_id, fields in setup.redis.xrange(DEFAULT_STREAM))
        moves = [e.event for e in entries if e.event.run == run_id and e.event.payload.get("stage") == "run"]
        return [event.payload["state"] for event in moves]

    setup.wait_for("the failure on the event stream", lambda: "failed" in moves_on_stream())
    assert moves_on_stream() == ["preparing", "training", "evaluating", "reviewing", "deploying", "failed"]


@pytest.mark.slow
def test_a_worker_stopped_mid_training_saves_a_checkpoint_and_the_next_worker_resumes_there(setup: Setup) -> None:
    run_id = setup.submit(epochs=STOPPED)
    first = setup.start_worker()
    setup.wait_for("a checkpoint", lambda: bool(setup.checkpoints(run_id)))
    first.send_signal(signal.SIGTERM)  # training outlasts job_completion_wait, so the worker stops it
    assert first.wait(timeout=WAIT_S) == 0
    assert setup.jobs(run_id) == [(f"{run_id}:train:1", "train", 1, "interrupted")]
    assert setup.state(run_id) == "training"  # stopped, not failed: it waits for the next worker
    setup.start_workers()
    setup.wait_for("the run to reach reviewing", lambda: setup.settled(run_id, "reviewing", "failed"))
    assert setup.state(run_id) == "reviewing", setup.worker_logs()
    assert setup.jobs(run_id) == [
        (f"{run_id}:train:1", "train", 1, "done"),
        *evaluated(run_id),
    ]
    with Session(setup.engine) as session:
        steps = session.exec(select(Metric.step).where(Metric.run_id == run_id, col(Metric.loss).is_not(None))).all()
    assert steps.count(1) == 1


@pytest.mark.slow
@BOTH_DATABASES
def test_a_worker_killed_mid_training_is_replaced_and_training_resumes_from_its_checkpoint(setup: Setup) -> None:
    run_id = setup.submit()
    first = setup.start_worker()
    setup.wait_for("a checkpoint", lambda: bool(setup.checkpoints(run_id)))
    first.send_signal(signal.SIGKILL)
    first.wait()
    with Session(setup.engine) as session:
        killed_at = max(session.exec(select(Metric.step).where(Metric.run_id == run_id)).all())
    setup.start_workers()
    setup.wait_for("the run to reach reviewing", lambda: setup.settled(run_id, "reviewing", "failed"))
    assert setup.state(run_id) == "reviewing", setup.worker_logs()
    assert setup.jobs(run_id) == [
        (f"{run_id}:train:1", "train", 1, "lost"),
        (f"{run_id}:train:2", "train", 2, "done"),
        *evaluated(run_id),
    ]
    with Session(setup.engine) as session:
        steps = session.exec(select(Metric.step).where(Metric.run_id == run_id, col(Metric.loss).is_not(None))).all()
    report = json.loads((setup.run_folder(run_id) / "train_report.json").read_text(encoding="utf-8"))
    assert killed_at < report["steps"]  # killed before training ended
    assert steps.count(1) == 1  # the second worker did not start over from step 0
    assert max(steps) == report["steps"]


@pytest.mark.slow
def test_redis_wiped_with_work_waiting_and_again_mid_training_loses_no_run(setup: Setup) -> None:
    run_id = setup.submit()
    setup.redis.flushdb()
    reconciled = runner.invoke(app, ["reconcile"])
    assert reconciled.exit_code == 0 and f"re-queued: {run_id}:train:1" in reconciled.output
    setup.start_workers()
    setup.wait_for("a checkpoint", lambda: bool(setup.checkpoints(run_id)))
    setup.redis.flushdb()
    setup.wait_for("the run to reach reviewing", lambda: setup.settled(run_id, "reviewing", "failed"))
    assert setup.state(run_id) == "reviewing", setup.worker_logs()
    assert setup.jobs(run_id) == [
        (f"{run_id}:train:1", "train", 1, "done"),
        *evaluated(run_id),
    ]


@pytest.mark.slow
@ON_POSTGRESQL
def test_two_gpu_workers_share_four_runs_and_never_run_a_job_twice(setup: Setup) -> None:
    runs = [setup.submit(epochs=TRAINED_THROUGH) for _ in range(4)]
    setup.start_workers()
    setup.start_worker()
    for run_id in runs:
        setup.wait_for(f"run {run_id} to reach reviewing", lambda r=run_id: setup.settled(r, "reviewing", "failed"))
    assert [setup.state(run_id) for run_id in runs] == ["reviewing"] * 4, setup.worker_logs()
    with Session(setup.engine) as session:
        jobs = session.exec(select(Job)).all()
    stages = ("train", "generate", "judge", "report")
    assert sorted(j.arq_job_id for j in jobs) == sorted(f"{r}:{s}:1" for r in runs for s in stages)
    assert {j.status for j in jobs} == {"done"}
    assert len({j.worker for j in jobs if j.queue == "gpu"}) == 2  # both gpu workers took work, each job once


@pytest.mark.slow
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


@pytest.mark.slow
@ON_POSTGRESQL
def test_a_frozen_worker_whose_training_was_given_to_another_stops_it_when_it_wakes(setup: Setup) -> None:
    run_id = setup.submit()
    frozen = setup.start_worker()
    setup.wait_for("a checkpoint", lambda: bool(setup.checkpoints(run_id)))
    frozen.send_signal(signal.SIGSTOP)  # alive but silent: its heartbeat stops
    setup.start_workers()  # the cpu worker's reconciler marks train:1 lost; the new gpu worker resumes the run
    taken_over = {(f"{run_id}:train:2", "train", 2, status) for status in ("running", "done")}
    setup.wait_for("another worker to take the training over", lambda: bool(taken_over & set(setup.jobs(run_id))))
    frozen.send_signal(signal.SIGCONT)
    setup.wait_for("the run to reach reviewing", lambda: setup.settled(run_id, "reviewing", "failed"))
    assert setup.state(run_id) == "reviewing", setup.worker_logs()
    assert setup.jobs(run_id) == [
        (f"{run_id}:train:1", "train", 1, "lost"),
        (f"{run_id}:train:2", "train", 2, "done"),
        *evaluated(run_id),
    ]
    woken = (setup.logs / "worker-0.log").read_text()
    assert f"job {run_id}:train:1 is no longer running here in the database's view; stopping it" in woken
    assert frozen.poll() is None  # the worker goes on taking work; only the stage it lost was stopped


def test_an_interrupted_job_that_arq_gave_up_on_is_queued_again_under_a_new_id(setup: Setup) -> None:
    run_id = setup.submit()
    job_id = f"{run_id}:train:1"
    # What arq leaves of a job that used up job_max_tries of shutdowns: nothing queued, a result under its id.
    with Session(setup.engine) as session:
        job = session.exec(select(Job).where(Job.arq_job_id == job_id)).one()
        job.status = "interrupted"
        session.add(job)
        session.commit()
    setup.redis.zrem(queue_name("gpu"), job_id)
    setup.redis.delete(job_key_prefix + job_id)
    setup.redis.set(result_key_prefix + job_id, b"max tries exceeded")
    reconciled = runner.invoke(app, ["reconcile"])
    assert reconciled.exit_code == 0, reconciled.output
    assert f"lost: {job_id}" in reconciled.output and f"re-queued: {run_id}:train:2" in reconciled.output
    assert setup.jobs(run_id) == [(job_id, "train", 1, "lost"), (f"{run_id}:train:2", "train", 2, "queued")]
    assert setup.redis.zscore(queue_name("gpu"), f"{run_id}:train:2") is not None


def test_a_stage_that_keeps_losing_its_worker_fails_the_run_instead_of_looping(
    setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TUNELOOP_STAGE_MAX_LOST", "2")
    get_settings.cache_clear()
    run_id = setup.submit()
    with Session(setup.engine) as session:  # two attempts whose workers vanished (killed for memory, say)
        session.exec(select(Job).where(Job.run_id == run_id)).one().status = "lost"
        session.add(Job(run_id=run_id, stage="train", queue="gpu", arq_job_id=f"{run_id}:train:2", attempt=2))
        session.commit()
        session.exec(select(Job).where(Job.arq_job_id == f"{run_id}:train:2")).one().status = "lost"
        session.commit()
    reconciled = runner.invoke(app, ["reconcile"])
    assert reconciled.exit_code == 0, reconciled.output
    assert setup.state(run_id) == "failed"
    assert [job[0] for job in setup.jobs(run_id)] == [f"{run_id}:train:1", f"{run_id}:train:2"]
    shown = runner.invoke(app, ["run", "show", str(run_id)])
    assert "its train stage lost its worker 2 times" in shown.output, shown.output
    # Once its cause is fixed a person retries it, and the stage has its allowance again.
    retried = runner.invoke(app, ["retry", str(run_id), "--by", "ml-eng"])
    assert retried.exit_code == 0 and f"{run_id}:train:3 queued" in retried.output, retried.output
    assert setup.state(run_id) == "queued"
    assert runner.invoke(app, ["reconcile"]).exit_code == 0
    assert setup.state(run_id) == "queued" and setup.jobs(run_id)[-1] == (f"{run_id}:train:3", "train", 3, "queued")


def test_a_run_whose_judge_failed_is_retried_from_the_judge(setup: Setup) -> None:
    run_id = setup.submit()
    with Session(setup.engine) as session:  # as workers leave a run whose judge endpoint refused
        session.exec(select(Job).where(Job.run_id == run_id)).one().status = "done"
        for stage, queue, status in (("generate", "gpu", "done"), ("judge", "cpu", "failed")):
            session.add(Job(run_id=run_id, stage=stage, queue=queue, arq_job_id=f"{run_id}:{stage}:1", status=status))
        run = session.get(Run, run_id)
        assert run is not None
        transition(session, run, "training", actor="worker:gpu-1")
        transition(session, run, "evaluating", actor="worker:gpu-1")
        session.commit()
        fail_run(session, run_id, "EvaluationError: the judge endpoint refused the key", actor="worker:cpu-1")
        session.commit()
    retried = runner.invoke(app, ["retry", str(run_id), "--by", "ml-eng"])
    assert retried.exit_code == 0 and f"{run_id}:judge:2 queued" in retried.output, retried.output
    assert setup.state(run_id) == "evaluating"  # the answers it generated are judged again, not generated again
    assert setup.jobs(run_id)[-1] == (f"{run_id}:judge:2", "judge", 2, "queued")
    assert setup.redis.zscore(queue_name("cpu"), f"{run_id}:judge:2") is not None
    again = runner.invoke(app, ["retry", str(run_id)])
    assert again.exit_code != 0 and f"run {run_id} is evaluating; only a failed run can be retried" in again.output
