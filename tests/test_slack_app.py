"""The Slack face driven as Slack drives it: the real Bolt app serving HTTP, requests signed exactly as Slack signs
them (v0 HMAC over `v0:{timestamp}:{body}`), and slack_sdk's real client talking to tests/slack_server.py. Slash
commands, buttons, modals and an uploaded file go through the core to the database and the queue (real Redis)."""

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis
from aiohttp import web
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from bot.core.deliveries import Deliveries
from bot.core.messages import Message, Table
from bot.core.outbox import Outbox, Undeliverable
from bot.core.perform import Core
from bot.slack import blocks
from bot.slack.app import SlackFace
from bot.slack.sender import SlackSender
from bot.slack.serve import serve, web_client
from engine.events import Event
from engine.events.stream import stream_sink
from storage.db import session_scope
from storage.models import Conversation, DatasetVersion, Judgement, Project, Review, Run
from tests.slack_requests import CHANNEL, SECRET, Bot, opened, press, submit
from tests.slack_server import SlackServer
from tests.test_core import core_on
from tests.test_reviews import build
from tests.test_runs import deploys  # noqa: F401  (a fixture)
from tests.waiting import listening, until

ROOT = Path(__file__).resolve().parent.parent
SLACK_REDIS_DB = 14  # arq job ids are global in one Redis database: these tests' own
SAMPLE = {
    "messages": [
        {"role": "user", "content": "Where is my order <!channel>?"},
        {"role": "assistant", "content": "Please send me your order number & I will look."},
    ]
}


@pytest.fixture
def slack() -> Iterator[SlackServer]:
    with SlackServer(channels=(CHANNEL,)) as server:
        yield server


@pytest.fixture
def core(db_engine: Engine, redis_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Core]:
    with core_on(db_engine, redis_url, SLACK_REDIS_DB, monkeypatch) as core:
        yield core


@asynccontextmanager
async def running(core: Core, slack: SlackServer) -> AsyncIterator[Bot]:
    client = web_client(slack.bot_token, slack.api_url)
    deliveries = Deliveries.on(core.settings.redis_url, "slack")  # the tests' own Redis database, emptied after
    face = SlackFace(core, client, Outbox(SlackSender(client), pace_s=0), deliveries)
    runner = web.AppRunner(face.http(signing_secret=SECRET))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    async with aiohttp.ClientSession() as session:
        yield Bot(f"http://127.0.0.1:{port}/slack/events", session, face)
    await face.idle()
    await runner.cleanup()
    await deliveries.close()


# --- signatures -------------------------------------------------------------------------------------------------


def test_requests_not_signed_by_slack_or_signed_too_long_ago_are_refused(core: Core, slack: SlackServer) -> None:
    build(core.engine)

    async def scenario() -> list[int]:
        async with running(core, slack) as bot:
            form = urllib.parse.urlencode({"command": "/finetune", "text": "status 1", "user_id": "U0MALLORY"})
            forged = await bot.send(form, content_type="application/x-www-form-urlencoded", secret="not-the-secret")
            replayed = await bot.send(
                form, content_type="application/x-www-form-urlencoded", signed_at=int(time.time()) - 6 * 60
            )
            return [forged[0], replayed[0]]

    assert asyncio.run(scenario()) == [401, 401]
    assert slack.messages == [] and slack.responses == []


# --- commands -----------------------------------------------------------------------------------------------------


def test_a_command_is_acknowledged_at_once_its_card_opens_a_thread_and_mistakes_are_told_privately(
    core: Core, slack: SlackServer
) -> None:
    run_id = build(core.engine).run_id

    async def scenario() -> tuple[Any, Any, float]:
        async with running(core, slack) as bot:
            started = time.monotonic()
            status = await bot.command(slack, f"status {run_id}")
            took = time.monotonic() - started
            mistake = await bot.command(slack, "stauts 3")
            await bot.idle()
        return status, mistake, took

    status, mistake, took = asyncio.run(scenario())
    assert status[0] == 200 and took < 3.0
    assert mistake[0] == 200
    (answer,) = slack.responses  # through the command's response_url: only they see it
    assert answer["response_type"] == "ephemeral" and "Did you mean 'status'?" in answer["text"]
    (card,) = slack.messages
    assert card.thread_ts is None and card.blocks[0]["block_id"] == "title:card"
    assert f"Run {run_id}" in card.text
    with Session(core.engine) as session:
        (conversation,) = session.exec(select(Conversation)).all()
        assert (conversation.channel, conversation.thread, conversation.card) == (CHANNEL, card.ts, card.ts)


def test_sample_text_can_never_ping_anyone_or_hide_a_link(core: Core, slack: SlackServer) -> None:
    world = build(core.engine)
    with session_scope(core.engine) as session:
        judgement = session.get(Judgement, world.judgement_ids[0])
        judgement.question = "<!channel> urgent: see <https://evil.example|the docs> & <@U0BOSS>"
        judgement.tuned_answer = "<!here> click <https://evil.example>"
        session.add(judgement)

    async def scenario() -> None:
        async with running(core, slack) as bot:
            await bot.command(slack, f"review {world.run_id}")

    asyncio.run(scenario())
    posted = json.dumps([(m.text, m.blocks) for m in slack.messages])
    for markup in ("<!channel>", "<!here>", "<https://evil.example", "<@U0BOSS>"):
        assert markup not in posted
    assert "&lt;!channel&gt; urgent: see &lt;https://evil.example|the docs&gt; &amp; &lt;@U0BOSS&gt;" in posted


# --- buttons and modals ---------------------------------------------------------------------------------------


def review_cards(core: Core, slack: SlackServer, run_id: int) -> list:
    async def scenario() -> None:
        async with running(core, slack) as bot:
            await bot.command(slack, f"review {run_id}")

    asyncio.run(scenario())
    return [m for m in slack.messages if any(b["type"] == "actions" for b in m.blocks)]


def reviews(engine: Engine) -> list[tuple[int, str, str | None, str]]:
    with Session(engine) as session:
        rows = session.exec(select(Review).order_by(Review.id)).all()
        return [(row.judgement_id, row.verdict, row.corrected_answer, row.reviewer) for row in rows]


def test_a_button_does_its_action_once_and_is_replaced_by_what_was_done(core: Core, slack: SlackServer) -> None:
    world = build(core.engine)
    first = review_cards(core, slack, world.run_id)[0]
    payload = press(first, "Keep")

    async def scenario() -> list[Any]:
        async with running(core, slack) as bot:
            answers = [await bot.interact(payload), await bot.interact(payload)]  # delivered twice
            await bot.idle()
        return answers

    assert [status for status, _ in asyncio.run(scenario())] == [200, 200]
    assert reviews(core.engine) == [(world.judgement_ids[0], "keep", None, "slack:U0ALICE")]
    (edit,) = first.edits
    assert not any(block["type"] == "actions" for block in first.blocks)
    assert first.blocks[-1]["type"] == "context" and "keep" in first.blocks[-1]["elements"][0]["text"].lower()
    assert edit["ts"] == first.ts


def test_one_click_delivered_to_two_bots_is_done_once(core: Core, slack: SlackServer) -> None:
    world = build(core.engine)
    payload = press(review_cards(core, slack, world.run_id)[0], "Drop")

    async def scenario() -> None:
        async with running(core, slack) as one, running(core, slack) as other:  # Socket Mode spreads payloads
            await one.interact(payload)
            await other.interact(payload)

    asyncio.run(scenario())
    assert reviews(core.engine) == [(world.judgement_ids[0], "drop", None, "slack:U0ALICE")]


def test_fix_asks_for_the_answer_in_a_modal_and_an_empty_one_is_refused_on_its_input(
    core: Core, slack: SlackServer
) -> None:
    world = build(core.engine)
    first = review_cards(core, slack, world.run_id)[0]

    async def scenario() -> tuple[Any, Any]:
        async with running(core, slack) as bot:
            await bot.interact(press(first, "Fix"))
            (modal,) = await opened(slack)
            assert modal["callback_id"] == blocks.TEXT_MODAL
            assert f"#{world.judgement_ids[0]}" in modal["blocks"][0]["label"]["text"]  # the core's own prompt
            empty = await bot.interact(submit(modal, {"text": {"value": {"type": "plain_text_input", "value": " "}}}))
            answer = {"text": {"value": {"type": "plain_text_input", "value": "Send me the <order> number."}}}
            given = await bot.interact(submit(modal, answer))
            await bot.idle()
        return empty, given

    empty, given = asyncio.run(scenario())
    assert empty == (200, {"response_action": "errors", "errors": {"text": "Please write something first."}})
    assert given[0] == 200
    assert reviews(core.engine) == [(world.judgement_ids[0], "fix", "Send me the <order> number.", "slack:U0ALICE")]
    assert not any(block["type"] == "actions" for block in first.blocks)  # replaced once the answer came


@pytest.mark.usefixtures(
    "deploys"
)  # deployment stands in: engine.loop.runs.deploy_run answers "shop now serves shop-v1"
def test_deploying_over_a_failed_gate_asks_an_approver_for_the_reason(
    core: Core, slack: SlackServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    world = build(core.engine)  # its gate failed
    monkeypatch.setattr(core.settings, "gateway_url", "https://llm.example.com/v1")

    async def scenario() -> None:
        async with running(core, slack) as bot:
            await bot.command(slack, f"status {world.run_id}")
            await bot.idle()
            (card,) = slack.messages
            await bot.interact(press(card, "Approve over the gate…"))
            (modal,) = await opened(slack)
            reason = {"text": {"value": {"type": "plain_text_input", "value": "tiny model; a demo"}}}
            await bot.interact(submit(modal, reason))

    asyncio.run(scenario())
    with Session(core.engine) as session:
        assert session.get(Run, world.run_id).gate_override_reason == "tiny model; a demo"
    card, *replies = slack.thread(CHANNEL, slack.messages[0].ts)
    assert "shop now serves shop-v1" in replies[-1].text
    # The name to call, and how, through the gateway: code blocks to copy.
    assert "Model name: shop" in replies[-1].text
    code = [b["text"]["text"] for b in replies[-1].blocks if b["type"] == "section" and "```" in b["text"]["text"]]
    assert code == [
        "```curl https://llm.example.com/v1/chat/completions \\\n"
        '  -H "Authorization: Bearer $TUNELOOP_API_KEY" \\\n'
        '  -H "Content-Type: application/json" \\\n'
        '  -d \'{"model": "shop", "messages": [{"role": "user", "content": "Hello"}]}\'```',
        "```import os\nfrom openai import OpenAI\n\n"
        'client = OpenAI(base_url="https://llm.example.com/v1", api_key=os.environ["TUNELOOP_API_KEY"])\n'
        'reply = client.chat.completions.create(model="shop", messages=[{"role": "user", "content": "Hello"}])\n'
        "print(reply.choices[0].message.content)```",
    ]
    rollback = [e["text"]["text"] for b in replies[-1].blocks if b["type"] == "actions" for e in b["elements"]]
    assert rollback == ["Roll back"]
    assert any(block["type"] == "actions" for block in card.blocks)  # a card is the relay's to update, not replaced


def test_someone_not_allowed_is_told_privately_and_nothing_changes(core: Core, slack: SlackServer) -> None:
    world = build(core.engine, reviewers=["slack:U0ALICE"])
    first = review_cards(core, slack, world.run_id)[0]

    async def scenario() -> None:
        async with running(core, slack) as bot:
            await bot.interact(press(first, "Drop", user="U0MALLORY"))

    asyncio.run(scenario())
    assert reviews(core.engine) == []
    (told,) = [m for m in slack.messages if m.user == "U0MALLORY"]
    assert "u0mallory" in told.text.lower() and "review" in told.text.lower()
    assert any(block["type"] == "actions" for block in first.blocks)  # the buttons stay for those who may


# --- data in ----------------------------------------------------------------------------------------------------


def test_finetune_without_data_opens_a_modal_and_trains_on_the_uploaded_file(core: Core, slack: SlackServer) -> None:
    build_with_base_model(core.engine)
    content = "".join(json.dumps(SAMPLE | {"id": n}) + "\n" for n in range(4)).encode()
    shared = slack.add_file("orders.jsonl", content)

    async def scenario() -> None:
        async with running(core, slack) as bot:
            await bot.command(slack, "shop")
            (modal,) = await opened(slack)
            assert modal["callback_id"] == blocks.UPLOAD_MODAL
            values = {
                "file": {"file": {"type": "file_input", "files": [shared]}},
                "options": {"options": {"type": "plain_text_input", "value": "epochs=1"}},
            }
            assert (await bot.interact(submit(modal, values)))[0] == 200
            await bot.idle()

    asyncio.run(scenario())
    assert slack.downloads == [(shared["id"], True)]
    assert not any((core.settings.home / "uploads" / "slack").iterdir())  # imported, then removed
    with Session(core.engine) as session:
        run = session.exec(select(Run).order_by(Run.id.desc())).first()
        version = session.get(DatasetVersion, run.dataset_version_id)
        assert run.state == "queued" and run.requested_by == "slack:U0ALICE" and version.number == 2
        assert run.recipe["num_train_epochs"] == 1
    card = next(m for m in slack.messages if m.blocks and m.blocks[0].get("block_id") == "title:card")
    thread = [m.text for m in slack.thread(CHANNEL, card.ts)]
    assert any("orders.jsonl" in text for text in thread)


def build_with_base_model(engine: Engine) -> None:
    """`build`'s project, with a base model to start runs on."""
    build(engine)
    with session_scope(engine) as session:
        project = session.exec(select(Project).where(Project.name == "shop")).one()
        project.base_model = "/models/tiny"
        session.add(project)


def test_a_download_refused_for_a_missing_scope_says_which_scope(core: Core, slack: SlackServer) -> None:
    build(core.engine)
    slack.scopes.discard("files:read")
    shared = slack.add_file("orders.jsonl", b"{}\n")

    async def scenario() -> None:
        async with running(core, slack) as bot:
            await bot.command(slack, "shop")
            (modal,) = await opened(slack)
            await bot.interact(submit(modal, {"file": {"file": {"type": "file_input", "files": [shared]}}}))

    asyncio.run(scenario())
    (told,) = [m for m in slack.messages if m.user == "U0ALICE"]
    assert "files:read" in told.text
    assert not any((core.settings.home / "uploads" / "slack").iterdir())
    with Session(core.engine) as session:
        assert len(session.exec(select(Run)).all()) == 1  # only the one build made


# --- posting ------------------------------------------------------------------------------------------------------


def test_posting_waits_out_slacks_rate_limit_uploads_charts_into_the_thread_and_words_refusals(
    slack: SlackServer, tmp_path: Path
) -> None:
    chart = tmp_path / "loss.png"
    chart.write_bytes(b"\x89PNG loss curve")
    slack.other_channels.add("C0OUTSIDE01")

    async def scenario() -> tuple[float, str, str]:
        client = web_client(slack.bot_token, slack.api_url)
        outbox = Outbox(SlackSender(client), pace_s=0)
        root = await outbox.post(CHANNEL, None, Message("Run 1 · shop"))
        slack.slow_down("chat.postMessage", retry_after=1)
        started = time.monotonic()
        await outbox.post(CHANNEL, root, Message("Evaluation of run 1", images=[chart]))
        waited = time.monotonic() - started
        with pytest.raises(Undeliverable) as refused:
            await outbox.post("C0OUTSIDE01", None, Message("hello"))
        return waited, root, str(refused.value)

    waited, root, refused = asyncio.run(scenario())
    assert waited >= 1.0
    assert [m.text for m in slack.thread(CHANNEL, root)] == ["Run 1 · shop", "Evaluation of run 1"]
    (uploaded,) = [f for f in slack.files.values() if f.name == "loss.png"]
    assert uploaded.content == b"\x89PNG loss curve" and uploaded.shares == [(CHANNEL, root)]
    assert refused == "invite @tuneloop to channel C0OUTSIDE01 (/invite @tuneloop), then try again"


# --- the bot as it runs -------------------------------------------------------------------------------------------


def test_the_bot_over_socket_mode_answers_commands_and_relays_the_runs_events(core: Core, slack: SlackServer) -> None:
    run_id = build(core.engine).run_id
    events = stream_sink(redis.Redis.from_url(core.settings.redis_url), interval=0)

    async def scenario() -> None:
        stop = asyncio.Event()
        bot = asyncio.create_task(
            serve(core, bot_token=slack.bot_token, api_url=slack.api_url, app_token=slack.app_token, stop=stop)
        )
        await until("the Socket Mode connection", lambda: slack.sockets)
        command = {"command": "/finetune", "text": f"status {run_id}", "user_id": "U0ALICE", "channel_id": CHANNEL,
                   "team_id": "T0TEST", "trigger_id": "1.2.3", "response_url": slack.response_url()}  # fmt: skip
        envelope = await asyncio.to_thread(slack.socket_send, "slash_commands", command)
        await until("the acknowledgement", lambda: any(r.get("envelope_id") == envelope for r in slack.socket_replies))
        await until("the card", lambda: slack.messages)
        events(Event("warning", "shop", {"message": "the loss went up"}, run=run_id))
        await until("the relayed warning", lambda: len(slack.messages) == 2)
        stop.set()
        await bot

    asyncio.run(scenario())
    card, warning = slack.messages
    assert card.blocks[0]["block_id"] == "title:card"
    assert (warning.thread_ts, warning.text) == (card.ts, f"run {run_id}: warning: the loss went up")


def test_tuneloop_bot_slack_over_http_answers_signed_requests_only_and_stops_on_sigterm(
    core: Core, slack: SlackServer
) -> None:
    run_id = build(core.engine).run_id
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = os.environ | {
        "SLACK_BOT_TOKEN": slack.bot_token,
        "SLACK_SIGNING_SECRET": SECRET,
        "TUNELOOP_SLACK_API_URL": slack.api_url,
        "TUNELOOP_DATABASE_URL": core.engine.url.render_as_string(hide_password=False),
        "TUNELOOP_REDIS_URL": core.settings.redis_url,
        "PYTHONPATH": str(ROOT),
    }
    bot = subprocess.Popen(
        [sys.executable, "-m", "bot.cli", "bot", "slack", "--http", "--port", str(port)], cwd=ROOT, env=env
    )
    try:

        async def scenario() -> list[int]:
            await until("the bot to listen", lambda: listening(port), timeout=60)
            async with aiohttp.ClientSession() as session:
                bot_at = Bot(f"http://127.0.0.1:{port}/slack/events", session)
                signed = await bot_at.command(slack, f"status {run_id}")
                form = urllib.parse.urlencode({"command": "/finetune", "text": "status 1"})
                forged = await bot_at.send(form, content_type="application/x-www-form-urlencoded", secret="guess")
            await until("the card", lambda: slack.messages)
            return [signed[0], forged[0]]

        assert asyncio.run(scenario()) == [200, 401]
        bot.send_signal(signal.SIGTERM)
        assert bot.wait(30) == 0
    finally:
        bot.kill()
    (card,) = slack.messages
    assert card.blocks[0]["block_id"] == "title:card" and f"Run {run_id}" in card.text


# --- a file shared in a channel -----------------------------------------------------------------------------------


def jsonl(*records: dict) -> bytes:
    return "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records).encode()


NO_ANSWER = {"messages": [{"role": "user", "content": "还在吗？"}]}


def opened_thread(core: Core, slack: SlackServer, run_id: int) -> str:
    """The run's thread, opened by its card (`status`)."""

    async def scenario() -> None:
        async with running(core, slack) as bot:
            await bot.command(slack, f"status {run_id}")

    asyncio.run(scenario())
    return slack.messages[-1].ts


def share(core: Core, slack: SlackServer, file: dict, text: str = "", thread: str | None = None) -> int:
    async def scenario() -> int:
        async with running(core, slack) as bot:
            status, _ = await bot.share(file, text, thread=thread)
            await bot.idle()
        return status

    return asyncio.run(scenario())


def versions(engine: Engine) -> list[int]:
    with Session(engine) as session:
        return [version.number for version in session.exec(select(DatasetVersion).order_by(DatasetVersion.id)).all()]


def test_a_file_shared_in_a_runs_thread_is_imported_and_its_summary_and_rejects_go_in_the_thread(
    core: Core, slack: SlackServer
) -> None:
    world = build(core.engine)
    thread = opened_thread(core, slack, world.run_id)
    content = jsonl(*(SAMPLE | {"id": n} for n in range(3)), NO_ANSWER)
    file = slack.add_file("more.jsonl", content)

    assert share(core, slack, file, "more data", thread) == 200
    assert versions(core.engine)[-1] == 2
    (summary,) = [m for m in slack.thread(CHANNEL, thread) if "more.jsonl" in m.text]
    assert summary.user is None  # for everyone in the thread
    assert "more.jsonl: 3 new samples, 0 already present; shop/main v2." in summary.text
    assert "1 records were refused" in summary.text
    assert "more.jsonl, line 4, field 'messages': conversation has no assistant turn" in summary.text
    assert "/tmp" not in summary.text and "uploads" not in summary.text  # no path of this machine
    assert "shop data=2" in summary.text  # how to train on it
    (rejects,) = [f for f in slack.files.values() if f.name == "more.jsonl.rejects.jsonl"]
    assert rejects.shares == [(CHANNEL, thread)]
    assert "no assistant turn" in rejects.content.decode()
    assert not any((core.settings.home / "uploads" / "slack").iterdir())


def test_a_refused_file_shared_in_a_runs_thread_says_record_by_record_what_is_wrong_in_the_thread(
    core: Core, slack: SlackServer
) -> None:
    world = build(core.engine)
    thread = opened_thread(core, slack, world.run_id)
    file = slack.add_file("broken.jsonl", jsonl(NO_ANSWER, {"messages": [{"role": "user"}]}))

    share(core, slack, file, thread=thread)
    assert versions(core.engine) == [1]  # nothing imported
    (refused,) = [m for m in slack.thread(CHANNEL, thread) if "broken.jsonl" in m.text]
    assert refused.user is None
    assert "broken.jsonl, line 1, field 'messages': conversation has no assistant turn" in refused.text
    assert "broken.jsonl, line 2, field 'messages[0].content': missing field" in refused.text


def test_a_file_in_a_format_the_importer_refuses_is_told_in_the_channel(core: Core, slack: SlackServer) -> None:
    build(core.engine)
    file = slack.add_file("notes.txt", b"a few thoughts about the shop")

    share(core, slack, file, "shop")
    (refused,) = [m for m in slack.messages if "notes.txt" in m.text]
    assert refused.user is None and refused.thread_ts is None
    assert "notes.txt: cannot tell whether this is JSON, JSON Lines, CSV or TSV" in refused.text
    with Session(core.engine) as session:
        assert len(session.exec(select(Run)).all()) == 1  # only the one build made


def test_a_file_shared_in_the_channel_with_a_project_named_starts_a_run_on_it(core: Core, slack: SlackServer) -> None:
    build_with_base_model(core.engine)
    file = slack.add_file("orders.jsonl", jsonl(*(SAMPLE | {"id": n} for n in range(2))))

    share(core, slack, file, "shop epochs=1")
    share(core, slack, slack.add_file("chatter.jsonl", jsonl(SAMPLE)), "look at this")  # not a command: not ours
    with Session(core.engine) as session:
        run = session.exec(select(Run).order_by(Run.id.desc())).first()
        assert run.state == "queued" and run.recipe["num_train_epochs"] == 1
        assert session.get(DatasetVersion, run.dataset_version_id).number == 2
    card = next(m for m in slack.messages if m.blocks and m.blocks[0].get("block_id") == "title:card")
    assert any("orders.jsonl" in m.text for m in slack.thread(CHANNEL, card.ts))
    assert not any("chatter.jsonl" in m.text for m in slack.messages)


def test_a_shared_file_over_the_upload_limit_is_refused_in_words_before_it_is_fetched(
    core: Core, slack: SlackServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    world = build(core.engine)
    thread = opened_thread(core, slack, world.run_id)
    monkeypatch.setattr(core.settings, "max_upload_bytes", 64)
    file = slack.add_file("big.jsonl", jsonl(*(SAMPLE | {"id": n} for n in range(4))))

    share(core, slack, file, thread=thread)
    assert slack.downloads == []
    (told,) = [m for m in slack.messages if m.user == "U0ALICE"]
    assert f"big.jsonl is {file['size']} bytes; tuneloop takes files up to 64 bytes." == told.text
    assert versions(core.engine) == [1]


# --- Slack's refusals, in words -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("channel", "known", "told"),
    [
        ("C0OUTSIDE01", True, "invite @tuneloop to channel C0OUTSIDE01 (/invite @tuneloop), then try again"),
        ("C0GONE00001", False, "tuneloop cannot see channel C0GONE00001: invite it there, or use a channel it is in"),
    ],
)
def test_a_command_in_a_channel_the_bot_cannot_post_in_is_answered_with_what_to_do(
    core: Core, slack: SlackServer, channel: str, known: bool, told: str
) -> None:
    run_id = build(core.engine).run_id
    if known:
        slack.other_channels.add(channel)

    async def scenario() -> None:
        async with running(core, slack) as bot:
            await bot.command(slack, f"status {run_id}", channel=channel)

    asyncio.run(scenario())
    assert slack.messages == []
    (answer,) = slack.responses
    assert answer == {"text": told, "response_type": "ephemeral"}


def test_a_command_whose_card_is_rate_limited_is_posted_once_after_the_wait(core: Core, slack: SlackServer) -> None:
    run_id = build(core.engine).run_id
    slack.slow_down("chat.postMessage", retry_after=1)
    slack.slow_down("chat.postMessage", retry_after=1)

    async def scenario() -> None:
        async with running(core, slack) as bot:
            await bot.command(slack, f"status {run_id}")

    asyncio.run(scenario())
    assert len(slack.calls("chat.postMessage")) == 3
    (card,) = slack.messages
    assert f"Run {run_id}" in card.text and slack.responses == []


def test_modals_and_refusals_speak_the_persons_language(core: Core, slack: SlackServer) -> None:
    build(core.engine)
    slack.other_channels.add("C0OUTSIDE01")

    async def scenario() -> Any:
        async with running(core, slack) as bot:
            await bot.command(slack, "lang zh")
            await bot.idle()
            await bot.command(slack, "shop")
            (modal,) = await opened(slack)
            await bot.command(slack, "status 1", channel="C0OUTSIDE01")
            return modal

    modal = asyncio.run(scenario())
    assert modal["title"]["text"] == "微调 shop" and modal["submit"]["text"] == "开始"
    assert [block["label"]["text"] for block in modal["blocks"]] == ["训练数据（JSONL、JSON、CSV 或 Parquet）", "选项"]
    assert slack.responses[-1]["text"] == "请先邀请 @tuneloop 加入频道 C0OUTSIDE01（/invite @tuneloop），然后重试"


def test_a_table_shows_as_aligned_monospaced_text_with_user_text_escaped() -> None:
    table = Table(["version", "what changed"], [["v1", "导入 <!channel>"], ["v12", "filter"]])
    shown = [block["text"]["text"] for block in blocks.blocks_of(Message("versions", tables=[table]))[1:]]
    assert shown == ["```version  what changed\nv1       导入 &lt;!channel&gt;\nv12      filter```"]
