"""The run state machine on SQLite and PostgreSQL: legal moves audited with who made them, illegal ones refused in a
sentence, approval rules, one deployment for an approval sent twice at once, cancelling (a real tiny training stops
at its next step), a run's history read back, and the terminal commands. Runs are rows made directly; deployment
is a stand-in counting its calls (tests/test_serve_deploy.py covers the real one)."""

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select
from transformers import TrainerCallback
from typer.testing import CliRunner

import engine.loop.runs
from bot.cli import app
from engine.loop.projects import get_or_create_project
from engine.loop.runs import (
    STATES,
    TRANSITIONS,
    ApprovalRefused,
    IllegalTransition,
    RunError,
    approve_run,
    cancel_run,
    deploy_approved,
    fail_run,
    get_run,
    request_approval,
    retry_run,
    run_history,
    transition,
)
from engine.serve.deploy import DeployOutcome
from engine.settings import get_settings
from engine.train.recipe import Recipe
from engine.train.sft import TrainingError, train
from engine.train.tiny import build_tiny_model
from engine.work.jobs import submit_run
from storage.db import session_scope
from storage.models import AuditEvent, Deployment, Evaluation, Job, Judgement, Metric, Review, Run
from tests.training_data import SHOP_QA, SHOP_SYSTEM, add_dataset, qa_entries


class FakeDeploy:
    """Stands in for engine.serve.deploy.deploy_run: records each call, answers as a deployment that worked (or not)."""

    def __init__(self, ok: bool = True) -> None:
        self.ok, self.calls = ok, []
        self.lock = threading.Lock()

    def __call__(self, session: Session, run_id: int, approved_by: str, **_: object) -> DeployOutcome:
        with self.lock:
            self.calls.append((run_id, approved_by))
        run = session.get(Run, run_id)
        assert run is not None
        status = "active" if self.ok else "failed"
        deployment = Deployment(
            project_id=run.project_id, adapter_id=0, model_name="shop", version_name="shop-v1", status=status
        )
        message = "shop now serves shop-v1" if self.ok else "deploying run failed: gpu-1 is down"
        return DeployOutcome(deployment, changed=self.ok, message=message)


@pytest.fixture
def deploys(monkeypatch: pytest.MonkeyPatch) -> FakeDeploy:
    fake = FakeDeploy()
    monkeypatch.setattr(engine.loop.runs, "deploy_run", fake)
    return fake


def add_run(
    engine: Engine,
    state: str,
    *,
    gate: bool | None = True,
    requested_by: str = "rita",
    approvers: list[str] | None = None,
    settings: dict | None = None,
) -> int:
    """A run of project "shop" in `state`, evaluated with a gate that passed (True), failed (False), or not at all."""
    with session_scope(engine) as session:
        project = get_or_create_project(session, "shop")
        project.approvers, project.settings = approvers, settings
        session.add(project)
        iteration = len(session.exec(select(Run.id).where(Run.project_id == project.id)).all()) + 1
        run = Run(project_id=project.id, iteration=iteration, state=state, requested_by=requested_by)  # type: ignore[arg-type]
        session.add(run)
        session.flush()
        if gate is not None:
            reasons = [] if gate else ["overall 3.1 is below 4.0"]
            session.add(Evaluation(run_id=run.id, judge_kind="metric", gate_passed=gate, gate_reasons=reasons))  # type: ignore[arg-type]
        assert run.id is not None
        return run.id


def state_of(engine: Engine, run_id: int) -> str:
    with Session(engine) as session:
        return session.exec(select(Run.state).where(Run.id == run_id)).one()


def moves(engine: Engine, run_id: int) -> list[tuple[str, str, str | None]]:
    """(action, actor, platform) of the run's audited moves, in order."""
    with Session(engine) as session:
        events = session.exec(
            select(AuditEvent).where(AuditEvent.subject_type == "run", AuditEvent.subject_id == run_id)
        ).all()
        return [(e.action, e.actor, e.platform) for e in sorted(events, key=lambda e: e.id or 0)]


def test_every_legal_move_is_made_and_audited_with_who_made_it(db_engine: Engine) -> None:
    for origin, targets in TRANSITIONS.items():
        for to in sorted(targets):
            run_id = add_run(db_engine, origin)
            with session_scope(db_engine) as session:
                run = transition(session, session.get(Run, run_id), to, actor="alice", platform="slack", reason="why")  # type: ignore[arg-type]
                assert run.state == to
            assert state_of(db_engine, run_id) == to
            assert moves(db_engine, run_id) == [(f"run.{to}", "alice", "slack")]
            with Session(db_engine) as session:
                row = session.get(Run, run_id)
                assert row is not None and row.updated_at is not None
                assert row.error == ("why" if to == "failed" else None)
                event = session.exec(select(AuditEvent).where(AuditEvent.subject_id == run_id)).one()
                assert event.detail == {"from": origin, "to": to, "reason": "why"}


def test_illegal_moves_are_refused_in_a_sentence_and_change_nothing(db_engine: Engine) -> None:
    refused = [(origin, to) for origin in STATES for to in STATES if to not in TRANSITIONS.get(origin, ())]
    assert ("deployed", "training") in refused and ("training", "deployed") in refused
    for origin, to in refused:
        run_id = add_run(db_engine, origin)
        with session_scope(db_engine) as session, pytest.raises(IllegalTransition) as refusal:
            transition(session, session.get(Run, run_id), to, actor="alice")  # type: ignore[arg-type]
        assert str(refusal.value).startswith(f"run {run_id} is {origin}; it ")
        assert state_of(db_engine, run_id) == origin and moves(db_engine, run_id) == []
    run_id = add_run(db_engine, "deployed")
    with session_scope(db_engine) as session, pytest.raises(IllegalTransition) as refusal:
        transition(session, session.get(Run, run_id), "training", actor="alice")  # type: ignore[arg-type]
    assert str(refusal.value) == f"run {run_id} is deployed; it cannot go back to training"


def test_a_move_made_on_a_stale_copy_loses_to_the_one_made_first(db_engine: Engine) -> None:
    run_id = add_run(db_engine, "reviewing")
    with Session(db_engine) as first, Session(db_engine) as second:
        mine, theirs = first.get(Run, run_id), second.get(Run, run_id)
        transition(first, mine, "awaiting_approval", actor="alice")  # type: ignore[arg-type]
        first.commit()
        with pytest.raises(IllegalTransition, match="is awaiting_approval now, no longer reviewing: someone else"):
            transition(second, theirs, "evaluating", actor="bob")  # type: ignore[arg-type]
        second.rollback()
    assert state_of(db_engine, run_id) == "awaiting_approval"
    assert moves(db_engine, run_id) == [("run.awaiting_approval", "alice", None)]


def test_the_same_approval_sent_twice_at_once_deploys_once(
    db_engine: Engine, deploys: FakeDeploy, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_id = add_run(db_engine, "awaiting_approval")
    both_checked = threading.Barrier(2, timeout=30)
    latest = engine.loop.runs.latest_evaluation

    def checked_together(session: Session, run: int) -> Evaluation | None:
        found = latest(session, run)
        both_checked.wait()  # both approvals have read the run as awaiting approval before either moves it
        return found

    monkeypatch.setattr(engine.loop.runs, "latest_evaluation", checked_together)
    outcomes: list[str] = []

    def approve(name: str) -> None:
        try:
            with session_scope(db_engine) as session:
                approve_run(session, run_id, name)
            with session_scope(db_engine) as session:
                deploy_approved(session, run_id, name)
            outcomes.append("deployed")
        except IllegalTransition as error:
            outcomes.append(str(error))

    threads = [threading.Thread(target=approve, args=(name,)) for name in ("alice", "bob")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sorted(outcomes)[0] == "deployed" and "someone else moved it first" in sorted(outcomes)[1]
    assert len(deploys.calls) == 1
    assert state_of(db_engine, run_id) == "deployed"
    assert [action for action, _, _ in moves(db_engine, run_id)] == ["run.deploying", "run.deployed"]


def test_a_failed_gate_needs_an_override_reason(db_engine: Engine, deploys: FakeDeploy) -> None:
    run_id = add_run(db_engine, "reviewing", gate=False)
    with session_scope(db_engine) as session, pytest.raises(ApprovalRefused) as refusal:
        approve_run(session, run_id, "alice")
    assert "failed its gate (overall 3.1 is below 4.0)" in str(refusal.value) and "--override" in str(refusal.value)
    with session_scope(db_engine) as session, pytest.raises(ApprovalRefused, match="stays in reviewing"):
        request_approval(session, run_id, "rita")
    assert state_of(db_engine, run_id) == "reviewing"

    with session_scope(db_engine) as session:
        approve_run(session, run_id, "alice", platform="telegram", override_reason="the judge is too strict on tone")
    with Session(db_engine) as session:
        run = session.get(Run, run_id)
        assert run is not None and run.state == "deploying"
        assert run.gate_override_reason == "the judge is too strict on tone"
        event = session.exec(select(AuditEvent).where(AuditEvent.action == "run.deploying")).one()
        assert (event.actor, event.platform) == ("alice", "telegram")
        assert event.detail is not None and event.detail["override"] == "the judge is too strict on tone"

    unevaluated = add_run(db_engine, "reviewing", gate=None)
    with session_scope(db_engine) as session, pytest.raises(ApprovalRefused, match="has not been evaluated"):
        approve_run(session, unevaluated, "alice", override_reason="trust me")


def test_only_listed_approvers_approve_and_not_the_requester_when_asked(db_engine: Engine) -> None:
    run_id = add_run(db_engine, "awaiting_approval", approvers=["alice", "rita"])
    with session_scope(db_engine) as session, pytest.raises(ApprovalRefused) as refusal:
        approve_run(session, run_id, "mallory")
    assert str(refusal.value) == "mallory may not approve runs of shop: its approvers are alice, rita"
    with session_scope(db_engine) as session:
        approve_run(session, run_id, "rita")  # the requester may approve unless the project says otherwise
    assert state_of(db_engine, run_id) == "deploying"

    strict = add_run(
        db_engine, "awaiting_approval", approvers=["alice", "rita"], settings={"approver_not_requester": True}
    )
    with session_scope(db_engine) as session, pytest.raises(ApprovalRefused, match="rita requested run"):
        approve_run(session, strict, "rita")
    with session_scope(db_engine) as session:
        approve_run(session, strict, "alice")
    assert state_of(db_engine, strict) == "deploying"
    anyone = add_run(db_engine, "awaiting_approval", approvers=[])
    with session_scope(db_engine) as session:
        approve_run(session, anyone, "mallory")
    assert state_of(db_engine, anyone) == "deploying"


def test_approval_flow_request_then_a_failed_deployment_then_a_retry(
    db_engine: Engine, deploys: FakeDeploy, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_id = add_run(db_engine, "reviewing")
    with session_scope(db_engine) as session:
        request_approval(session, run_id, "rita")
    assert state_of(db_engine, run_id) == "awaiting_approval"
    deploys.ok = False
    with session_scope(db_engine) as session:
        approve_run(session, run_id, "alice")
        assert not deploy_approved(session, run_id, "alice").ok
    with Session(db_engine) as session:
        run = session.get(Run, run_id)
        assert run is not None and run.state == "failed" and "gpu-1 is down" in (run.error or "")
    deploys.ok = True
    with session_scope(db_engine) as session:
        approve_run(session, run_id, "alice")  # a failed deployment may be approved again
        assert deploy_approved(session, run_id, "alice").ok
    assert state_of(db_engine, run_id) == "deployed" and len(deploys.calls) == 2
    with session_scope(db_engine) as session, pytest.raises(ApprovalRefused, match="is deployed; only a run"):
        approve_run(session, run_id, "alice")
    trained = add_run(db_engine, "training")
    with session_scope(db_engine) as session, pytest.raises(IllegalTransition, match="only an approved run"):
        deploy_approved(session, trained, "alice")


@pytest.mark.parametrize("state", ["queued", "preparing", "training", "evaluating", "reviewing", "awaiting_approval"])
def test_cancel_from_each_state_that_has_not_ended(db_engine: Engine, state: str) -> None:
    run_id = add_run(db_engine, state)
    with session_scope(db_engine) as session:
        cancel_run(session, run_id, "alice", platform="slack")
    assert state_of(db_engine, run_id) == "cancelled"
    assert moves(db_engine, run_id) == [("run.cancelled", "alice", "slack")]
    with session_scope(db_engine) as session, pytest.raises(IllegalTransition, match="cancelled already"):
        cancel_run(session, run_id, "alice")


def test_ended_runs_cannot_be_cancelled(db_engine: Engine) -> None:
    run_id = add_run(db_engine, "deployed")
    with session_scope(db_engine) as session, pytest.raises(IllegalTransition, match="is deployed already"):
        cancel_run(session, run_id, "alice")
    assert state_of(db_engine, run_id) == "deployed"


class CancelAt(TrainerCallback):
    """Cancels the run from another session at `step`, as a person pressing Cancel would."""

    def __init__(self, engine: Engine, step: int) -> None:
        self.engine, self.step = engine, step

    def on_step_end(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
        if state.global_step == self.step:
            with session_scope(self.engine) as session:
                run_id = session.exec(select(Run.id)).one()
                cancel_run(session, run_id, "alice")


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # training dominates; one engine is enough
def test_cancelling_stops_a_real_training_at_its_next_step(db_engine: Engine, tmp_path: Path) -> None:
    model = build_tiny_model(tmp_path / "model")
    number = add_dataset(qa_entries(SHOP_QA, "train", system=SHOP_SYSTEM), engine=db_engine)
    recipe = Recipe.model_validate(
        {"model_name_or_path": str(model), "num_train_epochs": 20, "per_device_train_batch_size": 2, "cutoff_len": 64}
    )
    out = tmp_path / "run"
    with (
        session_scope(db_engine) as session,
        pytest.raises(TrainingError, match="cancelled: training stopped at step 3"),
    ):
        train(session, "shop", number, recipe, out_dir=out, callbacks=[CancelAt(db_engine, step=2)])
    with Session(db_engine) as session:
        run = session.exec(select(Run)).one()
        assert run.state == "cancelled" and run.error is None
        steps = session.exec(select(Metric.step).where(Metric.run_id == run.id)).all()
    assert max(steps) <= 3  # 60 steps were planned
    assert [p.name for p in (out / "checkpoints").glob("checkpoint-*")] == ["checkpoint-3"]  # kept for a retry
    assert not (out / "adapter").exists()
    assert [action for action, _, _ in moves(db_engine, run.id)] == ["run.training", "run.cancelled"]


def test_a_runs_whole_history_reads_back(db_engine: Engine, deploys: FakeDeploy) -> None:
    run_id = add_run(db_engine, "queued")
    with session_scope(db_engine) as session:
        run = session.get(Run, run_id)
        for to in ("training", "evaluating", "reviewing"):
            transition(session, run, to, actor="worker:gpu-1")  # type: ignore[arg-type]
        session.add(Job(run_id=run_id, stage="train", queue="gpu", arq_job_id=f"{run_id}:train:1", status="done"))
        session.add_all([Metric(run_id=run_id, step=s, loss=2.0 / s) for s in (1, 2, 4)])
        evaluation = session.exec(select(Evaluation).where(Evaluation.run_id == run_id)).one()
        judgement = Judgement(evaluation_id=evaluation.id, question="多久到货？")  # type: ignore[arg-type]
        session.add(judgement)
        session.flush()
        session.add(Review(judgement_id=judgement.id, reviewer="rita", verdict="keep"))
        request_approval(session, run_id, "rita", platform="slack")
        approve_run(session, run_id, "alice", platform="slack")
        deploy_approved(session, run_id, "alice")

    with Session(db_engine) as session:
        history = run_history(session, run_id)
    assert history.run.state == "deployed" and history.project == "shop"
    steps = [(e.detail or {}).get("to") for e in history.transitions]
    assert steps == ["training", "evaluating", "reviewing", "awaiting_approval", "deploying", "deployed"]
    assert [e.actor for e in history.transitions] == ["worker:gpu-1"] * 3 + ["rita", "alice", "alice"]
    assert [j.arq_job_id for j in history.jobs] == [f"{run_id}:train:1"]
    assert (history.metric_count, history.last_loss) == (3, 0.5)
    assert [(e.id, e.gate_passed) for e in history.evaluations] == [(evaluation.id, True)]
    assert [(r.reviewer, r.verdict) for r in history.reviews] == [("rita", "keep")]


@pytest.fixture
def cli_db(db_engine: Engine, db_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Engine]:
    monkeypatch.setenv("TUNELOOP_DATABASE_URL", db_url)
    get_settings.cache_clear()
    yield db_engine
    get_settings.cache_clear()


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_cli_runs_show_approve_and_cancel(cli_db: Engine, deploys: FakeDeploy) -> None:
    runner = CliRunner()
    failed_gate = add_run(cli_db, "reviewing", gate=False)
    waiting = add_run(cli_db, "awaiting_approval")
    training = add_run(cli_db, "training")

    listed = runner.invoke(app, ["runs", "--project", "shop"])
    assert listed.exit_code == 0, listed.output
    assert "waiting for approval" in listed.output and "rita" in listed.output
    only = runner.invoke(app, ["runs", "--state", "training"])
    assert only.exit_code == 0 and "training" in only.output and "waiting for review" not in only.output
    bad = runner.invoke(app, ["runs", "--state", "finished"])
    assert bad.exit_code == 2 and "'finished' is not a run state" in bad.output

    refused = runner.invoke(app, ["approve", str(failed_gate), "--by", "alice"])
    assert refused.exit_code == 2 and "failed its gate" in refused.output and "Traceback" not in refused.output
    approved = runner.invoke(app, ["approve", str(waiting), "--by", "alice"])
    assert approved.exit_code == 0, approved.output
    assert "approved by alice" in approved.output and "shop now serves shop-v1" in approved.output
    assert deploys.calls == [(waiting, "alice")]
    again = runner.invoke(app, ["approve", str(waiting), "--by", "alice"])
    assert again.exit_code == 2 and f"run {waiting} is deployed" in again.output

    cancelled = runner.invoke(app, ["cancel", str(training), "--by", "bob"])
    assert cancelled.exit_code == 0 and f"Run {training} cancelled by bob" in cancelled.output
    ended = runner.invoke(app, ["cancel", str(training)])
    assert ended.exit_code == 2 and "cancelled already" in ended.output

    shown = runner.invoke(app, ["run", "show", str(waiting)])
    assert shown.exit_code == 0, shown.output
    assert "awaiting_approval → deploying by alice on cli" in shown.output
    assert "deploying → deployed by alice" in shown.output and "gate passed" in shown.output
    missing = runner.invoke(app, ["run", "show", "999"])
    assert missing.exit_code == 1 and "no run 999" in missing.output
    with Session(cli_db) as session:
        assert session.exec(select(Run.state).order_by(col(Run.id))).all() == ["reviewing", "deployed", "cancelled"]


def test_only_the_projects_requesters_may_start_a_run(db_engine: Engine) -> None:
    with session_scope(db_engine) as session:
        project = get_or_create_project(session, "shop")
        project.settings = {"requesters": ["王经理"]}
    recipe = Recipe.model_validate({"model_name_or_path": "models/tiny"})
    with session_scope(db_engine) as session, pytest.raises(RunError, match="张三 may not start runs of shop"):
        asyncio.run(submit_run(session, None, "shop", None, recipe, "张三"))  # type: ignore[arg-type]
    with session_scope(db_engine) as session:
        assert session.exec(select(Run)).first() is None  # refused before anything was written


@pytest.mark.parametrize(("failed_in", "retried_to"), [("training", "queued"), ("evaluating", "evaluating")])
def test_a_failed_run_is_retried_from_where_its_work_starts_again(
    db_engine: Engine, failed_in: str, retried_to: str
) -> None:
    run_id = add_run(db_engine, failed_in)
    with Session(db_engine) as session:
        fail_run(session, run_id, "CUDA out of memory", actor="worker:gpu-1")
        session.commit()
        retry_run(session, run_id, "ml-eng", platform="slack")
        session.commit()
        assert get_run(session, run_id).error is None
    assert state_of(db_engine, run_id) == retried_to
    assert moves(db_engine, run_id)[-1] == (f"run.{retried_to}", "ml-eng", "slack")
    with Session(db_engine) as session, pytest.raises(IllegalTransition, match="only a failed run can be retried"):
        retry_run(session, run_id, "ml-eng")


def test_a_failed_deployment_is_retried_by_approving_again(db_engine: Engine) -> None:
    run_id = add_run(db_engine, "deploying")
    with Session(db_engine) as session:
        fail_run(session, run_id, "no serving server answered", actor="worker:cpu-1")
        session.commit()
        with pytest.raises(RunError, match=f"approve it again to retry \\(`tuneloop approve {run_id}`\\)"):
            retry_run(session, run_id, "ml-eng")
    assert state_of(db_engine, run_id) == "failed"
