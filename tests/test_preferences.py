"""Preference pairs from reviews: a Fix of a judged sample is a pair (prompt, corrected answer over the tuned
model's answer); the latest review of a judgement decides; pairs accumulate per project across iterations."""

from collections.abc import Iterator

import pytest
import redis
from sqlalchemy.engine import Engine
from sqlmodel import Session, select
from typer.testing import CliRunner

from bot.cli import app
from bot.core.actions import Retrain, Review, SetLanguage, ShowReviewSummary
from bot.core.errors import UserError
from bot.core.grammar import parse
from bot.core.identity import Actor
from bot.core.perform import Core
from engine.loop.preferences import count_pairs, project_pairs
from engine.loop.projects import get_project
from engine.loop.reviews import record_review, start_next_iteration
from engine.settings import get_settings
from engine.work.jobs import queue_name
from storage.db import session_scope
from storage.models import Judgement, PreferencePair, Run
from tests.test_core import ALICE, core_on
from tests.test_reviews import RECIPE, SHOP_SYSTEM, TEST, TEST_TAGS, World, _evaluate, build, review


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


# --- the Retrain offer ------------------------------------------------------------------------------------------

LI = Actor("slack", "U0LI", "李工")
PREFERENCES_REDIS_DB = 8  # arq job ids such as 2:train:1 are global in a Redis database: this module's own


@pytest.fixture
def core(db_engine: Engine, redis_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Core]:
    with core_on(db_engine, redis_url, PREFERENCES_REDIS_DB, monkeypatch) as core:
        yield core


def fix(core: Core, world: World, index: int) -> None:
    answer = f"更正的回答{index}"
    core.perform(Review(run=world.run_id, judgement=world.judgement_ids[index], verdict="fix", answer=answer), ALICE)


def test_retrain_offers_sft_plus_dpo_once_the_project_has_enough_pairs(core: Core, db_engine: Engine) -> None:
    world = build(db_engine, settings={"dpo_min_pairs": 2})
    fix(core, world, 0)
    summary = core.perform(ShowReviewSummary(run=world.run_id), ALICE)[0]
    assert [b.action for b in summary.buttons] == [Retrain(run=world.run_id)]  # 1 pair: not yet
    with pytest.raises(UserError, match="SFT \\+ DPO needs 2 preference pairs from reviews; the project has 1"):
        core.perform(Retrain(run=world.run_id, dpo=True), ALICE)

    fix(core, world, 1)
    summary = core.perform(ShowReviewSummary(run=world.run_id), ALICE)[0]
    assert summary.lines[-1] == "Reviews have given 2 preference pairs: Retrain can also train SFT + DPO on them."
    plain, dpo = summary.buttons
    assert plain.action == Retrain(run=world.run_id)
    assert (dpo.label, dpo.command, dpo.action) == (
        "SFT + DPO on 2 pairs",
        f"retrain {world.run_id} dpo",
        Retrain(run=world.run_id, dpo=True),
    )
    assert parse(dpo.command) == dpo.action  # typed, it is the same as pressed
    core.perform(SetLanguage(language="zh"), LI)
    chinese = core.perform(ShowReviewSummary(run=world.run_id), LI)[0]
    assert chinese.lines[-1] == "审核已得到 2 对偏好数据：重新训练时也可以在 SFT 之后用它们做 DPO。"
    assert chinese.buttons[1].label == "SFT + DPO（2 对偏好数据）"

    started = core.perform(dpo.action, ALICE)
    assert started[0].lines == ["It trains SFT, then DPO on 2 preference pairs from reviews."]
    with Session(db_engine) as session:
        following = session.exec(select(Run).where(Run.parent_run_id == world.run_id)).one()
        assert following.recipe == {**RECIPE, "stage": "dpo"}  # the parent's recipe, with the DPO stage
    assert redis.Redis.from_url(core.settings.redis_url).zrange(queue_name("gpu"), 0, -1) == [
        f"{following.id}:train:1".encode()
    ]


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_by_default_sft_plus_dpo_waits_for_20_pairs(
    core: Core, db_engine: Engine, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    world = build(db_engine)
    for index in range(3):
        fix(core, world, index)
    summary = core.perform(ShowReviewSummary(run=world.run_id), ALICE)[0]
    assert [b.action for b in summary.buttons] == [Retrain(run=world.run_id)]
    monkeypatch.setenv("TUNELOOP_DATABASE_URL", db_url)
    get_settings.cache_clear()
    result = CliRunner().invoke(app, ["retrain", str(world.run_id), "--dpo", "--by", "amy"])
    assert result.exit_code == 2
    assert "SFT + DPO needs 20 preference pairs from reviews; the project has 3" in result.output
