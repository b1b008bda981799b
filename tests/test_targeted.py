"""Targeted data for the next iteration (engine/loop/targeting.py), on SQLite and PostgreSQL: the planned counts follow
how far each weak sub-scenario falls below the gate and are stated before anyone retrains (in English and Chinese);
with the synthesis endpoint (the scripted OpenAI server) the next run's synthesize stage adds new unreviewed training
samples for exactly those tags, sees the reviewers' answers but never a test question, drops any sample that copies
one, and a resumed stage pays for no batch twice; without an endpoint the weak tags' samples are oversampled, and
the summary says so. Runs, evaluations and judgements are rows built directly: nothing is trained."""

from collections import Counter
from collections.abc import Iterator

import pytest
from openai_server import OpenAIServer, Reply, default_reply, make_samples, plan_of
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from bot.core.render import summary_message
from engine.data.dedup import jaccard
from engine.data.versions import Entry, get_or_create_dataset, load_entries, save_version
from engine.loop.prepare import PrepareError, synthesize_for_run
from engine.loop.prepare import plan_of as run_plan
from engine.loop.projects import get_or_create_project
from engine.loop.reviews import iteration_comparison, record_review, review_summary, start_next_iteration
from engine.loop.runs import retry_run
from engine.loop.targeting import oversampled
from engine.settings import get_settings
from engine.train.start import split_entries
from engine.work.jobs import next_stage
from storage.db import session_scope
from storage.models import DatasetVersion, Evaluation, Judgement, Run, SynthBatch
from storage.models import Sample as SampleRow
from tests.training_data import SHOP_SYSTEM, qa_entries

TRAIN = {
    "退货": [("可以退货吗？", "签收后7天内支持无理由退货。"), ("大衣能退吗？", "吊牌完好可以退。")] * 2,
    "物流": [("多久到货？", "一般三到五天送达。"), ("发什么快递？", "默认顺丰。")] * 2,
    "发票": [("怎么开发票？", "在订单页点击申请发票即可。"), ("能开专票吗？", "可以，填写税号即可。")],
}
# Test questions with the tuned model's scores: 退货 mean 2.25, 物流 4.5, 发票 3.5.
TEST = [
    ("退货", "耳机签收第八天了还能退货吗？运费谁出", "签收7天内可退。", 2.0),
    ("退货", "羊毛大衣试穿后不合适怎么退", "吊牌完好可以退。", 2.5),
    ("物流", "订单到哪了？", "已发货。", 4.5),
    ("发票", "电子发票抬头开错了怎么改", "可以申请重开。", 3.5),
]
CORRECTED = "签收后7天内支持无理由退货；质量问题的退货运费由本店承担。"


def _entries() -> list[Entry]:
    entries = []
    for tag, pairs in TRAIN.items():
        for entry in qa_entries([(q + f"（{i}）", a) for i, (q, a) in enumerate(pairs)], "train", system=SHOP_SYSTEM):
            entry.sample.tags = [tag]
            entries.append(entry)
    for tag, question, answer, _ in TEST:
        (entry,) = qa_entries([(question, answer)], "test", system=SHOP_SYSTEM)
        entry.sample.tags = [tag]
        entries.append(entry)
    return entries


def build(
    engine: Engine, *, gate: float = 4.0, settings: dict | None = None, project_name: str = "shop"
) -> tuple[int, list[int]]:
    """A project, run 1 on a split version, evaluated against a gate of `gate`: the run and its judgements."""
    with session_scope(engine) as session:
        project = get_or_create_project(session, project_name)
        project.settings = settings
        dataset = get_or_create_dataset(session, project)
        version = save_version(session, dataset, _entries(), kind="split", summary="test", parent=None).version
        run = Run(project_id=project.id, dataset_version_id=version.id, recipe={"lora_rank": 8}, state="reviewing")
        session.add(run)
        session.flush()
        return run.id, judge(session, run, [score for *_, score in TEST], gate)  # type: ignore[return-value]


def judge(session: Session, run: Run, scores: list[float], gate: float = 4.0) -> list[int]:
    """An evaluation of the run's test samples (in TEST's order) with these tuned scores: its judgements' ids."""
    gate_decision = {"checks": [{"name": "overall", "threshold": gate}]}
    evaluation = Evaluation(run_id=run.id, judge_kind="metric", scores={"gate": gate_decision}, gate_passed=False)
    session.add(evaluation)
    session.flush()
    rows = session.exec(
        select(SampleRow)
        .where(SampleRow.version_id == run.dataset_version_id, SampleRow.split == "test")
        .order_by(col(SampleRow.position))
    ).all()
    judgements = [
        Judgement(
            evaluation_id=evaluation.id,
            sample_id=row.id,
            position=position,
            question=question,
            reference=answer,
            tuned_answer="不知道。",
            overall=score,
            tags=[tag],
        )
        for position, (row, (tag, question, answer, _), score) in enumerate(zip(rows, TEST, scores, strict=True))
    ]
    session.add_all(judgements)
    session.flush()
    return [j.id for j in judgements]  # type: ignore[misc]


def fix_the_weakest(engine: Engine, judgement_id: int) -> None:
    with session_scope(engine) as session:
        record_review(session, judgement_id=judgement_id, reviewer="lead", verdict="fix", corrected_answer=CORRECTED)


def planned(engine: Engine, run_id: int) -> list[tuple[str, int]]:
    with Session(engine) as session:
        targeted = review_summary(session, run_id).targeted
        return [(t.tag, t.count) for t in targeted.tags] if targeted else []


@pytest.fixture
def no_endpoint(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in ("OPENAI_BASE_URL", "OPENAI_API_KEY", "TUNELOOP_SYNTH_BASE_URL", "TUNELOOP_SYNTH_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def test_planned_counts_follow_how_far_each_tag_falls_below_the_gate(
    db_engine: Engine, synth_server: OpenAIServer
) -> None:
    run_id, _ = build(db_engine)
    # 20 samples per point of shortfall: 退货 (2.25) 35, 发票 (3.5) 10; 物流 (4.5) is not weak. Weakest first.
    assert planned(db_engine, run_id) == [("退货", 35), ("发票", 10)]
    with Session(db_engine) as session:
        run = session.get(Run, run_id)
        summary = review_summary(session, run_id)
        english = summary_message(summary, run, "en")
        chinese = summary_message(summary, run, "zh")
    # Stated before anyone presses Retrain, with the button to do it, in both languages.
    assert "Retrain would: add 45 new samples for 退货 and 发票." in english.lines
    assert "重新训练将会：为 退货和发票 新增 45 个样本。" in chinese.lines
    assert [b.action.run for b in english.buttons] == [run_id] and synth_server.requests == []  # planning asks nothing

    harsher, _ = build(db_engine, gate=4.5, settings={"targeted_data": {"max_samples": 30}}, project_name="harsh")
    # A gate of 4.5: shortfalls 2.25 and 1.0 (45 and 20), scaled down to the project's 30 in all.
    assert planned(db_engine, harsher) == [("退货", 21), ("发票", 9)]
    fixed, _ = build(db_engine, settings={"targeted_data": {"counts": {"发票": 12}}}, project_name="fixed")
    assert planned(db_engine, fixed) == [("发票", 12)]  # the project's own counts; 退货 gets none
    off, _ = build(db_engine, settings={"targeted_data": {"enabled": False}}, project_name="off")
    assert planned(db_engine, off) == []


def test_without_an_endpoint_the_weak_tags_are_oversampled_and_the_summary_says_so(
    db_engine: Engine, no_endpoint: None
) -> None:
    run_id, _ = build(db_engine)
    with session_scope(db_engine) as session:
        run = session.get(Run, run_id)
        summary = review_summary(session, run_id)
        assert "no synthesis endpoint: oversampling 退货 ×3, 发票 ×3 instead of new data" in " ".join(
            summary_message(summary, run, "en").lines
        )
        assert "未配置合成端点：改为对 退货 ×3，发票 ×3 过采样，而非新增数据" in " ".join(
            summary_message(summary, run, "zh").lines
        )
        # Nothing was reviewed, yet there is something to retrain on: the weak sub-scenarios.
        following = start_next_iteration(session, run_id, by="lead")
        next_run = following.run
        plan = run_plan(next_run)
        assert plan is not None and plan.synthesize is None and plan.targeted is not None
        assert next_stage(session, next_run) == "train"  # no synthesis stage to wait for
        train, _ = split_entries(load_entries(session, following.version), 0.0, 42)
    before = Counter(s.tags[0] for s in train)
    after = Counter(s.tags[0] for s in oversampled(train, plan.targeted, 42))
    # Each weak tag's samples seen three times (capped: copies of few samples teach wording), the rest once.
    assert before == {"退货": 4, "物流": 4, "发票": 2}
    assert after == {"退货": 12, "物流": 4, "发票": 6}


def test_targeted_synthesis_adds_new_training_samples_and_never_a_test_question(
    db_engine: Engine, synth_server: OpenAIServer
) -> None:
    run_id, judgements = build(db_engine, settings={"targeted_data": {"counts": {"退货": 20, "发票": 10}}})
    fix_the_weakest(db_engine, judgements[0])
    copied = TEST[1][1]

    def copies_a_test_question(body: dict) -> Reply | None:
        # The model writes one sample around a test question, despite being told only its topics.
        if plan_of(body) is None:
            return None
        samples = make_samples(body)
        samples[0]["messages"][0]["content"] = copied.replace("怎么退", "应该怎么退呢")
        return Reply.samples(samples)

    synth_server.script(copies_a_test_question)
    with session_scope(db_engine) as session:
        following = start_next_iteration(session, run_id, by="lead")
        next_id, review_version = following.run.id, following.version.id
        assert next_stage(session, following.run) == "synthesize"
    with Session(db_engine, expire_on_commit=False) as session:
        synthesize_for_run(session, next_id)

    with Session(db_engine) as session:
        run = session.get(Run, next_id)
        version = session.get(DatasetVersion, run.dataset_version_id)
        assert version.kind == "synthesis" and version.parent_id == review_version and not version.reviewed
        entries = load_entries(session, version)
    new = [e for e in entries if e.sample.origin == "synthetic"]
    kept = [e for e in new if e.in_use]
    assert Counter(e.sample.tags[0] for e in new) == {"退货": 20, "发票": 10}
    assert [e.filter_rule for e in new if not e.in_use] == ["copies_test_prompt"]
    assert all(e.split == "train" and e.sample.messages[0].content == SHOP_SYSTEM for e in kept)
    test = [e.sample for e in entries if e.split == "test"]
    assert [s.prompt_text() for s in test] == [question for _, question, _, _ in TEST]  # the test split unchanged
    assert max(jaccard(e.sample.prompt_text(), t.prompt_text()) for e in kept for t in test) < 0.5

    batches = synth_server.batch_requests()
    assert len(batches) == 3  # 20 + 10 at 10 per request
    prompts = [body["messages"][-1]["content"] for body in batches]
    assert all(question not in prompt for prompt in prompts for _, question, _, _ in TEST)
    returns = [p for p in prompts if "Sub-scenario: 退货" in p]
    assert len(returns) == 2 and all(CORRECTED in p and "运费" in p for p in returns)  # the fix; a weak topic
    # Few-shot examples are the tag's training samples, never a test sample.
    assert all("吊牌完好可以退" in p or "无理由退货" in p for p in returns)

    # Iteration 2's report names what it changed beside each tag's score.
    with session_scope(db_engine) as session:
        judge(session, session.get(Run, next_id), [3.5, 3.0, 4.5, 3.5])
        comparison = iteration_comparison(session, next_id)
    assert comparison is not None
    assert "退货: 2.2 → 3.2 (+1.0) · 19 new samples, 1 fix" in comparison.lines  # the copy was not kept
    assert "发票: 3.5 → 3.5 (+0.0) · 10 new samples" in comparison.lines


def test_a_resumed_synthesize_stage_pays_for_no_batch_twice(db_engine: Engine, synth_server: OpenAIServer) -> None:
    run_id, _ = build(db_engine, settings={"targeted_data": {"counts": {"退货": 30, "发票": 10}}})
    with session_scope(db_engine) as session:
        next_id = start_next_iteration(session, run_id, by="lead").run.id
    # Two batches come back, then the endpoint refuses the key: the stage fails, keeping what it paid for.
    synth_server.script(default_reply, default_reply, Reply.error(401))
    with Session(db_engine, expire_on_commit=False) as session, pytest.raises(PrepareError, match="synthesize"):
        synthesize_for_run(session, next_id)
    first = [body["messages"] for body in synth_server.batch_requests()]
    paid = first[:2]  # the third was refused; a fourth, sent meanwhile, was cancelled before its reply came
    with Session(db_engine) as session:
        stored = session.exec(select(SynthBatch.batch_index).where(SynthBatch.status == "ok")).all()
    assert sorted(i for i in stored if i >= 0) == [0, 1]

    with session_scope(db_engine) as session:
        retry_run(session, next_id, "lead")
    with Session(db_engine, expire_on_commit=False) as session:
        synthesize_for_run(session, next_id)
    again = [body["messages"] for body in synth_server.batch_requests()][len(first) :]
    assert len(again) == 4 - len(paid)  # 30 + 10 at 10 per request: only the batches not paid for
    assert not any(messages in paid for messages in again)
    with Session(db_engine) as session:
        run = session.get(Run, next_id)
        entries = load_entries(session, session.get(DatasetVersion, run.dataset_version_id))
    assert Counter(e.sample.tags[0] for e in entries if e.sample.origin == "synthetic") == {"退货": 30, "发票": 10}
