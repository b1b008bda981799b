"""The Telegram face driven as Telegram drives it: aiogram's real Dispatcher long-polling tests/telegram_server.py
(a local Bot API server), updates fed the way Telegram hands them over, and aiogram's real client sending what the
bot says. Commands, documents, force-reply answers and button presses go through the core to the database and the
queue (real Redis, logical database 10)."""

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import pytest
import redis
from aiogram.exceptions import TelegramUnauthorizedError
from sqlalchemy.engine import Engine
from sqlmodel import Session, select
from typer.testing import CliRunner

from bot.cli import app
from bot.core.deliveries import Deliveries
from bot.core.messages import Message, Table
from bot.core.outbox import Outbox, Undeliverable
from bot.core.perform import Core
from bot.telegram.app import TelegramFace
from bot.telegram.memory import Memory
from bot.telegram.sender import TelegramSender
from bot.telegram.serve import serve, telegram_bot
from engine.events import Event
from engine.events.stream import stream_sink
from engine.serve.local import free_port
from storage.db import session_scope
from storage.models import Conversation, DatasetVersion, Judgement, Project, Review, Run
from tests.telegram_server import TOKEN, TelegramServer, group, person, private
from tests.test_core import core_on
from tests.test_reviews import build
from tests.test_runs import add_run, deploys  # noqa: F401  (a fixture)
from tests.waiting import listening, until

ROOT = Path(__file__).resolve().parent.parent
SECRET = "s3cret_token"
TELEGRAM_REDIS_DB = 10  # these tests' own: arq job ids and delivery keys are global in a Redis database
GROUP = group(-1001234567890)
ALICE, MALLORY = person(4242, "alice"), person(6666, "mallory")
SAMPLE = {
    "messages": [
        {"role": "user", "content": "我的订单 <b>在哪</b>？"},
        {"role": "assistant", "content": "请把订单号发给我 & 我来查。"},
    ]
}


@pytest.fixture
def telegram() -> Iterator[TelegramServer]:
    with TelegramServer() as server:
        yield server


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    """SQLite only: what the face stores goes through the core, whose tests run on PostgreSQL too."""
    return f"sqlite:///{tmp_path / 'test.db'}"


@pytest.fixture
def core(db_engine: Engine, redis_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Core]:
    with core_on(db_engine, redis_url, TELEGRAM_REDIS_DB, monkeypatch) as core:
        yield core


@asynccontextmanager
async def running(core: Core, telegram: TelegramServer) -> AsyncIterator[TelegramFace]:
    """The face with aiogram's Dispatcher polling the local server; on leaving, every update is taken and the work
    it handed off is done."""
    bot = telegram_bot(telegram.token, telegram.url)
    memory = Memory.on(core.settings.redis_url)
    deliveries = Deliveries.on(core.settings.redis_url, "telegram")
    face = TelegramFace(core, bot, Outbox(TelegramSender(bot, memory), pace_s=0), deliveries, memory)
    dispatcher = face.dispatcher()
    polling = asyncio.create_task(
        dispatcher.start_polling(bot, polling_timeout=1, handle_signals=False, close_bot_session=False)
    )
    try:
        yield face
        await settled(telegram, face)
    finally:
        await dispatcher.stop_polling()
        await polling
        await bot.session.close()
        await deliveries.close()
        await memory.close()


async def settled(telegram: TelegramServer, face: TelegramFace) -> None:
    """Every update taken (confirmed by the next getUpdates) and the work it started done."""
    await until("the updates to be taken", lambda: telegram.pending() == 0)
    for _ in range(3):  # a handler hands its work off just after the update is taken
        await asyncio.sleep(0.05)
        await face.idle()


def shown(sent: object) -> str:
    return sent.text  # type: ignore[attr-defined]


def reviews(engine: Engine) -> list[tuple[int, str, str | None, str]]:
    with Session(engine) as session:
        rows = session.exec(select(Review).order_by(Review.id)).all()
        return [(row.judgement_id, row.verdict, row.corrected_answer, row.reviewer) for row in rows]


def review_cards(core: Core, telegram: TelegramServer, run_id: int) -> list:
    async def scenario() -> None:
        async with running(core, telegram):
            telegram.message(GROUP, ALICE, f"/finetune review {run_id}")

    asyncio.run(scenario())
    return [sent for sent in telegram.sent if {b["text"] for b in sent.buttons} == {"Keep", "Fix", "Drop"}]


# --- commands -----------------------------------------------------------------------------------------------------


def test_a_command_in_a_group_posts_the_runs_card_and_a_mistake_is_answered_in_reply(
    core: Core, telegram: TelegramServer
) -> None:
    run_id = build(core.engine).run_id

    async def scenario() -> dict:
        async with running(core, telegram):
            telegram.message(GROUP, ALICE, f"/finetune@tuneloop_bot status {run_id}")
            return telegram.message(GROUP, ALICE, "/finetune stauts 3")

    mistake = asyncio.run(scenario())
    (card,) = [sent for sent in telegram.sent if sent.text.startswith("Run")]  # the two are handled side by side
    (told,) = [sent for sent in telegram.sent if sent is not card]
    assert card.text.startswith(f"Run {run_id}") and card.message["entities"][0]["type"] == "bold"
    assert card.reply_to is None and {b["text"] for b in card.buttons} >= {"Review samples", "Retrain"}
    assert all(len(b["callback_data"].encode()) <= 64 for b in card.buttons)
    assert told.reply_to == mistake["message_id"] and "Did you mean 'status'?" in told.text
    with Session(core.engine) as session:
        (conversation,) = session.exec(select(Conversation)).all()
        assert (conversation.platform, conversation.channel) == ("telegram", str(GROUP["id"]))
        assert conversation.card == conversation.thread == str(card.id)


def test_sample_text_shows_as_typed_and_never_becomes_markup(core: Core, telegram: TelegramServer) -> None:
    world = build(core.engine)
    with session_scope(core.engine) as session:
        judgement = session.get(Judgement, world.judgement_ids[0])
        judgement.question = '<a href="https://evil.example">urgent</a> & <b>订单</b>'
        session.add(judgement)

    cards = review_cards(core, telegram, world.run_id)
    assert '<a href="https://evil.example">urgent</a> & <b>订单</b>' in cards[0].text
    entities = [e for sent in telegram.sent for e in sent.message.get("entities", [])]
    assert {entity["type"] for entity in entities} == {"bold"}  # only the bot's own titles and labels


# --- buttons --------------------------------------------------------------------------------------------------------


def test_a_press_is_answered_at_once_done_once_and_its_buttons_replaced_by_what_was_done(
    core: Core, telegram: TelegramServer
) -> None:
    world = build(core.engine)
    first = review_cards(core, telegram, world.run_id)[0]

    async def scenario() -> str:
        async with running(core, telegram):
            query = telegram.press(first, "Keep", ALICE)
        return query

    query = asyncio.run(scenario())
    assert telegram.answered_within(query) < 1.0
    assert reviews(core.engine) == [(world.judgement_ids[0], "keep", None, "telegram:4242")]
    assert first.buttons == []  # the keyboard went with the edit
    assert first.text.splitlines()[-1] == f"alice marked sample #{world.judgement_ids[0]}: keep."
    assert not_modified_refusals(telegram) == []


def not_modified_refusals(telegram: TelegramServer) -> list:
    return [r for r in telegram.refused if "not modified" in r[2]]


def test_fix_asks_with_a_force_reply_and_the_reply_is_the_answer_once_even_when_handed_over_again(
    core: Core, telegram: TelegramServer
) -> None:
    world = build(core.engine)
    first = review_cards(core, telegram, world.run_id)[0]

    async def scenario() -> None:
        async with running(core, telegram) as face:
            telegram.press(first, "Fix", ALICE)
            await settled(telegram, face)
            prompt = telegram.sent[-1]
            assert prompt.markup["force_reply"] is True
            assert f"#{world.judgement_ids[0]}" in prompt.text  # the core's own prompt
            telegram.message(GROUP, ALICE, "请把 <订单号> 发给我。", reply_to=prompt)
        async with running(core, telegram):  # the next bot, given the answer again (its offset was not confirmed)
            telegram.hand_over_again()

    asyncio.run(scenario())
    assert reviews(core.engine) == [(world.judgement_ids[0], "fix", "请把 <订单号> 发给我。", "telegram:4242")]
    told = f"alice marked sample #{world.judgement_ids[0]}: fix."
    assert [s.text for s in telegram.sent].count(told) == 1
    assert first.buttons == []  # replaced once the answer came


@pytest.mark.usefixtures("deploys")  # deployment stands in: "shop now serves shop-v1"
def test_approve_and_deploy_asks_to_confirm_first_and_cancel_does_nothing(core: Core, telegram: TelegramServer) -> None:
    run_id = add_run(core.engine, "awaiting_approval")

    async def scenario() -> None:
        async with running(core, telegram) as face:
            telegram.message(GROUP, ALICE, f"/finetune status {run_id}")
            await settled(telegram, face)
            (card,) = telegram.sent
            telegram.press(card, "Approve & deploy", ALICE)
            await settled(telegram, face)
            asked = telegram.sent[-1]
            assert asked.text == f"Deploy run {run_id} of shop to production?"
            telegram.press(asked, "Cancel", ALICE)
            await settled(telegram, face)
            assert asked.buttons == [] and run_state(core, run_id) == "awaiting_approval"
            telegram.press(card, "Approve & deploy", ALICE)
            await settled(telegram, face)
            telegram.press(telegram.sent[-1], "Approve & deploy", ALICE)

    asyncio.run(scenario())
    assert run_state(core, run_id) == "deployed"
    assert any("shop now serves shop-v1" in sent.text for sent in telegram.sent)
    assert len(telegram.answers) == 4  # every press answered


def conversation(core: Core, run_id: int) -> Conversation | None:
    with Session(core.engine) as session:
        return session.exec(select(Conversation).where(Conversation.run_id == run_id)).first()


def run_state(core: Core, run_id: int) -> str:
    with Session(core.engine) as session:
        return session.get(Run, run_id).state


@pytest.mark.usefixtures("deploys")
def test_deploying_over_a_failed_gate_takes_an_approvers_reason(core: Core, telegram: TelegramServer) -> None:
    world = build(core.engine)  # its gate failed

    async def scenario() -> None:
        async with running(core, telegram) as face:
            telegram.message(GROUP, ALICE, f"/finetune status {world.run_id}")
            await settled(telegram, face)
            telegram.press(telegram.sent[0], "Approve over the gate…", ALICE)
            await settled(telegram, face)
            telegram.message(GROUP, ALICE, "tiny model; a demo", reply_to=telegram.sent[-1])

    asyncio.run(scenario())
    with Session(core.engine) as session:
        assert session.get(Run, world.run_id).gate_override_reason == "tiny model; a demo"
    assert "shop now serves shop-v1" in telegram.sent[-1].text
    assert [b["text"] for b in telegram.sent[-1].buttons] == ["Roll back"]


def test_someone_not_allowed_is_told_why_and_nothing_changes(core: Core, telegram: TelegramServer) -> None:
    world = build(core.engine, reviewers=["telegram:4242"])
    first = review_cards(core, telegram, world.run_id)[0]

    async def scenario() -> str:
        async with running(core, telegram):
            return telegram.press(first, "Drop", MALLORY)

    query = asyncio.run(scenario())
    assert query in telegram.answers
    assert reviews(core.engine) == []
    told = telegram.sent[-1]
    assert told.reply_to == first.id and "mallory" in told.text.lower() and "review" in told.text.lower()
    assert {b["text"] for b in first.buttons} == {"Keep", "Fix", "Drop"}  # kept for those who may


# --- data in --------------------------------------------------------------------------------------------------------


def shop_on_tiny(core: Core) -> None:
    build(core.engine)
    with session_scope(core.engine) as session:
        project = session.exec(select(Project).where(Project.name == "shop")).one()
        project.base_model = "/models/tiny"
        session.add(project)


def jsonl(count: int) -> bytes:
    return "".join(json.dumps(SAMPLE | {"id": n}, ensure_ascii=False) + "\n" for n in range(count)).encode()


def latest_run(core: Core) -> tuple[Run, DatasetVersion]:
    with Session(core.engine) as session:
        run = session.exec(select(Run).order_by(Run.id.desc())).first()
        return run, session.get(DatasetVersion, run.dataset_version_id)


def test_a_document_with_the_command_as_caption_starts_a_run_on_it(core: Core, telegram: TelegramServer) -> None:
    shop_on_tiny(core)
    document = telegram.add_file("orders.jsonl", jsonl(4))
    chat = private(ALICE)

    async def scenario() -> None:
        async with running(core, telegram):
            telegram.message(chat, ALICE, "/finetune shop epochs=1", document=document)

    asyncio.run(scenario())
    assert [args["file_id"] for args in telegram.called("getFile")] == [document["file_id"]]
    assert not any((core.settings.home / "uploads" / "telegram").iterdir())  # imported, then removed
    run, version = latest_run(core)
    assert run.state == "queued" and run.requested_by == "telegram:4242" and version.number == 2
    assert run.recipe["num_train_epochs"] == 1
    card = next(sent for sent in telegram.sent if sent.text.startswith(f"Run {run.id}"))
    assert any("orders.jsonl" in sent.text for sent in telegram.replies_to(chat["id"], card.id))


def test_finetune_without_a_file_asks_for_one_and_takes_the_document_sent_in_reply(
    core: Core, telegram: TelegramServer
) -> None:
    shop_on_tiny(core)

    async def scenario() -> None:
        async with running(core, telegram) as face:
            asked = telegram.message(GROUP, ALICE, "/finetune shop")
            await settled(telegram, face)
            prompt = telegram.sent[-1]
            assert prompt.reply_to == asked["message_id"] and prompt.markup["force_reply"]
            document = telegram.add_file("faq.jsonl", jsonl(3))
            telegram.message(GROUP, ALICE, "epochs=2", document=document, reply_to=prompt)

    asyncio.run(scenario())
    run, version = latest_run(core)
    assert run.state == "queued" and version.number == 2 and run.recipe["num_train_epochs"] == 2


def test_a_file_over_telegrams_download_limit_is_refused_in_plain_words(core: Core, telegram: TelegramServer) -> None:
    shop_on_tiny(core)
    document = telegram.add_file("big.jsonl", b"{}\n", size=25 * 1024 * 1024)

    async def scenario() -> dict:
        async with running(core, telegram):
            return telegram.message(GROUP, ALICE, "/finetune shop", document=document)

    asked = asyncio.run(scenario())
    (told,) = telegram.sent
    assert told.reply_to == asked["message_id"]
    assert "big.jsonl is 25.0 MB" in told.text and "up to 20 MB" in told.text
    assert telegram.called("getFile") == []
    with Session(core.engine) as session:
        assert len(session.exec(select(Run)).all()) == 1  # only the one build made


# --- posting ------------------------------------------------------------------------------------------------------


def test_sending_keeps_telegrams_limits_waits_out_flood_control_and_never_edits_without_a_change(
    telegram: TelegramServer, redis_url: str, tmp_path: Path
) -> None:
    chart, report = tmp_path / "loss.png", tmp_path / "report.html"
    chart.write_bytes(b"\x89PNG loss curve")
    report.write_text("<html>report</html>", encoding="utf-8")
    telegram.chats[GROUP["id"]] = GROUP
    client = redis.Redis.from_url(redis_url.rsplit("/", 1)[0] + f"/{TELEGRAM_REDIS_DB}")
    client.flushdb()

    async def scenario() -> tuple[float, str, str]:
        bot = telegram_bot(telegram.token, telegram.url)
        memory = Memory.on(redis_url.rsplit("/", 1)[0] + f"/{TELEGRAM_REDIS_DB}")
        outbox = Outbox(TelegramSender(bot, memory), pace_s=0)
        chat = str(GROUP["id"])
        card = await outbox.post(chat, None, Message("Run 1 · shop", lines=["queued"]))
        telegram.slow_down("sendMessage", retry_after=1)
        started = time.monotonic()
        long = Message("History", lines=[f"{n:04d} " + "步" * 90 for n in range(100)], images=[chart], files=[report])
        await outbox.post(chat, card, long)
        waited = time.monotonic() - started
        for _ in range(2):
            outbox.edit(chat, card, Message("Run 1 · shop", lines=["training"]))
            await outbox.drain()
        with pytest.raises(Undeliverable) as refused:
            await outbox.post("-100999", None, Message("hello"))
        await bot.session.close()
        await memory.close()
        return waited, card, str(refused.value)

    waited, card, refused = asyncio.run(scenario())
    client.flushdb()
    client.close()
    assert waited >= 1.0  # retry_after honoured
    thread = telegram.replies_to(GROUP["id"], int(card))
    parts = [sent for sent in thread if sent.kind == "text"]
    assert len(parts) == 3 and all(len(sent.text.encode("utf-16-le")) // 2 <= 4096 for sent in parts)
    assert "".join(sent.text for sent in parts).count("步" * 90) == 100  # split between lines, nothing lost
    (photo,) = [sent for sent in thread if sent.kind == "photo"]
    (document,) = [sent for sent in thread if sent.kind == "document"]
    assert photo.content == b"\x89PNG loss curve" and document.file_name == "report.html"
    assert len(telegram.called("editMessageText")) == 1 and telegram.sent[0].text == "Run 1 · shop\ntraining"
    assert not_modified_refusals(telegram) == []
    assert refused == "tuneloop cannot see chat -100999: add the bot to it, then try again"


def test_a_message_too_long_for_a_few_parts_goes_as_a_file(telegram: TelegramServer, redis_url: str) -> None:
    telegram.chats[GROUP["id"]] = GROUP

    async def scenario() -> None:
        bot = telegram_bot(telegram.token, telegram.url)
        memory = Memory.on(redis_url)
        await Outbox(TelegramSender(bot, memory), pace_s=0).post(
            str(GROUP["id"]), None, Message("x", lines=["y" * 20000])
        )
        await bot.session.close()
        await memory.close()

    asyncio.run(scenario())
    first, whole = telegram.sent
    assert first.kind == "text" and whole.kind == "document" and whole.content.decode().count("y") == 20000


def test_a_wrong_token_is_refused_as_telegram_refuses_it(telegram: TelegramServer) -> None:
    async def scenario() -> None:
        bot = telegram_bot("987654:not-the-token", telegram.url)
        try:
            with pytest.raises(TelegramUnauthorizedError):
                await bot.get_me()
        finally:
            await bot.session.close()

    asyncio.run(scenario())
    assert telegram.refused == [("getMe", 401, "Unauthorized")]


# --- the bot as it runs -------------------------------------------------------------------------------------------


def test_over_a_webhook_only_requests_with_the_secret_token_reach_the_bot(core: Core, telegram: TelegramServer) -> None:
    run_id = build(core.engine).run_id
    port = free_port()
    url = f"http://127.0.0.1:{port}/telegram/hook"
    command = [{"type": "bot_command", "offset": 0, "length": 9}]
    message = {"message_id": 7, "date": 0, "chat": GROUP, "from": ALICE, "text": f"/finetune status {run_id}"}
    update = {"update_id": 1, "message": message | {"entities": command}}
    telegram.chats[GROUP["id"]] = GROUP

    async def scenario() -> list[int]:
        stop = asyncio.Event()
        bot = asyncio.create_task(
            serve(
                core,
                token=telegram.token,
                api_url=telegram.url,
                webhook=url,
                secret=SECRET,
                port=port,
                stop=stop,
            )
        )
        await until("the webhook", lambda: telegram.webhook.get("url") == url and listening(port))
        statuses = []
        async with aiohttp.ClientSession() as session:
            for secret in ("guess", SECRET):
                headers = {"X-Telegram-Bot-Api-Secret-Token": secret}
                async with session.post(url, json=update, headers=headers) as answer:
                    statuses.append(answer.status)
        await until("the card", lambda: telegram.sent)
        stop.set()
        await bot
        return statuses

    assert asyncio.run(scenario()) == [401, 200]
    assert telegram.webhook["secret_token"] == SECRET
    (card,) = telegram.sent
    assert card.text.startswith(f"Run {run_id}")


def test_tuneloop_bot_telegram_polls_relays_the_runs_events_and_stops_on_sigterm(
    core: Core, telegram: TelegramServer
) -> None:
    run_id = build(core.engine).run_id
    env = os.environ | {
        "TELEGRAM_BOT_TOKEN": telegram.token,
        "TUNELOOP_TELEGRAM_API_URL": telegram.url,
        "TUNELOOP_DATABASE_URL": core.engine.url.render_as_string(hide_password=False),
        "TUNELOOP_REDIS_URL": core.settings.redis_url,
        "PYTHONPATH": str(ROOT),
    }
    bot = subprocess.Popen([sys.executable, "-m", "bot.cli", "bot", "telegram"], cwd=ROOT, env=env)
    events = stream_sink(redis.Redis.from_url(core.settings.redis_url), interval=0)
    try:

        async def scenario() -> None:
            await until("the bot to poll", lambda: telegram.called("deleteWebhook"), timeout=60)
            telegram.message(GROUP, ALICE, f"/finetune status {run_id}")
            # The card, and its conversation recorded just after it is posted: the relay's place for the run's events.
            await until("the run's conversation", lambda: conversation(core, run_id) is not None)
            events(Event("warning", "shop", {"message": "the loss went <up>"}, run=run_id))
            await until("the relayed warning", lambda: len(telegram.sent) == 2)

        asyncio.run(scenario())
        bot.send_signal(signal.SIGTERM)
        assert bot.wait(30) == 0
    finally:
        bot.kill()
    card, warning = telegram.sent
    assert (warning.reply_to, warning.text) == (card.id, f"run {run_id}: warning: the loss went <up>")


def test_tuneloop_bot_telegram_says_what_is_missing_instead_of_starting() -> None:
    runner = CliRunner()
    no_token = runner.invoke(app, ["bot", "telegram"], env={"TELEGRAM_BOT_TOKEN": "xoxb-a-slack-token"})
    plain_http = runner.invoke(
        app, ["bot", "telegram", "--webhook", "http://bot.example/hook"], env={"TELEGRAM_BOT_TOKEN": TOKEN}
    )
    assert no_token.exit_code != 0 and "TELEGRAM_BOT_TOKEN" in no_token.output
    assert plain_http.exit_code != 0 and "https://" in plain_http.output


def test_tables_and_code_show_monospaced_with_user_text_escaped(telegram: TelegramServer, redis_url: str) -> None:
    telegram.chats[GROUP["id"]] = GROUP
    table = Table(["version", "what changed"], [["v1", "导入 <b>"], ["v12", "filter"]])
    snippet = 'curl -d \'{"model": "shop"}\' <url>'

    async def scenario() -> None:
        bot = telegram_bot(telegram.token, telegram.url)
        memory = Memory.on(redis_url)
        message = Message("versions", tables=[table], code=[snippet])
        await Outbox(TelegramSender(bot, memory), pace_s=0).post(str(GROUP["id"]), None, message)
        await bot.session.close()
        await memory.close()

    asyncio.run(scenario())
    (sent,) = telegram.sent
    # Two columns padded as a terminal pads them: a Chinese character takes two cells.
    aligned = "version  what changed\nv1       导入 <b>\nv12      filter"
    assert sent.text == f"versions\n{aligned}\n{snippet}"
    pre = [e for e in sent.message["entities"] if e["type"] == "pre"]
    assert [sent.text[e["offset"] : e["offset"] + e["length"]] for e in pre] == [aligned, snippet]
