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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis
from aiohttp import web
from slack_sdk.signature import SignatureVerifier
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from bot.core.deliveries import Deliveries
from bot.core.messages import Message
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
from tests.slack_server import SlackServer
from tests.test_core import core_on
from tests.test_reviews import build
from tests.test_runs import deploys  # noqa: F401  (a fixture)
from tests.waiting import listening, until

ROOT = Path(__file__).resolve().parent.parent
SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
CHANNEL = "C0TESTCHAN1"
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


@dataclass
class Bot:
    """A way to send the app what Slack sends; `face` when it runs in this process."""

    url: str
    session: aiohttp.ClientSession
    face: SlackFace | None = None

    async def idle(self) -> None:
        """Wait for the work the app handed off."""
        assert self.face is not None
        await self.face.idle()

    async def send(self, body: str, *, content_type: str, signed_at: int | None = None, secret: str = SECRET) -> Any:
        stamp = str(signed_at or int(time.time()))
        signature = SignatureVerifier(secret).generate_signature(timestamp=stamp, body=body)
        headers = {
            "Content-Type": content_type,
            "X-Slack-Request-Timestamp": stamp,
            "X-Slack-Signature": signature,
        }
        async with self.session.post(self.url, data=body.encode(), headers=headers) as answer:
            text = await answer.text()
            return answer.status, (json.loads(text) if text.startswith("{") else text)

    async def command(self, slack: SlackServer, text: str, user: str = "U0ALICE") -> Any:
        form = {
            "token": "legacy",
            "team_id": "T0TEST",
            "channel_id": CHANNEL,
            "user_id": user,
            "user_name": user.lower(),
            "command": "/finetune",
            "text": text,
            "response_url": slack.response_url(),
            "trigger_id": f"{time.time()}.trigger",
        }
        return await self.send(urllib.parse.urlencode(form), content_type="application/x-www-form-urlencoded")

    async def interact(self, payload: dict) -> Any:
        body = urllib.parse.urlencode({"payload": json.dumps(payload)})
        return await self.send(body, content_type="application/x-www-form-urlencoded")


@asynccontextmanager
async def running(core: Core, slack: SlackServer) -> AsyncIterator[Bot]:
    client = web_client(slack.bot_token, slack.api_url)
    deliveries = Deliveries.on(core.settings.redis_url, "slack")  # the tests' own Redis database, emptied after
    face = SlackFace(core, client, Outbox(SlackSender(client), pace_s=0), deliveries)
    runner = web.AppRunner(face.app(signing_secret=SECRET).web_app(path="/slack/events"))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    async with aiohttp.ClientSession() as session:
        yield Bot(f"http://127.0.0.1:{port}/slack/events", session, face)
    await face.idle()
    await runner.cleanup()
    await deliveries.close()


async def opened(slack: SlackServer, count: int = 1) -> list[dict]:
    """The modals opened, once `count` are: Bolt runs a listener on after acknowledging, so it may still be going."""
    deadline = time.monotonic() + 5
    while len(slack.views) < count and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    return slack.views


def press(message: Any, label: str, *, user: str = "U0ALICE", action_ts: str | None = None) -> dict:
    """The block_actions payload Slack sends when `user` presses the button labelled `label` on `message`."""
    element = next(
        element
        for block in message.blocks
        if block["type"] == "actions"
        for element in block["elements"]
        if element["text"]["text"] == label
    )
    return {
        **sent_by(user, "block_actions"),
        "container": {"type": "message", "message_ts": message.ts, "channel_id": CHANNEL},
        "channel": {"id": CHANNEL, "name": "ml"},
        "message": {"type": "message", "ts": message.ts, "thread_ts": message.thread_ts, "blocks": message.blocks},
        "actions": [
            {
                "type": "button",
                "block_id": "b",
                "action_id": element["action_id"],
                "value": element["value"],
                "text": element["text"],
                "action_ts": action_ts or f"{time.time():.6f}",
            }
        ],
    }


def submit(view: dict, values: dict, user: str = "U0ALICE") -> dict:
    return {**sent_by(user, "view_submission"), "view": {**view, "state": {"values": values}}}


def sent_by(user: str, kind: str) -> dict:
    """What every interaction payload carries: its type, the workspace, the person, a fresh trigger id."""
    return {
        "type": kind,
        "team": {"id": "T0TEST", "domain": "tuneloop"},
        "user": {"id": user, "username": user.lower(), "team_id": "T0TEST"},
        "api_app_id": "A0TUNELOOP",
        "trigger_id": f"{time.time()}.trigger",
    }


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
def test_deploying_over_a_failed_gate_asks_an_approver_for_the_reason(core: Core, slack: SlackServer) -> None:
    world = build(core.engine)  # its gate failed

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
    build(core.engine)
    with session_scope(core.engine) as session:
        project = session.exec(select(Project).where(Project.name == "shop")).one()
        project.base_model = "/models/tiny"
        session.add(project)
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
