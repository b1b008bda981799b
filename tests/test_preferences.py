"""Preference pairs from reviews: a Fix of a judged sample is a pair (prompt, corrected answer over the tuned
model's answer); the latest review of a judgement decides; pairs accumulate per project across iterations."""

from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from engine.loop.preferences import count_pairs, project_pairs
from engine.loop.projects import get_project
from engine.loop.reviews import record_review, start_next_iteration
from storage.db import session_scope
from storage.models import Judgement, PreferencePair
from tests.test_reviews import SHOP_SYSTEM, TEST, TEST_TAGS, _evaluate, build, review


def pairs(engine: Engine) -> list:
    with Session(engine) as session:
        return project_pairs(session, get_project(session, "shop").id)


def test_a_fix_of_a_judged_sample_is_a_pair_of_corrected_over_tuned_answer(db_engine: Engine) -> None:
    world = build(db_engine)
    review(db_engine, judgement_id=world.judgement_ids[0], reviewer="amy", verdict="fix", corrected_answer="可以退。")
    review(db_engine, judgement_id=world.judgement_ids[1], reviewer="amy", verdict="keep")
    review(db_engine, judgement_id=world.judgement_ids[2], reviewer="amy", verdict="drop")

    [pair] = pairs(db_engine)
    assert [m.model_dump(exclude_none=True) for m in pair.messages] == [
        {"role": "system", "content": SHOP_SYSTEM},  # the prompt the model answered, system turn included
        {"role": "user", "content": TEST[0][0]},
        {"role": "assistant", "content": "可以退。"},
    ]
    assert pair.rejected.content == "调整后的回答"  # what the tuned model said
    assert pair.tags == [TEST_TAGS[0]]


def test_the_latest_review_of_a_judgement_decides_its_pair(db_engine: Engine) -> None:
    world = build(db_engine)
    first, second = world.judgement_ids[:2]
    review(db_engine, judgement_id=first, reviewer="amy", verdict="fix", corrected_answer="可以退。")
    review(db_engine, judgement_id=first, reviewer="bob", verdict="fix", corrected_answer="七天内可以退。")
    assert [p.messages[-1].content for p in pairs(db_engine)] == ["七天内可以退。"]  # replaced, not doubled
    review(db_engine, judgement_id=second, reviewer="amy", verdict="fix", corrected_answer="本店承担。")
    review(db_engine, judgement_id=second, reviewer="bob", verdict="drop")  # the question was wrong after all
    assert [p.messages[-1].content for p in pairs(db_engine)] == ["七天内可以退。"]
    # A "fix" that repeats the tuned answer prefers nothing.
    review(db_engine, judgement_id=first, reviewer="amy", verdict="fix", corrected_answer="调整后的回答")
    assert pairs(db_engine) == []
    with Session(db_engine) as session:
        assert len(session.exec(select(PreferencePair)).all()) == 3  # withdrawn pairs stay as history


def test_pairs_accumulate_per_project_across_iterations(db_engine: Engine) -> None:
    world = build(db_engine)
    review(db_engine, judgement_id=world.judgement_ids[0], reviewer="amy", verdict="fix", corrected_answer="可以退。")
    with session_scope(db_engine) as session:
        following = start_next_iteration(session, world.run_id, by="amy")
        following.run.state = "reviewing"
        evaluation = _evaluate(session, following.run.id, 3.5, [3.0, 3.5, 4.0], win_rate=0.6, chrf=31, invalid_rate=0)
        judgement = session.exec(
            select(Judgement).where(Judgement.evaluation_id == evaluation.id, Judgement.position == 1)
        ).one()
        record_review(session, judgement_id=judgement.id, reviewer="amy", verdict="fix", corrected_answer="本店承担。")
    with Session(db_engine) as session:
        assert count_pairs(session, get_project(session, "shop").id) == 2
        runs = {p.run_id for p in session.exec(select(PreferencePair)).all()}
        assert runs == {world.run_id, following.run.id}
