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

from bot.core.perform import Core
from bot.telegram.serve import serve
from engine.serve.local import LocalServer, start_local_server
from engine.settings import get_settings
from engine.train.tiny import build_tiny_model
from storage.db import session_scope
from storage.models import Deployment, Project, Run
from tests.telegram_server import Sent, TelegramServer, group, person
from tests.test_telegram_app import TELEGRAM_REDIS_DB
from tests.training_data import SHOP_QA, SHOP_SYSTEM
from tests.waiting import until
from tests.workers import WAIT_S, Setup, worker_setup

GROUP = group(-1009876543210)
ALICE = person(4242, "alice")
# The shop's questions and two more, two held out by the split: the other six train twelve steps (four epochs, two
# samples a step), which pass the EOS check at the end of training (eight steps, as tests/test_worker.py's runs on six
# samples take, fail it here about as often as they pass).
QUESTIONS = [*SHOP_QA, ("能改地址吗？", "发货前可以在订单页修改地址。"), ("有优惠券吗？", "新用户注册即送优惠券。")]
CAPTION = (
    "/finetune shop split test_size=2 epochs=4 batch=2 gradient_accumulation_steps=1 lr=0.005 cutoff=64 dropout=0 "
    "logging_steps=1 save_steps=4"
)
RANK = 16  # the default recipe's lora_rank
FIXED = "订单会在48小时内发货，请耐心等待。"


@pytest.fixture
def telegram() -> Iterator[TelegramServer]:
    with TelegramServer() as server:
        yield server


@pytest.fixture(scope="module")
def base_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("telegram") / "model")


@pytest.fixture
def server(base_model: Path, tmp_path: Path) -> Iterator[LocalServer]:
    served = start_local_server(base_model, tmp_path / "serve.log", args=["--max-lora-rank", str(RANK)])
    yield served
    served.stop()


@pytest.fixture
def setup(
    redis_url: str, base_model: Path, server: LocalServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Setup]:
    database = f"sqlite:///{tmp_path / 'tuneloop.db'}"
    with worker_setup(redis_url, database, base_model, tmp_path, monkeypatch, TELEGRAM_REDIS_DB, dataset=False) as made:
        deploying = {"TUNELOOP_VLLM_URLS": json.dumps([server.url]), "TUNELOOP_VLLM_API_KEY": server.api_key}
        for name, value in deploying.items():
            monkeypatch.setenv(name, value)
        made.env.update(deploying)
        get_settings.cache_clear()
        with session_scope(made.engine) as session:
            project = session.exec(select(Project).where(Project.name == "shop")).one()
            project.base_model = str(base_model)
            session.add(project)
        made.start_workers()
        yield made


def shop_file() -> bytes:
    def chat(question: str, answer: str) -> dict:
        said = [("system", SHOP_SYSTEM), ("user", question), ("assistant", answer)]
        return {"messages": [{"role": role, "content": content} for role, content in said]}

    return "".join(json.dumps(chat(q, a), ensure_ascii=False) + "\n" for q, a in QUESTIONS).encode()


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
    setup: Setup, telegram: TelegramServer, server: LocalServer
) -> None:
    core = Core(setup.engine, get_settings())
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
            raise AssertionError(f"timed out waiting for {what}; sent:\n{sent}\n{setup.worker_logs()}") from None

    async def scenario() -> None:
        def start_bot() -> tuple[asyncio.Event, asyncio.Task]:
            stop = asyncio.Event()
            options = {"token": telegram.token, "api_url": telegram.url, "stop": stop, "pace_s": 0.1}
            return stop, asyncio.create_task(serve(core, **options))

        stop, bot = start_bot()
        await wait("the bot to poll", lambda: telegram.called("deleteWebhook"))
        document = telegram.add_file("shop.jsonl", shop_file())
        telegram.message(GROUP, ALICE, CAPTION, document=document)
        await wait("run 1 to train", lambda: runs(setup) and setup.state(1) == "training")

        stop.set()  # the bot goes away while the run trains, and comes back
        await bot
        await asyncio.sleep(1)
        stop, bot = start_bot()

        await wait("run 1 to wait for review", lambda: setup.settled(1, "reviewing", "failed"))
        assert setup.state(1) == "reviewing", setup.worker_logs()
        first = card_of(telegram, 1)
        await wait("the samples to review", lambda: len(review_cards(telegram, first)) == 2)
        fix, keep = review_cards(telegram, first)
        press(fix, "Fix")
        await wait("the prompt for the answer", lambda: asking(telegram, fix))
        telegram.message(GROUP, ALICE, FIXED, reply_to=asking(telegram, fix))
        press(keep, "Keep")
        await wait("both reviews", lambda: keep.buttons == [] and fix.buttons == [])
        press(first, "Retrain")

        await wait("run 2 to wait for review", lambda: runs(setup) == [1, 2] and setup.settled(2, "reviewing",
                    "failed"))  # fmt: skip
        assert setup.state(2) == "reviewing", setup.worker_logs()
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
        await wait("run 2 deployed", lambda: setup.settled(2, "deployed", "failed"))
        assert setup.state(2) == "deployed", setup.worker_logs()
        await wait("the deployment told", lambda: any("Roll back" in str(s.buttons) for s in in_thread(telegram,
                    second)))  # fmt: skip
        stop.set()
        await bot

    asyncio.run(scenario())

    # The deployed adapter answers on the embedded server under its version name.
    with Session(setup.engine) as session:
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


def runs(setup: Setup) -> list[int]:
    with Session(setup.engine) as session:
        return list(session.exec(select(Run.id).order_by(Run.id)).all())
