"""A run's preparation stages (engine/loop/prepare.py) on SQLite and PostgreSQL, through the real pipeline: a slice of
the example dataset imported, filtered and split; synthesis against the scripted OpenAI server (tests/openai_server.py).
Retries end on the versions the first attempt made, failures fail the run naming the stage, a cancelled run stays
cancelled."""

from pathlib import Path
from typing import Any

import pytest
from openai_server import OpenAIServer, Reply, default_reply
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, func, select

from engine.data.pipeline import filter_version, import_file
from engine.data.versions import load_entries
from engine.events import Event
from engine.loop.prepare import (
    PrepareError,
    PreparePlan,
    plan_of,
    prepare_for_run,
    stages_of,
    synthesize_for_run,
)
from engine.loop.projects import get_or_create_project
from engine.loop.runs import RunCancelled, RunError, cancel_run, transition
from storage.db import session_scope
from storage.models import AuditEvent, DatasetVersion, Run, SynthBatch

ROOT = Path(__file__).resolve().parents[1]
TASK = "电商客服对话,回答关于退货、换货、物流查询的问题"
SPLIT = {"test_size": 0.2, "seed": 7}


def import_slice(engine: Engine, tmp_path: Path, lines: int = 60) -> int:
    """The first `lines` conversations of the example dataset imported into project "shop"; the version's id."""
    source = (ROOT / "examples" / "customer_service.jsonl").read_text(encoding="utf-8").splitlines()[:lines]
    path = tmp_path / "slice.jsonl"
    path.write_text("\n".join(source) + "\n", encoding="utf-8")
    with session_scope(engine) as session:
        version = import_file(session, "shop", path).change.version
        assert version.id is not None
        return version.id


def add_run(engine: Engine, plan: dict[str, Any] | None, version_id: int | None = None) -> int:
    with session_scope(engine) as session:
        project = get_or_create_project(session, "shop")
        iteration = len(session.exec(select(Run.id).where(Run.project_id == project.id)).all()) + 1
        run = Run(project_id=project.id, iteration=iteration, dataset_version_id=version_id, plan=plan)  # type: ignore[arg-type]
        session.add(run)
        session.flush()
        assert run.id is not None
        return run.id


def load_run(engine: Engine, run_id: int) -> Run:
    with Session(engine) as session:
        run = session.get(Run, run_id)
        assert run is not None
        return run


def version(engine: Engine, version_id: int | None) -> DatasetVersion:
    with Session(engine) as session:
        row = session.get(DatasetVersion, version_id)
        assert row is not None
        return row


def version_count(engine: Engine) -> int:
    with Session(engine) as session:
        return session.exec(select(func.count()).select_from(DatasetVersion)).one()


def actions(engine: Engine, run_id: int) -> list[str]:
    with Session(engine) as session:
        events = session.exec(
            select(AuditEvent)
            .where(AuditEvent.subject_type == "run", AuditEvent.subject_id == run_id)
            .order_by(col(AuditEvent.id))
        ).all()
        return [e.action for e in events]


def prepare(engine: Engine, run_id: int, events: list[Event] | None = None) -> None:
    # As a worker runs a stage: its own session, objects kept after commits.
    with Session(engine, expire_on_commit=False) as session:
        prepare_for_run(session, run_id, events=events.append if events is not None else lambda _: None)


def synthesize(engine: Engine, run_id: int, events: list[Event] | None = None) -> None:
    with Session(engine, expire_on_commit=False) as session:
        synthesize_for_run(session, run_id, events=events.append if events is not None else lambda _: None)


# --- plans -------------------------------------------------------------------------------------


def test_the_stages_a_plan_calls_for() -> None:
    synth = {"task": TASK, "n": 10}
    assert stages_of(None) == () and stages_of(PreparePlan()) == ()
    assert stages_of(PreparePlan.model_validate({"split": {}})) == ("prepare",)
    assert stages_of(PreparePlan.model_validate({"synthesize": synth})) == ("synthesize",)
    assert stages_of(PreparePlan.model_validate({"synthesize": synth, "filter": {}})) == ("synthesize", "prepare")
    assert stages_of(PreparePlan.model_validate({"filter": {}, "split": {}})) == ("prepare",)
    stored = PreparePlan.model_validate({"synthesize": synth, "split": SPLIT}).model_dump(mode="json")
    assert plan_of(Run(project_id=1, plan=stored)) == PreparePlan.model_validate(stored)
    assert plan_of(Run(project_id=1)) is None


def test_a_malformed_plan_is_refused_naming_the_run_and_each_field() -> None:
    bad = Run(id=9, project_id=1, plan={"filter": {"max_total_tokens": "many", "bogus": 1}, "split": {"test_size": 0}})
    with pytest.raises(RunError, match=r"run 9 has a malformed plan") as refused:
        plan_of(bad)
    message = str(refused.value)
    assert "filter.max_total_tokens" in message and "filter.bogus" in message and "split.test_size" in message
    with pytest.raises(RunError, match=r"run 3 .*synthesize: .*task description is empty"):
        plan_of(Run(id=3, project_id=1, plan={"synthesize": {"task": " "}}))
    with pytest.raises(RunError, match=r"run 4 .*synthesize\.n: .*greater than or equal to 1"):
        plan_of(Run(id=4, project_id=1, plan={"synthesize": {"task": TASK, "n": 0}}))
    with pytest.raises(RunError, match=r"run 5 .*train: Extra inputs"):
        plan_of(Run(id=5, project_id=1, plan={"train": {}}))


# --- prepare: filter and split -----------------------------------------------------------------


def test_filter_and_split_leave_the_run_preparing_on_a_split_version(db_engine: Engine, tmp_path: Path) -> None:
    source_id = import_slice(db_engine, tmp_path)
    run_id = add_run(db_engine, {"filter": {}, "split": SPLIT}, source_id)
    events: list[Event] = []
    prepare(db_engine, run_id, events)

    run = load_run(db_engine, run_id)
    assert (run.state, run.error) == ("preparing", None)
    final = version(db_engine, run.dataset_version_id)
    filtered = version(db_engine, final.parent_id)
    assert (final.kind, filtered.kind, filtered.parent_id) == ("split", "filter", source_id)
    with Session(db_engine) as session:
        entries = load_entries(session, final)
    in_use = [e for e in entries if e.in_use]
    assert {e.split for e in in_use} == {"train", "test"}
    assert final.sample_count == len(in_use) < len(entries)  # the example data holds samples the filter removes
    assert actions(db_engine, run_id) == ["run.preparing", "run.prepared"]

    assert events and all(e.run == run_id and e.project == "shop" for e in events)
    steps = [e.payload for e in events if e.type == "stage"]
    assert [(p["stage"], p["state"], p["step"]) for p in steps] == [
        ("prepare", "preparing", "filter"),
        ("prepare", "preparing", "split"),
    ]
    assert steps[0]["in"] == len(entries) and steps[0]["out"] == final.sample_count + steps[1]["counts"].get("leak", 0)
    assert steps[1]["counts"]["train"] + steps[1]["counts"]["test"] == final.sample_count
    report = events[-1]
    assert report.type == "report" and report.payload["version"] == final.number
    assert report.payload["summary"].startswith("v1 → filter v2") and "split v3 (train" in report.payload["summary"]


def test_a_retried_prepare_ends_on_the_same_version_without_new_ones(db_engine: Engine, tmp_path: Path) -> None:
    source_id = import_slice(db_engine, tmp_path)
    run_id = add_run(db_engine, {"filter": {"near_dup_threshold": 0.8}, "split": SPLIT}, source_id)
    # The first attempt's worker died after its filter had committed.
    with session_scope(db_engine) as session:
        config = PreparePlan.model_validate(load_run(db_engine, run_id).plan).filter
        filter_version(session, "shop", number=1, config=config, actor="worker:gone", platform="worker")
    prepare(db_engine, run_id)
    final = load_run(db_engine, run_id).dataset_version_id
    assert version_count(db_engine) == 3  # upload, that filter (found again), split

    # Its job ran again after the whole stage had committed: it starts again from the source, not from the split.
    events: list[Event] = []
    prepare(db_engine, run_id, events)
    run = load_run(db_engine, run_id)
    assert (run.state, run.dataset_version_id, version_count(db_engine)) == ("preparing", final, 3)
    assert [e.payload["created"] for e in events if e.type == "stage"] == [False, False]
    assert actions(db_engine, run_id) == ["run.preparing", "run.prepared", "run.prepared"]


def test_a_split_that_cannot_be_made_fails_the_run_naming_the_stage(db_engine: Engine, tmp_path: Path) -> None:
    source_id = import_slice(db_engine, tmp_path, lines=20)
    run_id = add_run(db_engine, {"filter": {}, "split": {"test_size": 500}}, source_id)
    with pytest.raises(PrepareError, match=rf"run {run_id}: the prepare stage failed: test_size=500") as failed:
        prepare(db_engine, run_id)
    assert "no training samples" in str(failed.value)
    run = load_run(db_engine, run_id)
    assert (run.state, run.error, run.dataset_version_id) == ("failed", str(failed.value), source_id)
    assert version_count(db_engine) == 1  # the filter's version went with the failed stage
    assert actions(db_engine, run_id) == ["run.preparing", "run.failed"]


def test_a_malformed_plan_or_a_missing_version_fails_the_run(db_engine: Engine) -> None:
    bad = add_run(db_engine, {"split": {"test_fraction": 0.1}})
    with pytest.raises(PrepareError, match=rf"run {bad}: the prepare stage failed: .*split\.test_fraction"):
        prepare(db_engine, bad)
    empty = add_run(db_engine, {"split": SPLIT})
    with pytest.raises(PrepareError, match="has no dataset version to prepare"):
        prepare(db_engine, empty)
    assert [load_run(db_engine, i).state for i in (bad, empty)] == ["failed", "failed"]


def test_a_cancelled_run_stays_cancelled_and_other_states_are_left_alone(db_engine: Engine, tmp_path: Path) -> None:
    source_id = import_slice(db_engine, tmp_path, lines=20)
    cancelled, training = (add_run(db_engine, {"split": SPLIT}, source_id) for _ in range(2))
    with session_scope(db_engine) as session:
        cancel_run(session, cancelled, "alice")
        transition(session, session.get(Run, training), "training", actor="alice")  # type: ignore[arg-type]
    with pytest.raises(RunCancelled):
        prepare(db_engine, cancelled)
    with pytest.raises(PrepareError, match=rf"run {training} is training; its prepare stage runs only"):
        prepare(db_engine, training)
    assert [load_run(db_engine, i).state for i in (cancelled, training)] == ["cancelled", "training"]
    assert version_count(db_engine) == 1


def stored_batches(engine: Engine) -> list[int]:
    """The indices of the synthesis batches stored with a reply."""
    with Session(engine) as session:
        query = select(SynthBatch.batch_index).where(SynthBatch.status == "ok", col(SynthBatch.batch_index) >= 0)
        return sorted(session.exec(query).all())


# --- synthesize --------------------------------------------------------------------------------


def test_synthesis_resumes_its_job_and_the_run_prepares_what_it_made(
    db_engine: Engine, synth_server: OpenAIServer
) -> None:
    synth = {"task": TASK, "n": 30, "model": "gpt-4o", "scenarios": {"退货": 3, "换货": 2, "物流": 5}}
    run_id = add_run(db_engine, {"synthesize": synth, "split": SPLIT})
    # Two batches come back, then the endpoint refuses the key: the stage fails with what it has stored.
    synth_server.script(default_reply, default_reply, Reply.error(401))
    refused = rf"run {run_id}: the synthesize stage failed: .*refused.*set TUNELOOP_SYNTH_API_KEY"
    with pytest.raises(PrepareError, match=refused):
        synthesize(db_engine, run_id)
    assert load_run(db_engine, run_id).state == "failed"
    sent = len(synth_server.batch_requests())
    kept = stored_batches(db_engine)  # the two answered before the refusal; one sent as it came may be too
    assert kept[:2] == [0, 1] and len(kept) < sent

    # A person retries the run: the job resumes and asks only for the batches it has not stored.
    with session_scope(db_engine) as session:
        transition(session, session.get(Run, run_id), "queued", actor="rita")  # type: ignore[arg-type]
    events: list[Event] = []
    synthesize(db_engine, run_id, events)
    sent_again = len(synth_server.batch_requests())
    assert sent_again - sent == 4 - len(kept)
    assert stored_batches(db_engine) == [0, 1, 2, 3]
    run = load_run(db_engine, run_id)
    made = version(db_engine, run.dataset_version_id)
    assert (run.state, made.kind, made.sample_count) == ("preparing", "synthesis", 30)
    assert events and all(e.run == run_id for e in events)
    assert events[-1].type == "report" and events[-1].payload["stage"] == "synthesize"

    # Run again after it had finished: nothing is requested, the run keeps its version.
    synthesize(db_engine, run_id)
    assert (
        len(synth_server.batch_requests()) == sent_again and load_run(db_engine, run_id).dataset_version_id == made.id
    )

    prepare(db_engine, run_id)
    run = load_run(db_engine, run_id)
    split = version(db_engine, run.dataset_version_id)
    assert (run.state, split.kind, split.parent_id) == ("preparing", "split", made.id)
    assert actions(db_engine, run_id) == ["run.preparing", "run.failed", "run.queued", "run.preparing", "run.prepared"]


def test_an_incomplete_synthesis_goes_on_with_a_warning(db_engine: Engine, synth_server: OpenAIServer) -> None:
    run_id = add_run(db_engine, {"synthesize": {"task": TASK, "n": 20, "scenarios": {"退货": 1}}})
    synth_server.script(Reply.error(400, "This batch is malformed."))  # rejected, not retried: the batch failed
    events: list[Event] = []
    synthesize(db_engine, run_id, events)
    run = load_run(db_engine, run_id)
    assert (run.state, version(db_engine, run.dataset_version_id).sample_count) == ("preparing", 10)
    warning = [e for e in events if e.type == "warning" and "incomplete" in e.payload["message"]]
    assert len(warning) == 1 and warning[0].run == run_id and "10 sample(s)" in warning[0].payload["message"]
    assert stored_batches(db_engine) == [1] and len(synth_server.batch_requests()) == 2
