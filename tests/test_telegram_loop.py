"""The whole loop from a Telegram group, end to end: a document with `/finetune shop …` as its caption, real workers
training the tiny model, the report and the weakest samples in the run's thread, a Fix answered through a
force-reply prompt, Retrain, iteration 2, approval, deployment onto `tuneloop serve`, and the deployed adapter
answering there. The bot (aiogram's Dispatcher polling tests/telegram_server.py) is stopped and started again while
the first run trains; what the server recorded shows nothing was sent twice."""

import asyncio
import json
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from sqlmodel import Session, select

from bot.telegram.serve import serve
from storage.models import Deployment, Run
from tests.loop_fixtures import WAIT_S, Loop, loop_model_fixture, running_loop  # noqa: F401  (the fixture `loop_model`)
from tests.telegram_server import Sent, TelegramServer, group, person
from tests.training_data import SHOP_QA, SHOP_SYSTEM
from tests.waiting import until

LOOP_REDIS_DB = 7  # arq job ids and the event stream's consumer groups: this test's own database
GROUP = group(-1009876543210)
ALICE = person(4242, "alice")
# The project's recipe is tests/loop_fixtures.py's tiny one; the caption asks for two samples held out as the test set.
CAPTION = "/finetune shop split test_size=2"
FIXED = "订单会在48小时内发货，请耐心等待。"


@pytest.fixture
def telegram() -> Iterator[TelegramServer]:
    with TelegramServer() as server:
        yield server


@pytest.fixture
def loop(loop_model: Path, redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Loop]:
    with running_loop(loop_model, tmp_path, redis_url, LOOP_REDIS_DB, monkeypatch) as running:
        running.project("shop")
        running.start_workers()
        yield running


def shop_file() -> bytes:
    def chat(question: str, answer: str) -> dict:
        said = [("system", SHOP_SYSTEM), ("user", question), ("assistant", answer)]
        return {"messages": [{"role": role, "content": content} for role, content in said]}

    return "".join(json.dumps(chat(q, a), ensure_ascii=False) + "\n" for q, a in SHOP_QA).encode()


def card_of(telegram: TelegramServer, run_id: int) -> Sent:
    return next(sent for sent in telegram.sent if sent.text.startswith(f"Run {run_id}: "))


def in_thread(telegram: TelegramServer, card: Sent) -> list[Sent]:
    return telegram.replies_to(card.chat, card.id)


def asking(telegram: TelegramServer, pressed: Sent) -> Sent | None:
    """The bot's question about a pressed message: a force-reply prompt, or whether to go ahead."""
    replies = telegram.replies_to(pressed.chat, pressed.id)
    return next((s for s in replies if (s.markup or {}).get("force_reply") or s.text.startswith("Deploy run")), None)


def review_cards(telegram: TelegramServer, card: Sent) -> list[Sent]:
    return [sent for sent in in_thread(telegram, card) if [b["text"] for b in sent.buttons] == ["Keep", "Fix", "Drop"]]


@pytest.mark.slow
def test_a_document_captioned_finetune_becomes_a_deployed_adapter_with_the_bot_restarted_midway(
    loop: Loop, telegram: TelegramServer
) -> None:
    core, server = loop.core(), loop.server
    telegram.chats[GROUP["id"]] = GROUP
    presses: list[str] = []

    def press(sent: Sent, label: str) -> None:
        presses.append(telegram.press(sent, label, ALICE))

    async def wait(what: str, condition: Callable[[], object]) -> None:
        """Until `condition`; when it never comes, what the bot sent and the workers' logs say why."""
        try:
            await until(what, condition, timeout=WAIT_S)
        except AssertionError:
            sent = "\n".join(f"{s.id} ← {s.reply_to} {s.kind}: {s.text[:300]!r} {s.buttons}" for s in telegram.sent)
            raise AssertionError(f"timed out waiting for {what}; sent:\n{sent}\n{loop.log_tails()}") from None

    async def scenario() -> None:
        def start_bot() -> tuple[asyncio.Event, asyncio.Task]:
            stop = asyncio.Event()
            options = {"token": telegram.token, "api_url": telegram.url, "stop": stop, "pace_s": 0.1}
            return stop, asyncio.create_task(serve(core, **options))

        stop, bot = start_bot()
        await wait("the bot to poll", lambda: telegram.called("deleteWebhook"))
        document = telegram.add_file("shop.jsonl", shop_file())
        telegram.message(GROUP, ALICE, CAPTION, document=document)
        await wait("run 1 to train", lambda: runs(loop) and loop.state(1) == "training")

        stop.set()  # the bot goes away while the run trains, and comes back
        await bot
        await asyncio.sleep(1)
        stop, bot = start_bot()

        await wait("run 1 to wait for review", lambda: loop.state(1) in ("reviewing", "failed"))
        assert loop.state(1) == "reviewing", loop.log_tails()
        first = card_of(telegram, 1)
        await wait("the samples to review", lambda: len(review_cards(telegram, first)) == 2)
        fix, keep = review_cards(telegram, first)
        press(fix, "Fix")
        await wait("the prompt for the answer", lambda: asking(telegram, fix))
        telegram.message(GROUP, ALICE, FIXED, reply_to=asking(telegram, fix))
        press(keep, "Keep")
        await wait("both reviews", lambda: keep.buttons == [] and fix.buttons == [])
        press(first, "Retrain")

        await wait("run 2 to wait for review", lambda: loop.state(2) in ("reviewing", "failed"))
        assert loop.state(2) == "reviewing", loop.log_tails()
        second = card_of(telegram, 2)
        await wait("run 2's card to offer approval", lambda: any("Approve" in b["text"] for b in second.buttons))
        (approve,) = [b["text"] for b in second.buttons if b["text"].startswith("Approve")]
        press(second, approve)
        await wait("the question", lambda: asking(telegram, second))
        question = asking(telegram, second)
        if approve == "Approve & deploy":  # the gate passed: confirm
            press(question, "Approve & deploy")
        else:  # the gate failed: an approver's reason
            telegram.message(GROUP, ALICE, "a tiny model; testing the loop", reply_to=question)
        await wait("run 2 deployed", lambda: loop.state(2) in ("deployed", "failed"))
        assert loop.state(2) == "deployed", loop.log_tails()
        await wait("the deployment told", lambda: any("Roll back" in str(s.buttons) for s in in_thread(telegram,
                    second)))  # fmt: skip
        stop.set()
        await bot

    asyncio.run(scenario())

    # The deployed adapter answers on the embedded server under its version name.
    with Session(loop.engine) as session:
        (deployment,) = session.exec(select(Deployment).where(Deployment.status == "active")).all()
        assert session.get(Run, 2).requested_by == "telegram:4242"
    answer = httpx.post(
        f"{server.base_url}/chat/completions",
        headers=server.headers,
        json={
            "model": deployment.version_name,
            "messages": [{"role": "user", "content": "多久到货？"}],
            "max_tokens": 8,
        },
        timeout=60,
    )
    assert answer.status_code == 200 and answer.json()["model"] == deployment.version_name

    # What the Telegram server recorded, as it recorded it: every press answered, no refusal, nothing twice.
    assert set(presses) <= set(telegram.answers)
    assert telegram.refused == []
    sent = Counter((s.chat, s.reply_to, s.kind, s.text) for s in telegram.sent)
    assert [key for key, count in sent.items() if count > 1] == []
    first, second = card_of(telegram, 1), card_of(telegram, 2)
    told = [s.text for s in in_thread(telegram, first)]
    assert sum("→ waiting for review" in text for text in told) == 1
    assert sum(s.kind == "photo" for s in in_thread(telegram, first)) >= 1
    assert sum(s.kind == "document" and s.file_name.endswith(".html") for s in in_thread(telegram, first)) == 1
    assert any("shop.jsonl" in text for text in told)
    assert first.edits and second.edits  # each run's one message, edited in place


def runs(loop: Loop) -> list[int]:
    with Session(loop.engine) as session:
        return list(session.exec(select(Run.id).order_by(Run.id)).all())
