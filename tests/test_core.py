"""The application core every face calls (bot/core), tested directly on SQLite and PostgreSQL: the command grammar
with its usage lines and suggestions, both languages, who may do what (lists of platform identities and groups,
the four-eyes rule, the approvers guarding who does what), refusals in plain words and kept on record, reviews and
the next iteration queued on a real Redis, approval and deployment, buttons that carry only a short key, and
actions carried out from inside a running event loop as the chat faces will."""

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import redis
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from bot.core.actions import (
    Approve,
    Cancel,
    ConfigureProject,
    DeployUnapproved,
    Help,
    NewProject,
    RequestApproval,
    Retrain,
    Retry,
    Review,
    SetLanguage,
    ShowHistory,
    ShowReview,
    ShowReviewSummary,
    StartRun,
    Status,
    load_action,
)
from bot.core.catalogue import CATALOGUE, placeholders
from bot.core.errors import UserError
from bot.core.grammar import parse, parse_dataset, parse_weights, spell
from bot.core.identity import Actor
from bot.core.perform import Core
from engine.data.formats import load_file
from engine.data.versions import Entry
from engine.settings import get_settings
from engine.train.sft import TrainingError, train
from engine.train.tiny import build_tiny_model
from engine.work.jobs import queue_name
from storage.db import session_scope
from storage.models import AuditEvent, Evaluation, Project, Run
from tests.test_reviews import build
from tests.test_runs import FakeDeploy
from tests.training_data import add_dataset

ALICE = Actor("slack", "U0ALICE", "Alice")
BOB = Actor("slack", "U0BOB", "Bob")
WANG = Actor("telegram", "42", "王经理", groups=("-1001",))
OPS = Actor("cli", "ops")


LF = Path(__file__).with_name("llamafactory")
CORE_REDIS_DB = 12  # a logical database of these tests' own: arq job ids such as 2:train:1 are global in one


@contextmanager
def core_on(engine: Engine, redis_url: str, database: int, monkeypatch: pytest.MonkeyPatch) -> Iterator[Core]:
    """The core on `engine`, its queues in Redis database `database` (emptied before and after)."""
    url = redis_url.rsplit("/", 1)[0] + f"/{database}"
    client = redis.Redis.from_url(url)
    client.flushdb()
    monkeypatch.setenv("TUNELOOP_REDIS_URL", url)
    get_settings.cache_clear()
    yield Core(engine, get_settings())
    client.flushdb()
    client.close()
    get_settings.cache_clear()


@pytest.fixture
def core(db_engine: Engine, redis_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Core]:
    """The core on the test database, its queues in a Redis database of this module's own."""
    with core_on(db_engine, redis_url, CORE_REDIS_DB, monkeypatch) as core:
        yield core


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture
def deploys(monkeypatch: pytest.MonkeyPatch) -> FakeDeploy:
    """Deployment stands in: an approval's (engine.loop.runs) and the operator's way around it (engine.serve.deploy)."""
    fake = FakeDeploy()
    monkeypatch.setattr("engine.loop.runs.deploy_run", fake)
    monkeypatch.setattr("engine.serve.deploy.deploy_run", fake)
    return fake


def refusals(engine: Engine) -> list[tuple[str, str, str]]:
    with Session(engine) as session:
        rows = session.exec(select(AuditEvent).where(col(AuditEvent.action).startswith("refused."))).all()
        return [(row.action, row.actor, (row.detail or {}).get("reason", "")) for row in rows]


# --- the grammar ---------------------------------------------------------------------------------------------


def test_the_grammar_reads_every_command_as_its_action() -> None:
    projects = ["shop"]
    assert parse("help review", projects=projects) == Help(topic="review")
    assert parse("/status 7", projects=projects) == Status(run=7)
    assert parse("new legal model=/models/qwen lang=zh", projects=projects) == NewProject(
        project="legal", base_model="/models/qwen", language="zh"
    )
    started = parse("shop data=faq:3 epochs=2 lr=1e-4 rank=8 split test_size=50", projects=projects)
    assert started == StartRun(
        project="shop",
        data="faq:3",
        options={"num_train_epochs": 2, "learning_rate": 1e-4, "lora_rank": 8},
        split=True,
        test_size=50,
    )
    # Phones type curly quotes; the task keeps its Chinese whole.
    synth = parse("shop synth “退货和换货的客服对话” n=40", projects=projects)
    assert (synth.task, synth.synthesize, synth.filter, synth.split) == ("退货和换货的客服对话", 40, True, True)
    assert parse("review 3 fix #17 您好，请提供订单号。", projects=projects) == Review(
        run=3, judgement=17, verdict="fix", answer="您好，请提供订单号。"
    )
    assert parse("review 3 删除 18 问题本身有误", projects=projects) == Review(
        run=3, judgement=18, verdict="drop", comment="问题本身有误"
    )
    assert parse('approve 4 override="tiny model; testing"', projects=projects) == Approve(
        run=4, override="tiny model; testing"
    )
    assert parse("deploy 4", projects=projects) == Approve(run=4)
    configured = parse("project shop approvers=slack:U1,telegram:-1001 four_eyes=yes", projects=projects)
    assert configured == ConfigureProject(project="shop", approvers=["slack:U1", "telegram:-1001"], four_eyes=True)
    assert parse("project shop reviewers=-", projects=projects) == ConfigureProject(project="shop", reviewers=[])


@pytest.mark.parametrize(
    ("text", "language", "expected"),
    [
        ("stauts 3", "en", "'stauts' is neither a command nor a project. Did you mean 'status'? Usage: help"),
        ("shpo epochs=2", "en", "Did you mean 'shop'?"),
        ("shop epoch=2", "en", "Unknown option 'epoch'. Did you mean 'epochs'?"),
        ("shop lora_rnak=8", "en", "Did you mean 'lora_rank'?"),
        ("shop fliter", "en", "Did you mean 'filter'?"),
        ("cancel", "en", "Usage: cancel <run>"),
        ("cancel seven", "en", "'seven' is not a run number. Usage: cancel <run>"),
        ("review 3 fx 17", "en", "Did you mean 'fix'?"),
        ("review 3 fix 17", "en", "A fix needs the corrected answer: review 3 fix 17 <answer>."),
        ('shop synth "退货', "en", "A quote is not closed"),
        ("lang fr", "en", "Languages: en or zh, not 'fr'."),
        ("stauts 3", "zh", "'stauts' 既不是命令也不是项目。 你是不是想输入 'status'？"),
        ("cancel seven", "zh", "'seven' 不是有效的运行编号。 用法：cancel <run>"),
        ("shop epoch=2", "zh", "未知选项 'epoch'。 你是不是想输入 'epochs'？"),
    ],
)
def test_grammar_mistakes_say_the_usage_and_the_closest_word(text: str, language: str, expected: str) -> None:
    with pytest.raises(UserError) as refused:
        parse(text, language, projects=["shop"])
    assert expected in str(refused.value)


def test_a_button_typed_as_text_is_the_same_action() -> None:
    for action in (
        Review(run=3, judgement=17, verdict="keep"),
        Review(run=3, judgement=17, verdict="fix", answer="请提供 订单号"),
        Approve(run=4, override="a tiny model"),
        Cancel(run=5),
        ShowReviewSummary(run=3),
        Retrain(run=3),
        RequestApproval(run=3),
    ):
        assert parse(spell(action), projects=[]) == action


def test_dataset_selectors_and_weighted_lists() -> None:
    assert parse_dataset("faq:2") == ("faq", 2) and parse_dataset("latest") == ("main", None)
    assert parse_weights("退货:3，换货：2;物流") == {"退货": 3.0, "换货": 2.0, "物流": 1.0}
    with pytest.raises(UserError, match="needs a number after the colon"):
        parse_weights("退货:x")
    with pytest.raises(UserError, match="positive weight"):
        parse_weights("退货:-1")
    with pytest.raises(UserError, match="is not a dataset"):
        parse_dataset("a b")


def test_every_sentence_exists_in_both_languages_with_the_same_blanks() -> None:
    for key, (english, chinese) in CATALOGUE.items():
        assert english.strip() and chinese.strip(), key
        assert placeholders(english) == placeholders(chinese), key
        assert not key.endswith(".one") or key.removesuffix(".one") in CATALOGUE, key
        assert english != chinese or not any("\u4e00" <= c <= "\u9fff" for c in english), key


# --- who may do what ----------------------------------------------------------------------------------------


def test_projects_are_created_and_their_people_are_the_approvers_to_change(core: Core, db_engine: Engine) -> None:
    created = core.perform(NewProject(project="legal", base_model="/models/qwen", language="zh"), ALICE)
    assert created[0].title == "已创建项目 legal。"  # the project speaks Chinese from its first message
    with pytest.raises(UserError, match="legal 已存在"):
        core.perform(NewProject(project="legal"), BOB)
    # While nobody approves, anyone sets the people; then only approvers may change them.
    core.perform(ConfigureProject(project="legal", approvers=["slack:U0ALICE"], reviewers=["telegram:-1001"]), BOB)
    with pytest.raises(UserError) as refused:
        core.perform(ConfigureProject(project="legal", approvers=["slack:U0BOB"]), BOB)
    assert str(refused.value) == "Bob 不能在 legal 中修改成员设置：审批人为 slack:U0ALICE。"
    assert refusals(db_engine) == [("refused.configure_project", "slack:U0BOB", str(refused.value))]
    # The language of the message is the person's own once they choose one.
    core.perform(SetLanguage(language="en"), BOB)
    with pytest.raises(UserError, match="Bob may not change who does what in legal: its approvers are slack:U0ALICE"):
        core.perform(ConfigureProject(project="legal", approvers=["slack:U0BOB"]), BOB)
    core.perform(ConfigureProject(project="legal", approvers=["slack:U0ALICE", "slack:U0BOB"]), ALICE)
    with Session(db_engine) as session:
        project = session.exec(select(Project).where(Project.name == "legal")).one()
        assert project.approvers == ["slack:U0ALICE", "slack:U0BOB"] and project.reviewers == ["telegram:-1001"]


def test_approval_follows_the_approvers_the_groups_and_the_four_eyes_rule(
    core: Core, db_engine: Engine, deploys: FakeDeploy
) -> None:
    world = build(db_engine)
    with session_scope(db_engine) as session:
        run = session.get(Run, world.run_id)
        run.requested_by = "telegram:42"
        evaluation = session.exec(select(Evaluation).where(Evaluation.run_id == run.id)).one()
        evaluation.gate_passed, evaluation.gate_reasons = True, []
        project = session.get(Project, run.project_id)
        project.approvers = ["telegram:-1001"]  # a Telegram group
        project.settings = {"approver_not_requester": True}
    # Not an approver: refused, in a sentence, on record, and the run has not moved.
    with pytest.raises(UserError, match="Alice may not approve or roll back deployments in shop"):
        core.perform(Approve(run=world.run_id), ALICE)
    # In the approvers' group, but the run's own requester: the four-eyes rule refuses.
    with pytest.raises(UserError, match=r"telegram:42 requested run \d+, and shop asks for someone else"):
        core.perform(Approve(run=world.run_id), WANG)
    assert [action for action, _, _ in refusals(db_engine)] == ["refused.approve"]
    with Session(db_engine) as session:
        assert session.get(Run, world.run_id).state == "reviewing"
    colleague = Actor("telegram", "77", "李工", groups=("-1001",))
    messages = core.perform(Approve(run=world.run_id), colleague)
    assert messages[0].title == f"Run {world.run_id} approved by 李工; deploying."
    assert messages[1].title == f"shop now serves shop-v1 (run {world.run_id})."
    assert deploys.calls == [(world.run_id, "telegram:77")]
    with pytest.raises(UserError, match=f"run {world.run_id} is deployed"):
        core.perform(Approve(run=world.run_id), colleague)  # a second press deploys nothing


def test_a_failed_gate_needs_an_approvers_reason_and_deploying_unapproved_is_the_operators(
    core: Core, db_engine: Engine, deploys: FakeDeploy
) -> None:
    world = build(db_engine)  # its gate failed
    with pytest.raises(UserError, match="failed its gate"):
        core.perform(RequestApproval(run=world.run_id), ALICE)
    card = core.perform(Status(run=world.run_id), ALICE)[0]
    override = next(button for button in card.buttons if button.action == Approve(run=world.run_id))
    assert override.asks_for_text and override.style == "danger"  # a reason first, then the action
    with pytest.raises(UserError, match="failed its gate"):
        core.perform(Approve(run=world.run_id), ALICE)
    # The operator's way around approval is refused from chat, and audited on the terminal.
    with pytest.raises(UserError, match="an operator's action, on the terminal"):
        core.perform(DeployUnapproved(run=world.run_id, reason="hotfix"), ALICE)
    with pytest.raises(UserError, match="needs a reason"):
        core.perform(DeployUnapproved(run=world.run_id, reason="  "), OPS)
    done = core.perform(DeployUnapproved(run=world.run_id, reason="hotfix for a wrong price"), OPS)
    assert done[0].lines[0] == f"Run {world.run_id} deployed by ops without approval: hotfix for a wrong price."
    with Session(db_engine) as session:
        audited = session.exec(select(AuditEvent).where(AuditEvent.action == "run.deploy_unapproved")).one()
        assert audited.actor == "ops" and audited.detail["reason"] == "hotfix for a wrong price"
    approved = core.perform(Approve(run=world.run_id, override="the tiny model cannot pass; demo"), ALICE)
    assert "approved by Alice" in approved[0].title


# --- reviews, the next iteration, runs ---------------------------------------------------------------------


def test_reviews_from_the_cards_and_the_next_iteration_on_the_queue(core: Core, db_engine: Engine) -> None:
    world = build(db_engine, reviewers=["slack:U0ALICE"])
    cards = core.perform(ShowReview(run=world.run_id), ALICE)
    assert cards[0].title == f"Run {world.run_id}: the 3 weakest samples to review"
    scores = [card.title.rsplit(" ", 1)[-1] for card in cards[1:]]
    assert scores == ["2.0", "3.0", "4.0"]  # weakest first
    first = cards[1]
    assert dict(first.fields)["question"] == "耳机坏了能退吗？" and dict(first.fields)["sub-scenario"] == "退货"
    keep, fix, _ = first.buttons
    assert fix.asks_for_text == f"Reply with the corrected answer for sample #{world.judgement_ids[0]}."
    with pytest.raises(UserError, match="Bob may not review samples in shop: its reviewers are slack:U0ALICE"):
        core.perform(keep.action, BOB)
    with pytest.raises(UserError, match="A fix needs the corrected answer"):
        core.perform(fix.action, ALICE)
    with pytest.raises(UserError, match=f"Sample #999 was not judged in run {world.run_id}"):
        core.perform(Review(run=world.run_id, judgement=999, verdict="keep"), ALICE)
    fixed = fix.action.model_copy(update={"answer": "可以，签收后7天内支持退货。"})
    assert core.perform(fixed, ALICE)[0].title == f"Alice marked sample #{world.judgement_ids[0]}: fix."
    core.perform(cards[3].buttons[2].action, ALICE)  # drop the third
    summary = core.perform(ShowReviewSummary(run=world.run_id), ALICE)[0]
    assert summary.lines == [
        "2 reviewed: 0 kept, 1 fixed, 1 dropped.",
        "Retrain would: improve 1 reference, remove 1 sample.",
    ]
    assert [(button.label, button.action) for button in summary.buttons] == [
        ("Retrain with 2 changes", Retrain(run=world.run_id))
    ]

    started = core.perform(Retrain(run=world.run_id), ALICE)
    next_run = started[0].run_id
    assert started[0].title.startswith("Iteration 2 started as run")
    queued = redis.Redis.from_url(core.settings.redis_url).zrange(queue_name("gpu"), 0, -1)
    assert queued == [f"{next_run}:train:1".encode()]
    again = core.perform(Retrain(run=world.run_id), ALICE)  # a second press starts nothing new
    assert again[0].title == f"Run {next_run} already continues run {world.run_id}."
    assert redis.Redis.from_url(core.settings.redis_url).zcard(queue_name("gpu")) == 1


def test_cancel_is_for_the_requester_or_an_approver_and_history_reads_back(core: Core, db_engine: Engine) -> None:
    world = build(db_engine)
    with session_scope(db_engine) as session:
        run = session.get(Run, world.run_id)
        run.requested_by = "slack:U0ALICE"
        session.get(Project, run.project_id).approvers = ["cli:nobody"]
    with pytest.raises(UserError, match=f"Bob may not cancel or retry run {world.run_id}"):
        core.perform(Cancel(run=world.run_id), BOB)
    assert core.perform(Cancel(run=world.run_id), ALICE)[0].title == f"Run {world.run_id} cancelled by Alice."
    history = core.perform(ShowHistory(run=world.run_id), ALICE)[0]
    assert any("reviewing → cancelled by slack:U0ALICE on slack" in line for line in history.lines)
    with pytest.raises(UserError) as missing:
        core.perform(Status(run=999), ALICE)
    assert missing.value.not_found and str(missing.value) == "no run 999"


def test_buttons_carry_a_short_key_for_their_stored_action(core: Core, db_engine: Engine) -> None:
    world = build(db_engine)
    cards = core.store_buttons(core.perform(ShowReview(run=world.run_id), ALICE))
    buttons = [button for card in cards for button in card.buttons]
    assert len(buttons) == 9 and len({button.key for button in buttons}) == 9
    for button in buttons:
        assert button.key and len(button.key.encode()) <= 64  # Telegram's callback data
        assert core.action_for_key(button.key) == button.action
    with pytest.raises(UserError):
        core.action_for_key("forged")
    assert load_action({"kind": "cancel", "run": 3}) == Cancel(run=3)


def test_actions_run_off_a_face_event_loop(core: Core, db_engine: Engine) -> None:
    """A chat face awaits actions from inside its event loop; queue work there must not need a loop of its own."""
    world = build(db_engine)
    with session_scope(db_engine) as session:
        project = session.get(Project, session.get(Run, world.run_id).project_id)
        project.base_model = "/models/tiny"

    async def face() -> list:
        core.perform(Review(run=world.run_id, judgement=world.judgement_ids[1], verdict="drop"), ALICE)
        return await core.perform_async(Retrain(run=world.run_id), ALICE)

    started = asyncio.run(face())
    assert started[0].title.startswith("Iteration 2 started")


# --- the terminal face over the core --------------------------------------------------------------------------


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_the_terminal_does_what_a_chat_user_does(
    core: Core, db_engine: Engine, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from bot.cli import app

    monkeypatch.setenv("TUNELOOP_DATABASE_URL", db_url)
    get_settings.cache_clear()
    world = build(db_engine)
    runner = CliRunner()

    def tuneloop(*args: str) -> tuple[int, str]:
        result = runner.invoke(app, list(args))
        return result.exit_code, result.output

    code, out = tuneloop(
        "project", "set", "shop", "--reviewers", "李工,slack:U0LI", "--approvers", "王经理", "--by", "王经理"
    )
    assert code == 0 and "reviewers: 李工, slack:U0LI" in out and "approvers: 王经理" in out, out
    code, out = tuneloop("project", "set", "shop", "--approvers", "mallory", "--by", "mallory")
    assert code == 2 and "mallory may not change who does what in shop: its approvers are 王经理" in out

    code, out = tuneloop("review", str(world.run_id))
    assert code == 0 and f"Run {world.run_id}: the 3 weakest samples to review" in out
    assert f"tuneloop chat 'review {world.run_id} keep {world.judgement_ids[0]}'" in out  # the buttons, typed
    first, second = world.judgement_ids[:2]
    code, out = tuneloop(
        "review", str(world.run_id), "--fix", str(first), "--answer", "可以退，7天内。", "--by", "李工"
    )
    assert code == 0 and f"李工 marked sample #{first}: fix." in out
    code, out = tuneloop("review", str(world.run_id), "--fix", str(second), "--by", "李工")
    assert code == 2 and "A fix needs the corrected answer" in out
    code, out = tuneloop("review", str(world.run_id), "--keep", str(second), "--by", "someone")
    assert code == 2 and "someone may not review samples in shop" in out
    # The chat grammar in the terminal, in Chinese once 李工 asks for it.
    code, out = tuneloop("chat", "lang zh", "--by", "李工")
    assert code == 0 and "之后将用中文回复你。" in out
    code, out = tuneloop("chat", f"review {world.run_id} drop {second} 问题本身有误", "--by", "李工")
    assert code == 0 and f"李工 已将样本 #{second} 标记为：删除。" in out
    code, out = tuneloop("chat", "stauts", "--by", "李工")
    assert code == 2 and "你是不是想输入 'status'？" in out
    code, out = tuneloop("review", str(world.run_id), "--summary", "--by", "李工")
    assert code == 0 and "已审核 2 个：保留 0，修正 1，删除 1。" in out

    code, out = tuneloop("retrain", str(world.run_id), "--by", "李工")
    assert code == 0 and "第 2 轮已开始" in out, out
    with Session(db_engine) as session:
        following = session.exec(select(Run).where(Run.parent_run_id == world.run_id)).one()
        assert (following.state, following.requested_by, following.platform) == ("queued", "李工", "cli")
    assert redis.Redis.from_url(core.settings.redis_url).zrange(queue_name("gpu"), 0, -1) == [
        f"{following.id}:train:1".encode()
    ]
    # A LLaMA-Factory YAML: what it asks of LLaMA-Factory's own I/O is said to be ignored, in the thread.
    lf_recipe = Path(__file__).with_name("llamafactory") / "qwen3_lora_sft.yaml"
    code, out = tuneloop("submit", "--project", "shop", "--recipe", str(lf_recipe), "--base-model", "m", "--by", "李工")
    assert code == 0 and "配方 qwen3_lora_sft.yaml：dataset: ignored: the run trains on the dataset version" in out
    lf_recipe = lf_recipe.with_name("qwen3_lora_pretrain.yaml")
    code, out = tuneloop("submit", "--project", "shop", "--recipe", str(lf_recipe), "--by", "李工")
    assert code == 2 and "stage: pt (pretraining on plain text) is not supported" in out


def test_a_start_refused_for_its_data_or_on_the_worker_uses_no_iteration(
    core: Core, db_engine: Engine, tiny: Path, tmp_path: Path
) -> None:
    # Refused in the core, with the same check `tuneloop train` makes: no run is created.
    kto = [sample for _, sample in load_file(LF / "kto_en_demo.json").samples]
    bad = add_dataset([Entry(s) for s in kto if s.label is False], engine=db_engine)
    model = {"model_name_or_path": str(tiny)}
    with pytest.raises(UserError, match=f"every training sample of dataset version {bad} is labelled bad"):
        core.perform(StartRun(project="shop", data=str(bad), options=model), OPS)
    with Session(db_engine) as session:
        assert session.exec(select(Run)).all() == []
    # Refused on the worker, where the model's tokenizer shows that the template drops the tool definitions: the
    # run exists by then, so it gives its iteration number back.
    glaive = load_file(LF / "dataset_info.json", entry="glaive_toolcall_zh_demo").samples
    tools = add_dataset([Entry(s) for _, s in glaive], engine=db_engine)
    plain = tmp_path / "plain.jinja"
    plain.write_text("{% for m in messages %}{{ m['content'] }}<|im_end|>{% endfor %}", encoding="utf-8")
    card = core.perform(StartRun(project="shop", data=str(tools), options={**model, "template": str(plain)}), OPS)[-1]
    assert card.title == f"Run {card.run_id}: shop, iteration 1"
    with session_scope(db_engine) as session, pytest.raises(TrainingError, match="does not write tool definitions"):
        train(session, "shop", None, None, run_id=card.run_id)  # what the gpu worker's train stage runs
    refused = core.perform(Status(run=card.run_id), OPS)[0]
    assert refused.title == f"Run {card.run_id}: shop, refused at its start (no iteration)"
    following = core.perform(StartRun(project="shop", data=str(tools), options={**model, "template": "qwen"}), OPS)
    assert following[-1].title == f"Run {following[-1].run_id}: shop, iteration 1"
    # Retried once its cause is fixed, the refused run starts after all, and counts again.
    core.perform(Retry(run=card.run_id), OPS)
    with Session(db_engine) as session:
        assert session.get(Run, card.run_id).iteration == 2
    core.perform(SetLanguage(language="zh"), OPS)
    assert core.perform(Status(run=card.run_id), OPS)[0].title == f"运行 {card.run_id}：shop，第 2 轮"


def test_a_project_name_must_be_a_slug(core: Core) -> None:
    for name in ("shop-v1", "../x", "Shop", "a" * 65):
        with pytest.raises(UserError, match="cannot name a project: a project name is 1 to 64 lowercase letters"):
            core.perform(NewProject(project=name), ALICE)
    with pytest.raises(UserError, match="is neither a command nor a project"):
        core.parse("shop-v1 epochs=2", ALICE)  # no project by that name exists, and none can
