"""The product as it was asked for, end to end in Slack: `/finetune shop` opens the upload modal, a file is
uploaded, real workers train the tiny model on it and evaluate it, the weakest samples come back as cards whose
buttons record reviews, Retrain starts the next iteration, Approve & deploy puts its adapter on `tuneloop serve`,
and the deployed model answers through the gateway with the snippet the thread showed. The bot (HTTP mode, the
relay reading the event stream) is stopped while the first run trains and started again: it posts what it missed,
and nothing is posted twice (every message the Slack server recorded is counted as it was posted)."""

import asyncio
import json
import re
from collections import Counter
from pathlib import Path

import aiohttp
import pytest
from openai import OpenAI
from sqlmodel import Session, select

from engine.serve.local import free_port
from storage.models import Deployment, Review, Run
from tests.loop_fixtures import Loop, loop_model_fixture, running_loop  # noqa: F401  (the fixture `loop_model`)
from tests.slack_requests import CHANNEL, SECRET, Bot, opened, press, submit
from tests.slack_server import Posted, SlackServer
from tests.training_data import SHOP_QA, SHOP_SYSTEM
from tests.waiting import listening, until

LOOP_REDIS_DB = 9  # arq job ids and the event stream's consumer groups: this test's own database


def uploaded_file() -> bytes:
    """What a support lead uploads: the shop's question/answer pairs, as OpenAI-style JSONL."""
    system = {"role": "system", "content": SHOP_SYSTEM}
    rows = [
        {"messages": [system, {"role": "user", "content": q}, {"role": "assistant", "content": a}]} for q, a in SHOP_QA
    ]
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows).encode()


def cards(slack: SlackServer) -> list[Posted]:
    """Each run's card, in the order they were posted."""
    return [m for m in slack.messages if m.blocks and m.blocks[0].get("block_id") == "title:card"]


def buttons(message: Posted) -> list[str]:
    return [e["text"]["text"] for b in message.blocks if b["type"] == "actions" for e in b["elements"]]


def review_cards(slack: SlackServer, thread: str) -> list[Posted]:
    return [m for m in slack.thread(CHANNEL, thread) if "Keep" in buttons(m)]


@pytest.mark.slow
def test_finetune_review_retrain_approve_deploy_and_ask_from_slack_with_a_restart(
    loop_model: Path, redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with (
        running_loop(loop_model, tmp_path, redis_url, LOOP_REDIS_DB, monkeypatch) as loop,
        SlackServer(channels=(CHANNEL,)) as slack,
    ):
        loop.project("shop")
        loop.start_workers()
        snippet = asyncio.run(scenario(loop, slack))
        answer = ask_as_the_snippet_says(snippet, loop)
    assert answer.strip(), "the deployed adapter gave no answer"

    first, second = cards(slack)
    assert first.thread_ts is None and second.thread_ts is None  # one thread per run
    thread = [m.text for m in slack.thread(CHANNEL, first.ts)]
    assert any("orders.jsonl" in text for text in thread)  # the import's summary, in the run's thread
    # Told while the bot was away, posted once it was back: the evaluation, the move to review, the samples.
    assert sum("evaluating → waiting for review" in text for text in thread) == 1, thread
    shared = [f.name for f in slack.files.values() if (CHANNEL, first.ts) in f.shares]
    assert any(name.endswith(".png") for name in shared) and any(name.endswith(".html") for name in shared)
    with Session(loop.engine) as session:
        runs = session.exec(select(Run).order_by(Run.id)).all()
        verdicts = sorted(r.verdict for r in session.exec(select(Review)).all())
        (deployment,) = session.exec(select(Deployment)).all()
    assert [(run.iteration, run.state) for run in runs] == [(1, "reviewing"), (2, "deployed")]
    assert verdicts == ["drop", "fix"]
    assert runs[0].requested_by == "slack:U0ALICE" and deployment.approved_by == "slack:U0ALICE"
    # Every chat.postMessage the server was sent, as sent (an edited message is not a second post).
    posted = [(args["channel"], args.get("thread_ts"), args.get("text")) for args in slack.calls("chat.postMessage")]
    twice = {message: n for message, n in Counter(posted).items() if n > 1}
    assert not twice, f"posted more than once: {twice}"


async def scenario(loop: Loop, slack: SlackServer) -> str:
    """Drive the bot as people would; the deployment message's OpenAI snippet."""
    port = free_port()
    async with aiohttp.ClientSession() as session:
        bot = Bot(f"http://127.0.0.1:{port}/slack/events", session)
        stop, serving = await start_bot(loop, slack, port)
        await bot.command(slack, "shop")
        (modal,) = await opened(slack)
        values = {
            "file": {"file": {"type": "file_input", "files": [slack.add_file("orders.jsonl", uploaded_file())]}},
            "options": {"options": {"type": "plain_text_input", "value": "split test_size=2"}},
        }
        assert (await bot.interact(submit(modal, values)))[0] == 200
        await until("run 1's card", lambda: cards(slack), timeout=60)

        # The bot goes away while the run trains, and comes back once it waits for review.
        await until("training", lambda: loop.state(1) == "training", timeout=300)
        stop.set()
        await serving
        await until("run 1 to be evaluated", lambda: loop.state(1) in ("reviewing", "failed"), timeout=600)
        assert loop.state(1) == "reviewing", loop.log_tails()
        stop, serving = await start_bot(loop, slack, port)
        first = cards(slack)[0]
        # The two test samples, weakest first: one answer fixed, one question dropped.
        await until("run 1's review cards", lambda: len(review_cards(slack, first.ts)) == 2, timeout=120)
        fix, drop = review_cards(slack, first.ts)
        await bot.interact(press(drop, "Drop"))
        await bot.interact(press(fix, "Fix"))
        (_, fix_modal) = await opened(slack, 2)
        answer = {"text": {"value": {"type": "plain_text_input", "value": "订单会在48小时内发货，请耐心等待。"}}}
        await bot.interact(submit(fix_modal, answer))
        await until("the reviews", lambda: all("Keep" not in buttons(m) for m in (fix, drop)))

        await until("Retrain on run 1's card", lambda: "Retrain" in buttons(first), timeout=30)
        await bot.interact(press(first, "Retrain"))
        await until("run 2's card", lambda: len(cards(slack)) == 2, timeout=60)
        await until("run 2 to be evaluated", lambda: loop.state(2) in ("reviewing", "failed"), timeout=600)
        assert loop.state(2) == "reviewing", loop.log_tails()
        second = cards(slack)[1]
        await until("run 2's card to offer approval", lambda: "Approve & deploy" in buttons(second), timeout=60)
        await bot.interact(press(second, "Approve & deploy"))
        await until("the deployment", lambda: loop.state(2) in ("deployed", "failed"), timeout=300)
        assert loop.state(2) == "deployed", loop.log_tails()
        await until("the deployment's message", lambda: deployed(slack, second.ts), timeout=60)
        stop.set()
        await serving
    return deployed(slack, second.ts)


async def start_bot(loop: Loop, slack: SlackServer, port: int) -> tuple[asyncio.Event, asyncio.Task]:
    """`tuneloop bot slack --http` as it runs, in this process: the Bolt app and the event relay."""
    from bot.slack.serve import serve

    stop = asyncio.Event()
    core = loop.core()
    serving = asyncio.create_task(
        serve(core, bot_token=slack.bot_token, api_url=slack.api_url, signing_secret=SECRET, port=port, stop=stop)
    )
    await until("the bot to listen", lambda: listening(port) or serving.done(), timeout=30)
    return stop, serving


def deployed(slack: SlackServer, thread: str) -> str:
    """The deployment's message in `thread` (the one with the OpenAI-client snippet), once it is there."""
    return next((m.text for m in slack.thread(CHANNEL, thread) if "from openai import OpenAI" in m.text), "")


def ask_as_the_snippet_says(snippet: str, loop: Loop) -> str:
    """Ask the deployed model at the gateway address and by the name the snippet shows."""
    base_url = re.search(r'base_url="([^"]+)"', snippet).group(1)  # type: ignore[union-attr]
    model = re.search(r'model="([^"]+)"', snippet).group(1)  # type: ignore[union-attr]
    assert (base_url, model) == (loop.gateway.base_url, "shop")
    client = OpenAI(base_url=base_url, api_key=loop.gateway.api_key)
    reply = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": SHOP_QA[1][0]}], max_tokens=16, temperature=0
    )
    return reply.choices[0].message.content or ""
