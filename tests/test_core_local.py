"""The core's actions for work done in this process and for the servers, tested directly: training, evaluating,
exporting and reconciling are the terminal's (a chat is refused in a sentence, in English and Chinese, and the
refusal is kept on record); a run that does not exist is named as such; the deployments as a table, their statuses
in words; the gate's checks as a table in the report; syncing the servers is a project's approvers' from a chat and
the operator's for every project. No training here: stored rows stand in for what a training would leave."""

from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
import redis
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from bot.core.actions import (
    Action,
    Evaluate,
    ExportModel,
    ListDeployments,
    NewProject,
    Reconcile,
    ShowReport,
    SyncServers,
    Train,
)
from bot.core.errors import UserError
from bot.core.grammar import parse, spell
from bot.core.identity import Actor
from bot.core.perform import Core
from engine.evaluate.gate import GateConfig, GateInputs, decide
from engine.settings import get_settings
from engine.work.jobs import queue_name
from storage.db import session_scope
from storage.models import Adapter, Deployment, Evaluation, Job, Project, Run
from tests.test_core import core_on, refusals
from tests.test_reviews import build

ALICE = Actor("slack", "U0ALICE", "Alice")
WANG = Actor("telegram", "42", "王经理")
OPS = Actor("cli", "ops")

LOCAL_REDIS_DB = 3  # a logical database of these tests' own: the reconciler reads and writes queues


@pytest.fixture
def core(db_engine: Engine, redis_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Core]:
    with core_on(db_engine, redis_url, LOCAL_REDIS_DB, monkeypatch) as core:
        yield core


def refusal(core: Core, action: Action, actor: Actor) -> UserError:
    """The mistake or refusal `action` meets, done by `actor`."""
    with pytest.raises(UserError) as caught:
        core.perform(action, actor)
    return caught.value


def speaking(engine: Engine, language: str) -> None:
    """Project shop answers in `language`."""
    with session_scope(engine) as session:
        project = session.exec(select(Project).where(Project.name == "shop")).one()
        project.settings = {**(project.settings or {}), "language": language}


def deployed(engine: Engine, run_id: int) -> None:
    """Two deployments of shop's run: v1 superseded, then v2 that failed to load with its reason."""
    with session_scope(engine) as session:
        project = session.exec(select(Project).where(Project.name == "shop")).one()
        adapter = Adapter(
            project_id=project.id, run_id=run_id, path="/adapters/shop/1", sha256="0" * 64, size_bytes=1, base_model="m"
        )
        session.add(adapter)
        session.flush()
        when = datetime(2026, 5, 1, 9, 30, tzinfo=UTC)
        for version, status, error in (("shop-v1", "superseded", None), ("shop-v2", "failed", "the server said 500")):
            session.add(
                Deployment(
                    project_id=project.id,
                    adapter_id=adapter.id,
                    model_name="shop",
                    version_name=version,
                    status=status,
                    approved_by="王经理",
                    approved_at=when,
                    error=error,
                )
            )


# --- the terminal's own work -------------------------------------------------------------------------------


def test_work_done_in_this_process_is_refused_from_a_chat_in_a_sentence_and_kept_on_record(
    core: Core, db_engine: Engine
) -> None:
    world = build(db_engine)
    run = world.run_id
    assert str(refusal(core, Train(project="shop", data="2"), ALICE)) == (
        "Training in tuneloop's own process is an operator's action, on the terminal: tuneloop train --project shop. "
        "Here, 'shop data=2' does it on the workers."
    )
    assert str(refusal(core, Evaluate(run=run), ALICE)) == (
        f"Evaluating in tuneloop's own process is an operator's action, on the terminal: tuneloop eval {run}."
    )
    merging = str(refusal(core, ExportModel(run=run, merge=True), ALICE))
    assert merging.startswith("Writing a model into tuneloop's machine") and merging.endswith(f"export {run} --merge.")
    reconciling = str(refusal(core, Reconcile(), ALICE))
    assert reconciling.startswith("Reconciling the queues with the database is an operator's action")
    assert [(action, who) for action, who, _ in refusals(db_engine)] == [
        ("refused.train", "slack:U0ALICE"),
        ("refused.evaluate", "slack:U0ALICE"),
        ("refused.export_model", "slack:U0ALICE"),
        ("refused.reconcile", "slack:U0ALICE"),
    ]
    # In the project's language: Chinese.
    speaking(db_engine, "zh")
    assert str(refusal(core, Train(project="shop"), WANG)) == (
        "在 tuneloop 自身的进程中训练只能由运维在终端执行：tuneloop train --project shop。"
        "在这里，'shop' 会交给 worker 执行。"
    )
    assert str(refusal(core, Evaluate(run=run), WANG)) == (
        f"在 tuneloop 自身的进程中评估只能由运维在终端执行：tuneloop eval {run}。"
    )
    assert str(refusal(core, ExportModel(run=run), WANG)) == (
        f"把模型写到 tuneloop 所在的机器上只能由运维在终端执行：tuneloop export {run}。"
    )
    with Session(db_engine) as session:
        assert session.get(Run, run).state == "reviewing"  # nothing was done


def test_a_run_that_is_not_there_is_named_and_a_run_without_a_folder_says_where_to_write(
    core: Core, db_engine: Engine
) -> None:
    world = build(db_engine)
    for action in (Evaluate(run=999), ExportModel(run=999), Train(project="shop", resume=999)):
        missing = refusal(core, action, OPS)
        assert missing.not_found and str(missing) == "no run 999", action
    missing = refusal(core, Train(project="nope"), OPS)
    assert missing.not_found and str(missing) == "no project named 'nope' (projects: shop)"
    # A run that never trained here has no folder: the terminal is told to name one.
    no_folder = refusal(core, ExportModel(run=world.run_id), OPS)
    assert str(no_folder) == f"Run {world.run_id} has no folder of its own: pass --out."
    speaking(db_engine, "zh")
    no_folder = refusal(core, ExportModel(run=world.run_id), OPS)
    assert str(no_folder) == f"运行 {world.run_id} 没有自己的文件夹：请用 --out 指定。"
    several = refusal(core, Train(project="shop", processes=2, out="/tmp/elsewhere"), OPS)
    assert str(several) == "多进程训练的运行写入制品库：--out 只能用于单进程训练。"
    core.perform(NewProject(project="legal"), OPS)
    elsewhere = refusal(core, Train(project="legal", resume=world.run_id), OPS)
    assert str(elsewhere) == f"运行 {world.run_id} 属于 shop：请用 --project shop 继续训练。"
    assert refusals(db_engine) == []  # mistakes, not refusals


def test_training_here_is_for_the_projects_requesters(core: Core, db_engine: Engine) -> None:
    build(db_engine)
    with session_scope(db_engine) as session:
        session.exec(select(Project).where(Project.name == "shop")).one().settings = {"requesters": ["lead"]}
    assert str(refusal(core, Train(project="shop"), OPS)).startswith("ops may not start runs in shop")
    assert [action for action, _, _ in refusals(db_engine)] == ["refused.train"]


def test_the_reconciler_puts_back_a_stage_whose_queue_entry_was_lost(core: Core, db_engine: Engine) -> None:
    world = build(db_engine)
    assert [m.title for m in core.perform(Reconcile(), OPS)] == ["nothing to do"]
    with session_scope(db_engine) as session:
        session.get(Run, world.run_id).state = "training"
        job_id = f"{world.run_id}:train:1"
        session.add(Job(run_id=world.run_id, stage="train", queue="gpu", arq_job_id=job_id, status="queued"))
    assert [m.title for m in core.perform(Reconcile(), OPS)] == [f"re-queued: {job_id}"]
    assert redis.Redis.from_url(core.settings.redis_url).zrange(queue_name("gpu"), 0, -1) == [job_id.encode()]
    assert [m.title for m in core.perform(Reconcile(), OPS)] == ["nothing to do"]  # it is on its queue again


# --- what people read: the deployments, the gate ----------------------------------------------------------


def test_the_deployments_are_a_table_with_their_statuses_in_words(core: Core, db_engine: Engine) -> None:
    world = build(db_engine)
    assert core.perform(ListDeployments(), ALICE)[0].title == "No deployments yet."
    deployed(db_engine, world.run_id)
    listed = core.perform(ListDeployments(project="shop"), ALICE)[0]  # reading: open to anyone
    (table,) = listed.tables
    assert table.columns == ["id", "version", "status", "run", "approved by", "approved at"]
    assert [row[1:] for row in table.rows] == [
        ["shop-v2", "failed", str(world.run_id), "王经理", "2026-05-01 09:30"],
        ["shop-v1", "superseded", str(world.run_id), "王经理", "2026-05-01 09:30"],
    ]
    assert listed.lines == [f"Deployment {table.rows[0][0]} (shop-v2) failed: the server said 500"]
    speaking(db_engine, "zh")
    listed = core.perform(ListDeployments(project="shop"), WANG)[0]
    assert listed.title == "部署列表" and listed.tables[0].columns[:3] == ["编号", "版本", "状态"]
    assert [row[2] for row in listed.tables[0].rows] == ["失败", "已被替换"]
    assert listed.lines == [f"部署 {table.rows[0][0]}（shop-v2）失败：the server said 500"]
    missing = refusal(core, ListDeployments(project="nope"), ALICE)
    assert missing.not_found and str(missing) == "no project named 'nope' (projects: shop)"


def test_the_report_shows_the_gates_checks_as_a_table_in_the_projects_language(core: Core, db_engine: Engine) -> None:
    world = build(db_engine)
    decision = decide(
        GateInputs(overall_mean=3.0, base_overall_mean=2.5, win_rate=0.7, invalid_rate=0.0),
        GateConfig(max_forgetting_drop=None),
    )
    with session_scope(db_engine) as session:
        evaluation = session.exec(select(Evaluation).where(Evaluation.run_id == world.run_id)).one()
        evaluation.scores = {**evaluation.scores, "gate": decision.to_dict()}
    report = core.perform(ShowReport(run=world.run_id), ALICE)[0]
    (table,) = report.tables
    assert table.columns == ["check", "value", "threshold", "status", "why"]
    rows = {row[0]: row[1:] for row in table.rows}
    assert rows["overall"][:3] == ["3", ">= 4", "failed"] and "below" in rows["overall"][3]
    assert rows["win_rate"][2] == "passed" and rows["forgetting"][:3] == ["—", "—", "off"]
    assert table.aligned().splitlines()[0].split() == table.columns  # a chat shows it aligned
    speaking(db_engine, "zh")
    rows = {row[0]: row for row in core.perform(ShowReport(run=world.run_id), ALICE)[0].tables[0].rows}
    assert (rows["overall"][3], rows["win_rate"][3], rows["forgetting"][3]) == ("未通过", "通过", "未启用")


# --- the servers -----------------------------------------------------------------------------------------------


def test_a_chat_asks_for_the_deployments_and_a_sync_in_words() -> None:
    assert parse("deployments", projects=["shop"]) == ListDeployments()
    assert parse("deployments shop", projects=["shop"]) == ListDeployments(project="shop")
    assert parse("sync shop", projects=["shop"]) == SyncServers(project="shop")
    with pytest.raises(UserError) as bare:
        parse("sync", "zh", ["shop"])
    assert str(bare.value) == "用法：sync <project>"
    for action in (ListDeployments(project="shop"), SyncServers(project="shop")):
        assert parse(spell(action), projects=["shop"]) == action


def test_syncing_the_servers_is_a_projects_approvers_from_a_chat_and_every_project_the_operators(
    core: Core, db_engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    build(db_engine)
    with session_scope(db_engine) as session:
        session.exec(select(Project).where(Project.name == "shop")).one().approvers = ["slack:U0ALICE"]
    everything = str(refusal(core, SyncServers(), ALICE))
    assert everything.startswith("Syncing every project's model servers is an operator's action, on the terminal")
    by_hand = SyncServers(project="shop", servers=["http://169.254.169.254"])  # servers a chat names: never
    assert str(refusal(core, by_hand, ALICE)).startswith("Syncing every project's model servers")
    not_approver = str(refusal(core, SyncServers(project="shop"), WANG))
    assert not_approver.startswith("王经理 may not approve or roll back deployments in shop")
    # An approver, and the operator, reach the servers: here none is configured, which the engine says.
    monkeypatch.delenv("TUNELOOP_VLLM_URLS", raising=False)
    get_settings.cache_clear()
    for action, actor in (
        (SyncServers(project="shop"), ALICE),
        (SyncServers(project="shop"), OPS),
        (SyncServers(), OPS),
    ):
        assert str(refusal(core, action, actor)).startswith("no vLLM servers to deploy to")
    assert [action for action, _, _ in refusals(db_engine)] == ["refused.sync_servers"] * 3
