"""Synthesis against a scripted local OpenAI-compatible server, through the real `openai` client."""

import asyncio
import collections
import hashlib
import json
import random
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

import pytest
from openai import AsyncOpenAI
from openai_server import OpenAIServer, Reply, default_reply, make_samples, plan_of
from sqlalchemy.engine import Engine
from sqlmodel import select
from typer.testing import CliRunner

from engine.data.sample import Message, Sample
from engine.data.synth import (
    Budget,
    Scenario,
    SynthError,
    SynthOutcome,
    SynthRequest,
    allocate,
    extract_json,
    make_client,
    plan_batches,
    render_markdown,
    synthesize,
)
from engine.data.versions import Entry, get_or_create_dataset, load_entries, resolve_version, save_version
from engine.events import Event, ignore_events
from engine.llm import estimate_cost, parse_retry_after, retry_delay
from engine.loop.projects import get_or_create_project
from engine.settings import Settings, get_settings
from storage.db import make_engine, session_scope
from storage.migrate import upgrade
from storage.models import SynthBatch

ROOT = Path(__file__).resolve().parents[1]
TASK = "电商客服对话,回答关于退货、换货、物流查询的问题"
SCENARIOS = {"退货": 3, "换货": 2, "物流": 5}


@pytest.fixture(autouse=True)
def fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    # Tiny back-off and timeout so the fault tests take milliseconds, not minutes.
    monkeypatch.setenv("TUNELOOP_SYNTH_BACKOFF_BASE_S", "0.01")
    monkeypatch.setenv("TUNELOOP_SYNTH_BACKOFF_MAX_S", "0.05")
    monkeypatch.setenv("TUNELOOP_SYNTH_TIMEOUT_S", "0.5")
    monkeypatch.setenv("TUNELOOP_SYNTH_MAX_ATTEMPTS", "4")
    for name in ("OPENAI_BASE_URL", "OPENAI_API_KEY", "TUNELOOP_SYNTH_BASE_URL", "TUNELOOP_SYNTH_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    get_settings.cache_clear()


@pytest.fixture
def server() -> Iterator[OpenAIServer]:
    with OpenAIServer() as running:
        yield running


@pytest.fixture
def lite(tmp_path: Path) -> Iterator[Engine]:
    """SQLite only, for tests about the protocol rather than the database."""
    url = f"sqlite:///{tmp_path / 'synth.db'}"
    upgrade(url)
    engine = make_engine(url)
    yield engine
    engine.dispose()


def run(
    engine: Engine,
    server: OpenAIServer,
    events: list[Event] | None = None,
    project: str = "cs",
    **fields: object,
) -> SynthOutcome:
    request = SynthRequest(**{"task": TASK, "n": 30, "scenarios": dict(SCENARIOS), "model": "gpt-4o", **fields})

    async def go() -> SynthOutcome:
        client = AsyncOpenAI(base_url=server.base_url, api_key="test")
        try:
            return await synthesize(
                engine, project, request, client=client, events=events.append if events is not None else ignore_events
            )
        finally:
            await client.close()

    return asyncio.run(go())


def version_entries(engine: Engine, number: int | None = None, project: str = "cs") -> list[Entry]:
    with session_scope(engine) as session:
        return load_entries(session, resolve_version(session, project, "main", number))


def stored(engine: Engine) -> list[SynthBatch]:
    with session_scope(engine) as session:
        return list(session.exec(select(SynthBatch).order_by(SynthBatch.batch_index)).all())


# --- the whole job -------------------------------------------------------------------------------


def test_valid_batches_become_an_unreviewed_synthesis_version(db_engine: Engine, server: OpenAIServer) -> None:
    events: list[Event] = []
    outcome = run(db_engine, server, events, n=45, multi_turn_ratio=0.4)
    report = outcome.report
    assert outcome.change is not None and outcome.change.created
    version = outcome.change.version
    assert (version.kind, version.reviewed, version.sample_count) == ("synthesis", False, 45)
    assert version.detail == report
    assert report["requested"] == report["received"] == report["valid"] == report["kept"] == 45
    assert {k: v["requested"] for k, v in report["per_scenario"].items()} == {"退货": 14, "换货": 9, "物流": 22}
    assert report["batches"] == {"total": 6, "ok": 6, "failed": 0, "not_sent": 0}  # 2 + 1 + 3
    assert report["requests"] == 6 and report["retries"] == 0 and report["complete"]
    assert report["tokens"]["total"] > 0 and report["cost_usd"] > 0
    assert report["response_format"] == "json_schema"

    entries = version_entries(db_engine)
    assert all(e.sample.origin == "synthetic" and e.in_use for e in entries)
    tags = [e.sample.tags for e in entries]
    assert sorted(t[0] for t in tags) == sorted(["退货"] * 14 + ["换货"] * 9 + ["物流"] * 22)
    multi = [e for e in entries if sum(m.role == "user" for m in e.sample.messages) > 1]
    assert len(multi) == 18  # 40% of 45, as planned
    original = entries[0].sample.original
    assert original and {"persona", "mood", "difficulty", "turns", "batch", "synth_job"} <= set(original)

    # Every request asked for json_schema and carried a plan that spreads personas, moods, difficulty.
    bodies = server.batch_requests()
    assert all(b["response_format"]["type"] == "json_schema" for b in bodies)
    specs = [spec for b in bodies for spec in plan_of(b) or []]
    assert len({s["persona"] for s in specs}) >= 5 and len({s["mood"] for s in specs}) >= 4
    assert len({s["difficulty"] for s in specs}) == 3

    progress = [e.payload for e in events if e.type == "progress"]
    assert progress[-1]["done"] == progress[-1]["total"] == 6 and progress[-1]["stage"] == "synthesize"
    assert [e.payload["step"] for e in events if e.type == "stage"] == ["plan", "generate", "filter"]
    assert events[-1].type == "report"

    markdown = render_markdown(report)
    assert "请求 45 条 → 收到 45 → 有效 45 → 保留 45" in markdown and "• 物流: 22 / 22 / 22" in markdown

    # Running the same job again pays nothing and changes nothing.
    again = run(db_engine, server, n=45, multi_turn_ratio=0.4)
    assert len(server.requests) == 6
    assert again.change is not None and not again.change.created
    assert again.change.version.id == version.id


def test_sub_scenarios_asked_of_the_model_first(lite: Engine, server: OpenAIServer) -> None:
    outcome = run(lite, server, n=20, scenarios=None)
    first = server.requests[0]
    assert plan_of(first) is None and first["response_format"]["json_schema"]["name"] == "sub_scenarios"
    report = outcome.report
    assert report["scenario_source"] == "model"
    # The test server weighs 退货申请 0.5, 换货 0.2, 物流查询 0.3.
    assert {k: v["requested"] for k, v in report["per_scenario"].items()} == {"退货申请": 10, "换货": 4, "物流查询": 6}
    assert report["requests"] == 1 + 3
    # The plan is stored with the job: resuming never asks for (possibly different) scenarios again.
    plan_row = stored(lite)[0]
    assert plan_row.batch_index == -1 and [s["name"] for s in plan_row.samples or []] == [
        "退货申请",
        "换货",
        "物流查询",
    ]
    run(lite, server, n=20, scenarios=None)
    assert len(server.requests) == 4


def test_sub_scenarios_from_existing_tags(lite: Engine, server: OpenAIServer) -> None:
    seed = [
        Sample(messages=[Message(role="user", content=f"问题{i}关于{tag}"), Message(role="assistant", content="好的")])
        for i, tag in enumerate(["发票"] * 3 + ["会员"])
    ]
    for sample, tag in zip(seed, ["发票"] * 3 + ["会员"], strict=True):
        sample.tags = [tag]
    with session_scope(lite) as session:
        dataset = get_or_create_dataset(session, get_or_create_project(session, "cs"))
        save_version(session, dataset, [Entry(s) for s in seed], kind="upload", summary="seed", parent=None)
    outcome = run(lite, server, n=20, scenarios=None)
    assert outcome.report["scenario_source"] == "tags"
    assert {k: v["requested"] for k, v in outcome.report["per_scenario"].items()} == {"发票": 15, "会员": 5}
    assert all(plan_of(b) is not None for b in server.requests)  # no planning request
    assert outcome.change is not None and outcome.change.version.total_count == 24


def test_few_shot_examples_from_a_seed_version(lite: Engine, server: OpenAIServer) -> None:
    seed = Sample(
        messages=[Message(role="user", content="耳机坏了能退吗"), Message(role="assistant", content="可以,七天无理由")],
        tags=["退货"],
    )
    with session_scope(lite) as session:
        dataset = get_or_create_dataset(session, get_or_create_project(session, "cs"))
        save_version(session, dataset, [Entry(seed)], kind="upload", summary="seed", parent=None)
    run(lite, server, n=10, seed_version=1, few_shot=2)
    prompts = [b["messages"][-1]["content"] for b in server.batch_requests()]
    assert all("耳机坏了能退吗" in p for p in prompts)


# --- faults --------------------------------------------------------------------------------------


def test_429_retry_after_is_honoured(lite: Engine, server: OpenAIServer) -> None:
    server.script(Reply.error(429, headers={"Retry-After": "0.4"}))
    outcome = run(lite, server, n=10, scenarios={"退货": 1})
    assert len(server.arrivals) == 2
    waited = server.arrivals[1] - server.arrivals[0]
    assert 0.4 <= waited < 1.5  # Retry-After, not the 0.01–0.05 s back-off (upper bound: slow CI)
    assert outcome.report["retries"] == 1 and outcome.report["requests"] == 2 and outcome.report["kept"] == 10


def test_retry_after_as_http_date_and_in_ms() -> None:
    when = datetime.now(UTC) + timedelta(seconds=30)
    assert 28 <= (parse_retry_after({"retry-after": format_datetime(when, usegmt=True)}) or 0) <= 30
    assert parse_retry_after({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    assert parse_retry_after({"retry-after": "soon"}) is None
    assert parse_retry_after({}) is None
    settings = Settings(synth_retry_after_max_s=5, synth_backoff_base_s=1, synth_backoff_max_s=8)
    assert retry_delay(1, {"retry-after": "60"}, settings, random.Random(0)) == 5  # capped
    delays = [retry_delay(k, {}, settings, random.Random(k)) for k in range(1, 6)]
    for k, delay in enumerate(delays, start=1):
        ceiling = min(8, 2 ** (k - 1))
        assert ceiling / 2 <= delay <= ceiling  # exponential, with jitter


def test_500s_and_timeouts_are_retried(lite: Engine, server: OpenAIServer) -> None:
    server.script(Reply.error(500), Reply(delay=2.0), Reply.error(503))  # 3 faults, 4 attempts allowed
    outcome = run(lite, server, n=10, scenarios={"退货": 1})
    report = outcome.report
    assert report["retries"] == 3 and report["requests"] == 4 and report["kept"] == 10 and report["complete"]


def test_a_batch_that_keeps_failing_is_retried_on_the_next_run(lite: Engine, server: OpenAIServer) -> None:
    server.script(*[Reply.error(500)] * 4)  # TUNELOOP_SYNTH_MAX_ATTEMPTS=4
    first = run(lite, server, n=20, scenarios={"退货": 1}, concurrency=1)
    assert first.report["batches"] == {"total": 2, "ok": 1, "failed": 1, "not_sent": 0}
    assert not first.complete and first.report["kept"] == 10
    failed = [b for b in stored(lite) if b.status == "failed"]
    assert len(failed) == 1 and "500" in (failed[0].error or "")
    second = run(lite, server, n=20, scenarios={"退货": 1}, concurrency=1)
    assert second.complete and second.report["kept"] == 20
    assert len(server.requests) == 4 + 1 + 1  # only the failed batch was asked again


def test_json_schema_unsupported_falls_back_to_json_object_then_text(lite: Engine) -> None:
    with OpenAIServer(json_schema=False) as server:
        outcome = run(lite, server, n=30, concurrency=1, scenarios={"退货": 1})
        formats = [(b.get("response_format") or {}).get("type") for b in server.requests]
        assert formats == ["json_schema", "json_object", "json_object", "json_object"]
        assert outcome.report["response_format"] == "json_object" and outcome.report["kept"] == 30
    with OpenAIServer(json_schema=False, json_object=False) as server:
        outcome = run(lite, server, n=20, concurrency=1, scenarios={"退货": 1})
        formats = [(b.get("response_format") or {}).get("type") for b in server.requests]
        assert formats == ["json_schema", "json_object", None, None]
        assert outcome.report["response_format"] == "text" and outcome.report["kept"] == 20


def test_malformed_replies_are_counted_never_fatal(lite: Engine, server: OpenAIServer) -> None:
    good = {"messages": [{"role": "user", "content": "我的快递到哪了"}, {"role": "assistant", "content": "已发出"}]}

    def reply_with(samples: list) -> Reply:
        return Reply.samples(samples)

    truncated = json.dumps(
        {
            "samples": [
                good,
                {**good, "messages": [*good["messages"][:1], {"role": "assistant", "content": "明天到"}]},
                good,
            ]
        },
        ensure_ascii=False,
    )
    truncated = truncated[: truncated.rindex("已发出") - 5]  # cut inside the third sample
    server.script(
        Reply.text("抱歉,我无法生成这些数据。"),  # prose, no JSON at all
        Reply.text(truncated, finish_reason="length"),
        reply_with(
            [
                {"messages": [{"role": "user", "content": "能退吗"}]},  # no answer
                {"messages": [{"role": "user"}, {"role": "assistant", "content": "可以"}]},  # no content
                {"conversation": []},  # no messages
                {"messages": [{"role": "robot", "content": "x"}, {"role": "assistant", "content": "y"}]},
                {"messages": [{"role": "assistant", "content": "只有回答"}]},  # no user turn
                "just a string",
                {"messages": [{"role": "user", "content": "  "}, {"role": "assistant", "content": "y"}]},
            ]
        ),
        Reply.text(
            "好的,下面是数据:\n```json\n" + json.dumps({"samples": [good]}, ensure_ascii=False) + "\n```\n希望有帮助"
        ),
        Reply.text("{not json at all"),
    )
    outcome = run(lite, server, n=50, scenarios={"物流": 1}, concurrency=1)
    invalid = outcome.report["invalid"]
    assert invalid == {
        "reply_not_json": 2,
        "reply_truncated": 1,
        "no_final_answer": 1,
        "missing_content": 1,
        "missing_messages": 1,
        "unknown_role": 1,
        "no_user_turn": 1,
        "not_an_object": 1,
        "empty_content": 1,
    }
    # two salvaged from the truncated reply, one from the fenced prose; the first is a duplicate of those
    assert outcome.report["received"] == 2 + 7 + 1
    assert outcome.report["valid"] == 3
    assert outcome.report["filtered"] == {"exact_duplicate": 1}
    assert outcome.report["kept"] == 2


def test_duplicates_are_filtered_against_the_batch_and_the_dataset(lite: Engine, server: OpenAIServer) -> None:
    existing = Sample(
        messages=[
            Message(role="user", content="快递三天没到怎么办"),
            Message(role="assistant", content="我帮您查一下物流"),
        ],
        tags=["物流"],
    )
    with session_scope(lite) as session:
        dataset = get_or_create_dataset(session, get_or_create_project(session, "cs"))
        save_version(session, dataset, [Entry(existing)], kind="upload", summary="seed", parent=None)
    copy = {"messages": [m.model_dump(exclude_none=True) for m in existing.messages]}
    unique = make_samples({"messages": [{"role": "user", "content": '```json\n[{"turns": 1}, {"turns": 1}]\n```'}]})
    server.script(Reply.samples([copy, unique[0], unique[0], unique[1]]))
    outcome = run(lite, server, n=4, scenarios={"物流": 1})
    assert outcome.report["filtered"] == {"exact_duplicate": 2}
    assert outcome.report["kept"] == 2
    entries = version_entries(lite)
    assert len(entries) == 5 and sum(e.in_use for e in entries) == 3
    removed = [e for e in entries if not e.in_use]
    assert all(
        e.filter_rule == "exact_duplicate" and e.filter_reason and e.sample.origin == "synthetic" for e in removed
    )
    assert any("existing" in (e.filter_reason or "") for e in removed)


def test_near_duplicates_are_filtered_across_batches_and_within_one(lite: Engine, server: OpenAIServer) -> None:
    question = "我上周在你们店里买的那件羊毛大衣尺码偏小了，想换一个大一号的，请问需要怎么操作呢？"
    answer = (
        "您好，换货请在订单详情里点击申请售后，选择换货并填写想要的尺码，"
        "快递员会上门取件，新衣服会在收到旧衣服后两天内寄出。"
    )

    def sample(q: str, a: str) -> dict:
        return {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}

    first = sample(question, answer)
    other = sample("发票抬头开错了还能改吗？我需要公司的抬头，税号也要写上去，麻烦尽快帮我处理一下。", answer[::-1])
    third = sample(
        "快递显示已签收但我根本没收到包裹，家里也没人签过，这种情况应该找谁处理比较快？", answer[5:] + "谢谢"
    )
    server.script(
        Reply.samples([first, other]),
        Reply.samples(
            [
                sample(question, answer.replace("两天", "三天")),
                third,
                sample(third["messages"][0]["content"], answer[5:] + "感谢"),
            ]
        ),
    )
    outcome = run(lite, server, n=5, per_request=3, concurrency=1, scenarios={"换货": 1})
    assert outcome.report["filtered"] == {"near_duplicate": 2}
    reasons = [e.filter_reason for e in version_entries(lite) if not e.in_use]
    assert [reason.split(" (")[0] for reason in reasons] == [
        "near-duplicate of sample #1",
        "near-duplicate of sample #4",
    ]


# --- budget and resumption -----------------------------------------------------------------------


def test_budget_stops_cleanly_and_a_bigger_one_resumes(lite: Engine, server: OpenAIServer) -> None:
    first = run(lite, server, n=100, concurrency=2, budget=Budget(max_requests=3))
    report = first.report
    assert len(server.requests) == 3
    assert report["stopped"] == "max_requests 3 reached" and not first.complete
    assert report["batches"]["not_sent"] == 7 and report["kept"] == 30
    # Batches are interleaved across sub-scenarios, so a partial result keeps the proportions.
    assert {k for k, v in report["per_scenario"].items() if v["received"]} == {"物流", "退货", "换货"}
    assert "预算已用尽" in render_markdown(report)

    second = run(lite, server, n=100, concurrency=2, budget=Budget(max_requests=20))
    assert len(server.requests) == 10 and second.complete
    assert second.change is not None and second.change.version.sample_count == 100  # replaced, not doubled
    assert second.change.version.number == 2


def test_token_and_cost_budgets(lite: Engine, server: OpenAIServer) -> None:
    outcome = run(lite, server, n=100, concurrency=1, budget=Budget(max_tokens=1))
    assert len(server.requests) == 1 and outcome.report["stopped"] == "max_tokens 1 reached"
    outcome = run(lite, server, n=100, concurrency=1, job="cost", budget=Budget(max_cost_usd=0.01))
    assert outcome.report["stopped"] == "max_cost_usd 0.01 reached"
    assert 0.01 <= outcome.report["cost_usd"] < 0.01 + 0.01  # stops at the first reply past the limit


def test_killed_midway_resumes_without_paying_twice(db_engine: Engine) -> None:
    with OpenAIServer(delay=0.05) as server:

        async def interrupted() -> None:
            client = AsyncOpenAI(base_url=server.base_url, api_key="test")
            request = SynthRequest(task=TASK, n=200, scenarios=dict(SCENARIOS), concurrency=4, model="gpt-4o")
            task = asyncio.create_task(synthesize(db_engine, "cs", request, client=client))
            while sum(b.status == "ok" and b.batch_index >= 0 for b in stored(db_engine)) < 6:
                await asyncio.sleep(0.01)
            task.cancel()  # as Ctrl-C or a killed worker would
            with pytest.raises(asyncio.CancelledError):
                await task
            await client.close()

        asyncio.run(interrupted())
        paid = {b.batch_index: b.fingerprint for b in stored(db_engine) if b.status == "ok" and b.batch_index >= 0}
        paid_bodies = [json.dumps(b["messages"]) for b in server.requests]
        assert 6 <= len(paid) < 20
        seen = len(server.requests)

        outcome = run(db_engine, server, n=200, concurrency=4)
        new_bodies = [json.dumps(b["messages"]) for b in server.requests[seen:]]
        stored_bodies = {
            json.dumps(p.messages)
            for p in plan_batches(
                SynthRequest(task=TASK, n=200, scenarios=dict(SCENARIOS), model="gpt-4o"),
                [Scenario(k, v) for k, v in SCENARIOS.items()],
                "gpt-4o",
            )
            if p.index in paid
        }
        assert not stored_bodies & set(new_bodies)  # no stored batch was asked for again
        assert len(new_bodies) == 20 - len(paid)
        assert set(paid_bodies) | set(new_bodies) >= stored_bodies
        assert outcome.complete and outcome.report["kept"] == 200
        assert outcome.change is not None and outcome.change.version.sample_count == 200


def test_500_samples_complete_despite_injected_faults(lite: Engine) -> None:
    # Faults keyed by batch (the first two attempts of some batches fail), never by arrival order,
    # so the test does not depend on how concurrent requests interleave.
    attempts: collections.Counter[str] = collections.Counter()
    lock = threading.Lock()
    repeated = make_samples(
        {"messages": [{"role": "user", "content": "```json\n" + json.dumps([{"turns": 1}] * 10) + "\n```"}]}
    )

    def faulty(body: dict) -> Reply:
        key = json.dumps(body["messages"])
        with lock:
            attempts[key] += 1
            attempt = attempts[key]
        batch = int(hashlib.sha256(key.encode()).hexdigest(), 16) % 10
        faults = {
            0: [Reply.error(429, headers={"Retry-After": "0.02"}), Reply.error(500)],
            1: [Reply(delay=1.0)],  # past the 0.5 s timeout
            2: [Reply.error(503), Reply.error(429, headers={"retry-after-ms": "10"})],
        }.get(batch, [])
        if attempt <= len(faults):
            return faults[attempt - 1]
        if batch == 3:  # the same ten samples in every such batch: duplicates after the first
            return Reply.samples(repeated)
        if batch == 4:
            return Reply.text("好的,这是数据:" + json.dumps({"samples": make_samples(body)}, ensure_ascii=False))
        return default_reply(body)

    with OpenAIServer(responder=faulty) as server:
        outcome = run(lite, server, n=500, concurrency=8)
    report = outcome.report
    assert report["complete"] and report["batches"]["ok"] == 50
    assert report["retries"] > 10 and report["requests"] >= 50 + report["retries"]
    assert report["valid"] == 500 and report["kept"] == 500 - report["filtered"]["exact_duplicate"]
    assert report["filtered"]["exact_duplicate"] >= 10  # the repeated batches, after the first copy
    assert outcome.change is not None and outcome.change.version.sample_count == report["kept"]
    assert sum(v["kept"] for v in report["per_scenario"].values()) == report["kept"]


KILLABLE = """
import sys
from openai import AsyncOpenAI
from engine.data.synth import SynthRequest, synthesize_blocking
from storage.db import make_engine
scenarios = {"退货": 3, "换货": 2, "物流": 5}
request = SynthRequest(task=sys.argv[3], n=200, scenarios=scenarios, concurrency=2, model="gpt-4o")
client = AsyncOpenAI(base_url=sys.argv[2], api_key="test")
synthesize_blocking(make_engine(sys.argv[1]), "cs", request, client=client)
"""


def test_a_killed_process_resumes_without_paying_twice(lite: Engine, tmp_path: Path) -> None:
    url = str(lite.url)
    with OpenAIServer(delay=0.1) as server:
        process = subprocess.Popen([sys.executable, "-c", KILLABLE, url, server.base_url, TASK], cwd=ROOT)
        try:
            deadline = time.monotonic() + 30
            while sum(b.status == "ok" and b.batch_index >= 0 for b in stored(lite)) < 4:
                assert process.poll() is None and time.monotonic() < deadline, "the job ended before it was killed"
                time.sleep(0.02)
        finally:
            process.kill()  # SIGKILL: no cleanup, no finally blocks
            process.wait()
        paid = {b.batch_index for b in stored(lite) if b.status == "ok" and b.batch_index >= 0}
        assert 4 <= len(paid) < 20
        seen = len(server.requests)
        outcome = run(lite, server, n=200, concurrency=2)
        plans = plan_batches(
            SynthRequest(task=TASK, n=200, scenarios=dict(SCENARIOS), model="gpt-4o"),
            [Scenario(k, v) for k, v in SCENARIOS.items()],
            "gpt-4o",
        )
        paid_bodies = {json.dumps(p.messages) for p in plans if p.index in paid}
        asked_again = [b for b in server.requests[seen:] if json.dumps(b["messages"]) in paid_bodies]
        assert asked_again == [] and len(server.requests) - seen == 20 - len(paid)
        assert outcome.complete and outcome.change is not None and outcome.change.version.sample_count == 200


def test_a_job_name_reused_with_other_settings_is_refused(lite: Engine, server: OpenAIServer) -> None:
    run(lite, server, n=10, job="mine")
    with pytest.raises(SynthError, match="different settings"):
        run(lite, server, n=10, job="mine", task="另一个任务")


def test_planning_failures(lite: Engine, server: OpenAIServer) -> None:
    server.script(*[Reply.error(503)] * 4)
    with pytest.raises(SynthError, match="could not plan"):
        run(lite, server, n=10, scenarios=None)
    assert stored(lite) == []  # an outage does not fix the job's plan
    server.script(Reply.text("I cannot help with that."))
    outcome = run(lite, server, n=10, scenarios=None)
    assert outcome.report["scenario_source"] == "fallback" and outcome.report["kept"] == 10
    assert list(outcome.report["per_scenario"]) == [TASK]
    with pytest.raises(SynthError, match="other sub-scenarios"):
        run(lite, server, n=10, job="planned")
        run(lite, server, n=10, job="planned", scenarios={"退货": 1})


def test_a_refused_key_stops_the_job_and_names_the_variable_to_set(lite: Engine, server: OpenAIServer) -> None:
    server.responder = lambda body: Reply.error(401)  # OpenAI's invalid_api_key, on every request
    with pytest.raises(SynthError, match="refused") as raised:
        run(lite, server, n=10, scenarios={"a": 1})
    assert "set TUNELOOP_SYNTH_API_KEY (or OPENAI_API_KEY) to a valid API key" in str(raised.value)
    assert len(server.requests) == 1  # not retried: no request of the job can succeed


def test_replies_in_flight_when_the_key_is_refused_are_kept_and_never_paid_for_again(
    lite: Engine, server: OpenAIServer
) -> None:
    answered = 0

    def refuse_the_first(body: dict) -> Reply:
        nonlocal answered
        answered += 1  # the server answers one request at a time
        if answered == 1:
            return Reply.error(401)  # the key is revoked while the job's other three requests are out
        return replace(default_reply(body), delay=0.3)

    server.responder = refuse_the_first
    with pytest.raises(SynthError, match="refused"):
        run(lite, server, n=40, scenarios={"a": 1}, concurrency=4, job="revoked")
    with session_scope(lite) as session:
        kept = session.exec(select(SynthBatch).where(SynthBatch.status == "ok", SynthBatch.batch_index >= 0)).all()
    assert len(kept) == 3 and len(server.requests) == 4  # the three in flight were stored, nothing else was asked
    server.responder = default_reply  # a valid key again: only the refused batch is asked for
    outcome = run(lite, server, n=40, scenarios={"a": 1}, concurrency=4, job="revoked")
    assert len(server.requests) == 5 and outcome.report["kept"] == 40


def test_an_exhausted_quota_is_not_retried(lite: Engine, server: OpenAIServer) -> None:
    server.responder = lambda body: Reply.error(429, code="insufficient_quota")
    with pytest.raises(SynthError, match="no quota left") as raised:
        run(lite, server, n=10, scenarios={"a": 1})
    assert "You exceeded your current quota" in str(raised.value)
    assert len(server.requests) == 1  # waiting never clears it; each retry would be another request
    server.script(Reply.error(429))  # a rate limit (rate_limit_exceeded) is waited out and retried
    server.responder = default_reply
    outcome = run(lite, server, n=10, scenarios={"a": 1}, job="again")
    assert outcome.report["retries"] == 1 and outcome.report["kept"] == 10


# --- pieces --------------------------------------------------------------------------------------


def test_allocate_keeps_totals_and_proportions() -> None:
    assert allocate(500, {"退货": 3, "换货": 2, "物流": 5}) == {"退货": 150, "换货": 100, "物流": 250}
    assert sum(allocate(7, {"a": 1, "b": 1, "c": 1}).values()) == 7
    assert allocate(3, {"a": 0, "b": 1}) == {"a": 0, "b": 3}


def test_extract_json_finds_it_where_it_is() -> None:
    assert extract_json('{"a": 1}') == ({"a": 1}, "json")
    assert extract_json('Sure!\n```json\n{"a": 1}\n```') == ({"a": 1}, "fenced")
    assert extract_json('Here: {"a": 1} hope it helps') == ({"a": 1}, "embedded")
    cut = '{"samples": [{"messages": [{"role": "user", "content": "x"}]}, {"messages": [{"role": "us'
    data, how = extract_json(cut)
    assert how == "salvaged" and len(data["samples"]) == 1
    assert extract_json("no json here") == (None, None)


def test_cost_from_the_price_table() -> None:
    settings = Settings(synth_prices={"gpt-4o": (2.5, 10.0), "gpt-4o-mini": (0.15, 0.6)})
    assert estimate_cost("gpt-4o", 1_000_000, 100_000, settings) == pytest.approx(3.5)
    assert estimate_cost("gpt-4o-mini-2024-07-18", 1_000_000, 0, settings) == pytest.approx(0.15)
    assert estimate_cost("my-local-qwen", 10, 10, settings) is None


def test_unknown_model_has_no_cost(lite: Engine, server: OpenAIServer) -> None:
    outcome = run(lite, server, n=10, model="my-local-qwen")
    assert outcome.report["cost_usd"] is None and "未知" in render_markdown(outcome.report)


def test_endpoint_settings_precedence(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", "http://openai.example/v1")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-openai")
    settings = Settings()
    assert (settings.resolved_synth_base_url, settings.resolved_synth_api_key) == (
        "http://openai.example/v1",
        "sk-openai",
    )
    monkeypatch.setenv("TUNELOOP_SYNTH_BASE_URL", "http://mine.example/v1")
    monkeypatch.setenv("TUNELOOP_SYNTH_API_KEY", "sk-mine")
    client = make_client(Settings())
    assert str(client.base_url).startswith("http://mine.example/v1") and client.api_key == "sk-mine"
    assert client.max_retries == 0
    monkeypatch.delenv("TUNELOOP_SYNTH_API_KEY")
    monkeypatch.delenv("OPENAI_API_KEY")
    assert make_client(Settings()).api_key == "not-needed"  # a local server without keys
    monkeypatch.delenv("TUNELOOP_SYNTH_BASE_URL")
    monkeypatch.delenv("OPENAI_BASE_URL")
    with pytest.raises(SynthError, match="OPENAI_API_KEY"):
        make_client(Settings())


def test_plan_is_deterministic_and_spreads_turns() -> None:
    request = SynthRequest(task=TASK, n=40, scenarios=dict(SCENARIOS), multi_turn_ratio=0.25)
    scenarios = [Scenario(k, v) for k, v in SCENARIOS.items()]
    first = plan_batches(request, scenarios, "m")
    assert [p.fingerprint for p in first] == [p.fingerprint for p in plan_batches(request, scenarios, "m")]
    turns = [s["turns"] for p in first for s in p.specs]
    assert sum(t > 1 for t in turns) == 10 and max(turns) <= request.max_turns
    other = plan_batches(SynthRequest(task=TASK, n=40, scenarios=dict(SCENARIOS), seed=1), scenarios, "m")
    assert [p.fingerprint for p in first] != [p.fingerprint for p in other]


def test_bad_requests_are_refused_plainly() -> None:
    with pytest.raises(SynthError, match="n must be"):
        SynthRequest(task=TASK, n=0).check()
    with pytest.raises(SynthError, match="multi_turn_ratio"):
        SynthRequest(task=TASK, multi_turn_ratio=2).check()
    with pytest.raises(SynthError, match="job name"):
        SynthRequest(task=TASK, job="a b/c").check()


# --- the command ---------------------------------------------------------------------------------


def test_cli_synth(server: OpenAIServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from bot.cli import app

    monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
    monkeypatch.setenv("OPENAI_API_KEY", "test")
    get_settings.cache_clear()
    runner = CliRunner()
    md = tmp_path / "synth.md"
    args = ["data", "synth", "-p", "cs", "--task", TASK, "-n", "40", "--scenarios", "退货:3，换货:2,物流：5"]
    result = runner.invoke(app, [*args, "--max-requests", "2", "--markdown", str(md)])
    assert result.exit_code == 0, result.output
    assert "Synthesis report" in result.output and "Budget reached" in result.output and "cs/main v1" in result.output
    assert "请求 40 条" in md.read_text(encoding="utf-8")
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "resuming job" in result.output and "cs/main v2" in result.output
    assert len(server.requests) == 5  # 12 + 8 + 20 samples: 2 + 1 + 2 batches, each asked once
    result = runner.invoke(app, ["data", "synth", "-p", "cs", "--task", TASK, "--scenarios", "退货:x"])
    assert result.exit_code == 2 and "needs a number" in result.output
    mix = ["--personas", "新手:2,老客户:1", "--moods", "着急", "--difficulty", "困难:1", "--job", "mix", "-n", "10"]
    result = runner.invoke(app, ["data", "synth", "-p", "cs", "--task", TASK, "--scenarios", "退货", *mix])
    assert result.exit_code == 0, result.output
    specs = plan_of(server.requests[-1]) or []
    assert {s["persona"] for s in specs} == {"新手", "老客户"} and {s["mood"] for s in specs} == {"着急"}
    assert sum(s["persona"] == "新手" for s in specs) == 7  # 2:1 of 10, largest remainder
    result = runner.invoke(app, ["data", "synth", "-p", "cs", "--task", TASK, "--difficulty", "难:-1"])
    assert result.exit_code == 2 and "--difficulty" in result.output
    monkeypatch.delenv("OPENAI_BASE_URL")
    monkeypatch.delenv("OPENAI_API_KEY")
    get_settings.cache_clear()
    result = runner.invoke(app, ["data", "synth", "-p", "cs", "--task", TASK, "-n", "5", "--job", "x"])
    assert result.exit_code == 2 and "no synthesis endpoint" in result.output
