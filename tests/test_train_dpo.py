"""SFT then DPO (`stage: dpo`): the tiny model trains on preference pairs from reviewers' fixes, on top of the
run's SFT adapter with the SFT policy as the reference, and a DPO phase killed with SIGKILL resumes from its last
checkpoint to the result of a run never interrupted."""

import json
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from sqlmodel import Session, col, select

from engine.data.sample import Message, Sample
from engine.data.versions import Entry, load_entries
from engine.database import get_engine
from engine.events import Event
from engine.loop.projects import get_project
from engine.loop.reviews import record_review
from engine.train.dpo import frozen_pairs, tokenize_pair
from engine.train.prepare import end_of_turn_token, load_tokenizer
from engine.train.recipe import Recipe, RecipeError, parse_recipe
from engine.train.sft import train
from engine.train.start import split_entries
from engine.train.tiny import build_tiny_model
from storage.db import session_scope
from storage.models import DatasetVersion, Evaluation, Judgement, Run
from storage.models import Sample as SampleRow
from tests.test_train_resume import metrics, train_until_killed
from tests.training_data import add_dataset, qa_entries

TRAIN = [(f"第{i}号订单发货了吗？", f"第{i}号订单已于{i}日发出。") for i in range(1, 7)]
TEST = [(f"第{i}号订单到哪了？", f"第{i}号订单在路上。") for i in range(7, 13)]
WRONG = "不知道。"  # what the tuned model answered every test question
KILL_AT = 7  # a DPO step after the checkpoint at 5, before the one at 10

CHILD = """
import os, signal, sys
from transformers import TrainerCallback
from engine.database import get_engine
from engine.events import Event
from engine.train.recipe import Recipe
from engine.train.sft import train
from storage.db import session_scope


class KillInDpo(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        if args.output_dir.endswith("dpo_checkpoints") and state.global_step == {kill_at}:
            os.kill(os.getpid(), signal.SIGKILL)


with session_scope(get_engine()) as session:
    train(session, "shop", None, Recipe.model_validate_json(sys.argv[1]), callbacks=[KillInDpo()])
"""


def recipe(model: Path) -> Recipe:
    return Recipe(
        stage="dpo",
        model_name_or_path=str(model),
        num_train_epochs=6,
        per_device_train_batch_size=2,
        gradient_accumulation_steps=1,
        learning_rate=5e-3,
        packing=False,
        logging_steps=1,
        save_steps=5,
        cutoff_len=96,
        pref_learning_rate=2e-3,
        pref_num_train_epochs=4,
        pref_beta=0.1,
    )


def reviewed_pairs(uploaded: Sequence[Entry] = ()) -> None:
    """Project `shop`: a version of train (and `uploaded`) and test samples, and run 1 judged, each test answer
    fixed by a reviewer: six preference pairs."""
    add_dataset([*qa_entries(TRAIN), *uploaded, *qa_entries(TEST, "test")])
    with session_scope(get_engine()) as session:
        project = get_project(session, "shop")
        rows = session.exec(select(SampleRow).where(SampleRow.split == "test").order_by(col(SampleRow.id))).all()
        run = Run(project_id=project.id, dataset_version_id=rows[0].version_id, state="reviewing")
        session.add(run)
        session.flush()
        evaluation = Evaluation(run_id=run.id, judge_kind="metric")
        session.add(evaluation)
        session.flush()
        for position, row in enumerate(rows):
            judgement = Judgement(
                evaluation_id=evaluation.id,
                sample_id=row.id,
                position=position,
                question=row.messages[-2]["content"],
                reference=row.messages[-1]["content"],
                tuned_answer=WRONG,
            )
            session.add(judgement)
            session.flush()
            answer = row.messages[-1]["content"]
            record_review(session, judgement_id=judgement.id, reviewer="amy", verdict="fix", corrected_answer=answer)


def test_a_dpo_answer_is_masked_as_sft_masks_it(tmp_path: Path) -> None:
    tokenizer = load_tokenizer(build_tiny_model(tmp_path / "tiny"))
    sample = Sample(
        messages=[{"role": "user", "content": "发货了吗？"}, {"role": "assistant", "content": "已发出。"}],
        rejected=Message(role="assistant", content=WRONG),
    )
    eot = end_of_turn_token(tokenizer)
    ids = tokenize_pair(sample, tokenizer, eot)
    assert tokenizer.decode(ids["chosen_ids"]) == "已发出。" + eot  # through the end-of-turn token, no newline
    assert tokenizer.decode(ids["rejected_ids"]) == WRONG + eot
    assert tokenizer.decode(ids["prompt_ids"]).endswith("assistant\n")


def test_a_dpo_recipe_takes_llamafactorys_keys_and_refuses_what_it_cannot_train() -> None:
    values = {"stage": "dpo", "pref_beta": 0.2, "pref_loss": "ipo", "pref_ftx": 0.5}
    assert parse_recipe(values).pref_loss == "ipo"
    with pytest.raises(RecipeError, match="pref_loss"):
        parse_recipe({"stage": "dpo", "pref_loss": "orpo"})
    with pytest.raises(RecipeError, match="lora or qlora"):
        parse_recipe({"stage": "dpo", "finetuning_type": "full"})


@pytest.mark.slow
def test_dpo_trains_on_review_pairs_on_top_of_sft_and_resumes_after_sigkill(tmp_path: Path) -> None:
    model = build_tiny_model(tmp_path / "tiny")
    reviewed_pairs()
    train_until_killed(tmp_path, CHILD.format(kill_at=KILL_AT), recipe(model))
    with Session(get_engine()) as session:
        killed = session.exec(select(Run).where(Run.iteration == 2)).one()
        assert killed.state == "training"

    events: list[Event] = []
    with session_scope(get_engine()) as session:
        resumed = train(session, "shop", None, None, run_id=killed.id, events=events.append)
    with session_scope(get_engine()) as session:
        clean = train(session, "shop", None, recipe(model))

    for outcome in (resumed, clean):
        report = json.loads(outcome.report.read_text(encoding="utf-8"))
        assert report["pairs"] == {"pairs": len(TEST), "dropped": 0}  # every fix, once
        assert all(check["passed"] for check in report["eos_checks"]) and len(report["eos_checks"]) == 2  # + merged
        assert outcome.run.state == "evaluating"
        assert outcome.adapter.path == str(outcome.adapter_dir) and outcome.adapter_dir.name == "adapter"
    sft_steps = report["sft_steps"]
    # The resumed run went on from DPO's checkpoint at step 5: neither SFT nor DPO started over.
    assert next(e.payload["done"] for e in events if e.type == "progress") == sft_steps + 6
    steps = [m.step for m in metrics(clean.run.id)]
    # One series: SFT's steps, then DPO's numbered on after them; the resumed run recorded no step twice.
    assert steps == list(range(1, sft_steps + report["dpo_steps"] + 1))
    assert [m.step for m in metrics(killed.id)] == steps
    for step, (a, b) in enumerate(zip(metrics(killed.id), metrics(clean.run.id), strict=True), 1):
        assert a.loss == pytest.approx(b.loss, rel=1e-3, abs=1e-3), step

    log = [
        entry
        for entry in json.loads(
            (clean.adapter_dir.parent / "dpo_checkpoints" / "checkpoint-10" / "trainer_state.json").read_text()
        )["log_history"]
        if "rewards/margins" in entry
    ]
    # Step 1 is computed before any update: policy and reference are the same SFT policy, so no reward yet
    # (against the bare base they would differ by everything SFT learned).
    assert log[0]["rewards/chosen"] == pytest.approx(0, abs=1e-6)
    assert log[0]["rewards/rejected"] == pytest.approx(0, abs=1e-6)
    assert report["final_reward_margin"] > 0.5  # it learned to prefer the corrections

    a = load_file(resumed.adapter_dir / "adapter_model.safetensors")
    b = load_file(clean.adapter_dir / "adapter_model.safetensors")
    sft = load_file(clean.adapter_dir.parent / "sft_adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys() == sft.keys()  # the frozen reference copy is not saved with the adapter
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-4, rtol=1e-3)
    assert any(not torch.allclose(b[key], sft[key]) for key in b)  # DPO moved the SFT adapter


def test_a_run_trains_on_an_uploaded_preference_dataset_and_the_review_pairs_it_started_with(tmp_path: Path) -> None:
    uploaded = Sample(
        messages=[{"role": "user", "content": "能开专票吗？"}, {"role": "assistant", "content": "可以，请提供税号。"}],
        rejected=Message(role="assistant", content=WRONG),
    )
    reviewed_pairs([Entry(uploaded, "train")])
    frozen = tmp_path / "preference_pairs.jsonl"
    with session_scope(get_engine()) as session:
        project = get_project(session, "shop")
        version = session.exec(select(DatasetVersion)).one()
        train_samples, _ = split_entries(load_entries(session, version), 0.0, 0)
        pairs = frozen_pairs(session, project, train_samples, frozen)
    assert pairs[0] == uploaded and len(pairs) == 1 + len(TEST)  # the upload's pair, then the reviewers'
    assert [p.rejected.content for p in pairs[1:]] == [WRONG] * len(TEST)
    # A resumed run trains on what it started with, whatever was reviewed since.
    with session_scope(get_engine()) as session:
        judgement = session.exec(select(Judgement)).first()
        record_review(session, judgement_id=judgement.id, reviewer="amy", verdict="drop")
        assert frozen_pairs(session, get_project(session, "shop"), train_samples, frozen) == pairs
