"""Reviews and iterations: each verdict's effect on the next dataset version, the next run pointing at the
previous one, refusals in plain sentences, the latest review winning, and iteration k compared with k-1.
Runs, evaluations and judgements are rows built directly: nothing is trained."""

from dataclasses import dataclass

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, func, select

from engine.data.versions import Entry, get_or_create_dataset, load_entries, save_version
from engine.loop.projects import get_or_create_project
from engine.loop.reviews import (
    ReviewError,
    iteration_comparison,
    record_review,
    review_summary,
    start_next_iteration,
)
from storage.db import session_scope
from storage.models import AuditEvent, DatasetVersion, Evaluation, Judgement, Project, Review, Run
from storage.models import Sample as SampleRow
from tests.training_data import SHOP_SYSTEM, qa_entries

TRAIN = [
    ("可以退货吗？", "签收后7天内支持无理由退货。"),
    ("怎么开发票？", "在订单页点击申请发票即可。"),
    ("多久到货？", "一般三到五天送达。"),
]
TEST = [("耳机坏了能退吗？", "不能退。"), ("退货运费谁出？", "买家出。"), ("订单到哪了？", "已发货。")]
TEST_TAGS = ["退货", "退货", "物流"]
RECIPE = {"lora_rank": 8, "num_train_epochs": 3}


@dataclass
class World:
    run_id: int
    version_id: int
    judgement_ids: list[int]  # one per TEST sample, in order
    train_ids: list[int]  # sample row ids of the TRAIN samples, in order


def _entries() -> list[Entry]:
    test = qa_entries(TEST, "test", system=SHOP_SYSTEM)
    for entry, tag in zip(test, TEST_TAGS, strict=True):
        entry.sample.tags = [tag]
    return qa_entries(TRAIN, "train", system=SHOP_SYSTEM) + test


def _evaluate(
    session: Session,
    run_id: int,
    overall: float,
    per_sample: list[float],
    *,
    win_rate: float,
    chrf: float,
    invalid_rate: float,
    gate_passed: bool = False,
) -> Evaluation:
    """An evaluation of the run's test samples: the tuned model's mean, and one judgement per sample."""
    evaluation = Evaluation(
        run_id=run_id,
        judge_kind="llm",
        judge_model="judge-model",
        scores={
            "judge": {"means": {"tuned": {"overall": overall}}, "pairwise": {"win_rate": win_rate}},
            "reference": {"tuned": {"chrf": chrf}},
        },
        gate_passed=gate_passed,
        invalid_rate=invalid_rate,
    )
    session.add(evaluation)
    session.flush()
    run = session.get(Run, run_id)
    test_rows = session.exec(
        select(SampleRow)
        .where(SampleRow.version_id == run.dataset_version_id, SampleRow.split == "test")
        .order_by(col(SampleRow.position))
    ).all()
    for position, (row, score) in enumerate(zip(test_rows, per_sample, strict=True)):
        session.add(
            Judgement(
                evaluation_id=evaluation.id,
                sample_id=row.id,
                position=position,
                question=row.messages[-2]["content"],
                reference=row.messages[-1]["content"],
                tuned_answer="调整后的回答",
                overall=score,
                tags=row.tags,
            )
        )
    session.flush()
    return evaluation


def build(engine: Engine, *, reviewers: list[str] | None = None, settings: dict | None = None) -> World:
    """Project `shop`: a version with 3 training and 3 test samples, run 1 on it, evaluated once."""
    with session_scope(engine) as session:
        project = get_or_create_project(session, "shop")
        project.reviewers, project.settings = reviewers, settings
        dataset = get_or_create_dataset(session, project)
        version = save_version(session, dataset, _entries(), kind="split", summary="test", parent=None).version
        run = Run(project_id=project.id, dataset_version_id=version.id, recipe=RECIPE, state="reviewing")
        session.add(run)
        session.flush()
        evaluation = _evaluate(session, run.id, 3.0, [2.0, 3.0, 4.0], win_rate=0.5, chrf=30.0, invalid_rate=0.1)
        judgements = session.exec(
            select(Judgement.id).where(Judgement.evaluation_id == evaluation.id).order_by(col(Judgement.position))
        ).all()
        train = session.exec(
            select(SampleRow.id)
            .where(SampleRow.version_id == version.id, SampleRow.split == "train")
            .order_by(col(SampleRow.position))
        ).all()
        return World(run.id, version.id, list(judgements), list(train))


def entries_of(engine: Engine, version_id: int) -> list[Entry]:
    with session_scope(engine) as session:
        return load_entries(session, session.get(DatasetVersion, version_id))


def review(engine: Engine, **fields: object) -> Review:
    with session_scope(engine) as session:
        return record_review(session, **fields)  # type: ignore[arg-type]


def count(engine: Engine, table: type) -> int:
    with session_scope(engine) as session:
        return session.exec(select(func.count()).select_from(table)).one()


def test_each_verdict_changes_the_next_version_as_documented(db_engine: Engine) -> None:
    world = build(db_engine)
    before = entries_of(db_engine, world.version_id)
    review(
        db_engine,
        judgement_id=world.judgement_ids[0],
        reviewer="李医生",
        verdict="fix",
        corrected_answer="签收七天内，质量问题可以退。",
    )
    review(db_engine, judgement_id=world.judgement_ids[2], reviewer="李医生", verdict="keep", platform="slack")
    review(
        db_engine,
        sample_id=world.train_ids[1],
        reviewer="王律师",
        verdict="fix",
        corrected_answer="在订单页申请电子发票。",
    )
    review(db_engine, sample_id=world.train_ids[2], reviewer="王律师", verdict="drop", comment="到货时间已变")

    with session_scope(db_engine) as session:
        outcome = start_next_iteration(session, world.run_id, by="lead", platform="slack")
        assert outcome.created
        version, run = outcome.version, outcome.run
        assert (version.kind, version.parent_id, version.reviewed) == ("review", world.version_id, True)
        assert version.summary == (
            f"review of run {world.run_id}: 1 training answer fixed, 1 reference improved, 1 sample dropped"
        )
        assert (version.sample_count, version.total_count) == (5, 6)
        assert (run.iteration, run.parent_run_id, run.dataset_version_id) == (2, world.run_id, version.id)
        assert (run.state, run.requested_by, run.recipe) == ("queued", "lead", RECIPE)
        actions = session.exec(select(AuditEvent.action)).all()
        assert actions.count("review.recorded") == 4 and "run.next_iteration" in actions and "dataset.review" in actions

    after = entries_of(db_engine, version.id)
    assert len(after) == len(before)  # the fixed test sample is not added to train: that would leak the test set
    fixed_test = after[3]
    assert (fixed_test.split, fixed_test.sample.answer_text()) == ("test", "签收七天内，质量问题可以退。")
    assert fixed_test.sample.prompt_text() == "耳机坏了能退吗？" and fixed_test.sample.tags == ["退货"]
    assert after[1].sample.answer_text() == "在订单页申请电子发票。" and after[1].split == "train"
    dropped = after[2]
    assert dropped.filter_rule == "review_drop" and not dropped.in_use
    assert "王律师" in dropped.filter_reason and "到货时间已变" in dropped.filter_reason
    changed = [a.sample.content_hash != b.sample.content_hash for a, b in zip(before, after, strict=True)]
    assert changed == [False, True, False, True, False, False]  # kept and dropped samples say the same
    assert entries_of(db_engine, world.version_id) == before  # the old version is untouched


def test_starting_twice_returns_the_iteration_already_started(db_engine: Engine) -> None:
    world = build(db_engine)
    review(db_engine, sample_id=world.train_ids[0], reviewer="lead", verdict="drop")
    with session_scope(db_engine) as session:
        first = start_next_iteration(session, world.run_id, by="lead")
    versions, runs = count(db_engine, DatasetVersion), count(db_engine, Run)
    with session_scope(db_engine) as session:
        again = start_next_iteration(session, world.run_id, by="someone else")
    assert not again.created and (again.run.id, again.version.id) == (first.run.id, first.version.id)
    assert (count(db_engine, DatasetVersion), count(db_engine, Run)) == (versions, runs)


def test_reviews_that_change_nothing_are_refused_to_retrain_on(db_engine: Engine) -> None:
    world = build(db_engine)
    review(db_engine, judgement_id=world.judgement_ids[0], reviewer="lead", verdict="keep")
    # a "correction" identical to the answer already there changes nothing either
    review(db_engine, sample_id=world.train_ids[0], reviewer="lead", verdict="fix", corrected_answer=TRAIN[0][1])
    versions, runs = count(db_engine, DatasetVersion), count(db_engine, Run)
    with session_scope(db_engine) as session, pytest.raises(ReviewError) as refused:
        start_next_iteration(session, world.run_id, by="lead")
    assert str(refused.value) == (
        f"no reviews change the data of run {world.run_id}, and no sub-scenario is weak; nothing to retrain on"
    )
    assert (count(db_engine, DatasetVersion), count(db_engine, Run)) == (versions, runs)


def test_only_the_projects_reviewers_may_review(db_engine: Engine) -> None:
    world = build(db_engine, reviewers=["王律师", "李医生"])
    with pytest.raises(ReviewError, match="张三 may not review project shop; its reviewers are 王律师, 李医生"):
        review(db_engine, judgement_id=world.judgement_ids[0], reviewer="张三", verdict="keep")
    assert review(db_engine, judgement_id=world.judgement_ids[0], reviewer="王律师", verdict="keep").id is not None
    with session_scope(db_engine) as session:
        session.exec(select(Project)).one().reviewers = []  # an empty list lets anyone review
    assert review(db_engine, judgement_id=world.judgement_ids[0], reviewer="张三", verdict="keep").id is not None
    assert count(db_engine, Review) == 2


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"verdict": "fix"}, "a fix needs the corrected answer"),
        ({"verdict": "fix", "corrected_answer": "   "}, "a fix needs the corrected answer"),
        ({"verdict": "maybe"}, "a verdict is keep, fix or drop, not 'maybe'"),
        ({"verdict": "keep", "corrected_answer": "新答案"}, "a corrected answer goes with the verdict fix, not keep"),
        ({"verdict": "keep", "sample_id": 1}, "either the judgement or the sample"),
        ({"verdict": "keep", "judgement_id": None}, "either the judgement or the sample"),
        ({"verdict": "keep", "judgement_id": 999}, "there is no judgement 999 to review"),
        ({"verdict": "keep", "reviewer": " "}, "a review needs the reviewer's name"),
    ],
)
def test_bad_reviews_are_refused_in_plain_words(db_engine: Engine, fields: dict, message: str) -> None:
    world = build(db_engine)
    with pytest.raises(ReviewError, match=message):
        review(db_engine, **{"judgement_id": world.judgement_ids[0], "reviewer": "lead", **fields})
    assert count(db_engine, Review) == 0


def test_the_latest_review_of_a_sample_wins_and_all_are_kept(db_engine: Engine) -> None:
    world = build(db_engine)
    # test sample 1: fixed through its judgement, then dropped by another reviewer through its sample row
    review(db_engine, judgement_id=world.judgement_ids[1], reviewer="lead", verdict="fix", corrected_answer="商家出。")
    with session_scope(db_engine) as session:
        row_id = session.get(Judgement, world.judgement_ids[1]).sample_id
    review(db_engine, sample_id=row_id, reviewer="王律师", verdict="drop")
    # training sample 0: dropped, then kept again
    review(db_engine, sample_id=world.train_ids[0], reviewer="lead", verdict="drop")
    review(db_engine, sample_id=world.train_ids[0], reviewer="李医生", verdict="keep")
    with session_scope(db_engine) as session:
        summary = review_summary(session, world.run_id)
        version = start_next_iteration(session, world.run_id, by="lead").version
    assert summary.verdicts == {"keep": 1, "fix": 0, "drop": 1}
    after = entries_of(db_engine, version.id)
    assert after[4].filter_rule == "review_drop" and "王律师" in after[4].filter_reason
    assert after[4].sample.answer_text() == "买家出。"
    assert after[0].in_use and after[0].sample.answer_text() == TRAIN[0][1]
    assert count(db_engine, Review) == 4


def test_fixed_test_answers_train_the_next_iteration_only_when_the_project_opts_in(db_engine: Engine) -> None:
    world = build(db_engine, settings={"review_fixes_train": True})
    review(db_engine, judgement_id=world.judgement_ids[0], reviewer="lead", verdict="fix", corrected_answer="可以退。")
    with session_scope(db_engine) as session:
        outcome = start_next_iteration(session, world.run_id, by="lead")
    assert outcome.version.summary.endswith(
        "1 reference improved, 1 fixed test sample added to train, "
        "no synthesis endpoint: oversampling 退货 ×3 instead of new data"  # 退货 has a training sample now
    )
    after = entries_of(db_engine, outcome.version.id)
    assert len(after) == len(TRAIN) + len(TEST) + 1
    learned = after[-1]
    assert (learned.split, learned.sample.origin, learned.sample.tags) == ("train", "review", ["退货"])
    assert learned.sample.prompt_text() == "耳机坏了能退吗？" and learned.sample.answer_text() == "可以退。"
    assert after[3].split == "test" and after[3].sample.answer_text() == "可以退。"


def test_review_summary_says_what_the_next_iteration_would_change(db_engine: Engine) -> None:
    world = build(db_engine)
    with session_scope(db_engine) as session:
        assert review_summary(session, world.run_id).lines == [f"No samples of run {world.run_id} are reviewed yet."]
    review(db_engine, judgement_id=world.judgement_ids[0], reviewer="a", verdict="fix", corrected_answer="可以退。")
    review(db_engine, judgement_id=world.judgement_ids[1], reviewer="a", verdict="fix", corrected_answer="商家出。")
    review(db_engine, judgement_id=world.judgement_ids[2], reviewer="a", verdict="keep")
    review(db_engine, sample_id=world.train_ids[0], reviewer="b", verdict="drop")
    with session_scope(db_engine) as session:
        summary = review_summary(session, world.run_id)
    assert summary.verdicts == {"keep": 1, "fix": 2, "drop": 1}
    assert (summary.fixed_answers, summary.better_references, summary.dropped) == (0, 2, 1)
    assert summary.lines == [
        f"4 samples of run {world.run_id} reviewed: 1 kept, 2 fixed, 1 dropped.",
        "The next iteration would improve 2 references, remove 1 sample.",
    ]
    assert count(db_engine, DatasetVersion) == 1 and count(db_engine, Run) == 1  # a summary changes nothing


def test_iteration_k_is_compared_with_iteration_k_minus_1(db_engine: Engine) -> None:
    world = build(db_engine)
    review(db_engine, judgement_id=world.judgement_ids[0], reviewer="lead", verdict="fix", corrected_answer="可以退。")
    with session_scope(db_engine) as session:
        run = start_next_iteration(session, world.run_id, by="lead").run
        assert iteration_comparison(session, world.run_id) is None  # iteration 1 has no parent
        assert iteration_comparison(session, run.id) is None  # iteration 2 is not evaluated yet
        _evaluate(session, run.id, 3.5, [3.5, 3.5, 3.5], win_rate=0.75, chrf=41.0, invalid_rate=0.0, gate_passed=True)
        comparison = iteration_comparison(session, run.id)
    assert comparison is not None and (comparison.parent_iteration, comparison.iteration) == (1, 2)
    assert comparison.tags == {"物流": (4.0, 3.5), "退货": (2.5, 3.5)}
    assert comparison.lines == [
        "overall 3.0 → 3.5 (+0.5)",
        "win rate 50% → 75% (+25 pts)",
        "invalid judgements 10.0% → 0.0% (-10.0 pts)",
        "reference chrF 30.0 → 41.0 (+11.0)",
        "gate failed → passed",
        "物流: 4.0 → 3.5 (-0.5)",
        "退货: 2.5 → 3.5 (+1.0) · 1 fix",  # beside the score, what iteration 2 changed there
    ]
