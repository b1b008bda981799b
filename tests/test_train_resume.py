"""Resume: a training process killed with SIGKILL after a checkpoint continues from it when started again, with
its metrics intact (no step recorded twice) and the same result as a run that was never interrupted."""

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from sqlmodel import Session, col, select

from engine.database import get_engine
from engine.events import Event
from engine.train.recipe import Recipe
from engine.train.sft import last_complete_checkpoint, train
from engine.train.tiny import build_tiny_model
from storage.db import session_scope
from storage.models import Metric, Run
from tests.training_data import add_dataset, qa_entries

ROOT = Path(__file__).resolve().parents[1]
QA = [(f"第{i}号订单发货了吗？", f"第{i}号订单已于{i}日发出，请留意物流短信。") for i in range(1, 9)]
KILL_AT = 13  # after the checkpoint at step 10, before the one at 20

CHILD = """
import os, signal, sys
from transformers import TrainerCallback
from engine.database import get_engine
from engine.events import Event
from engine.train.recipe import Recipe
from engine.train.sft import train
from storage.db import session_scope


class Kill(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == {kill_at}:
            os.kill(os.getpid(), signal.SIGKILL)


with session_scope(get_engine()) as session:
    train(session, "shop", None, Recipe.model_validate_json(sys.argv[1]), callbacks=[Kill()])
"""


def recipe(model: Path) -> Recipe:
    return Recipe(
        model_name_or_path=str(model),
        num_train_epochs=6,
        per_device_train_batch_size=1,
        gradient_accumulation_steps=1,
        learning_rate=5e-3,
        lora_dropout=0.1,  # dropout makes the RNG state part of what a resume must restore
        packing=False,
        logging_steps=2,
        save_steps=10,
        cutoff_len=128,
    )


def train_until_killed(tmp_path: Path, child: str, recipe: Recipe) -> None:
    """Run the script `child` (it trains `recipe` and kills itself with SIGKILL) in a process of its own."""
    script = tmp_path / "child.py"
    script.write_text(textwrap.dedent(child), encoding="utf-8")
    killed = subprocess.run(
        [sys.executable, str(script), recipe.model_dump_json()],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]


def metrics(run_id: int) -> list[Metric]:
    with Session(get_engine()) as session:
        return list(session.exec(select(Metric).where(Metric.run_id == run_id).order_by(col(Metric.step))).all())


@pytest.mark.slow
def test_sigkilled_training_resumes_from_its_last_checkpoint(tmp_path: Path) -> None:
    model = build_tiny_model(tmp_path / "tiny")
    add_dataset(qa_entries(QA))

    train_until_killed(tmp_path, CHILD.format(kill_at=KILL_AT), recipe(model))
    with Session(get_engine()) as session:
        killed = session.exec(select(Run)).one()
        assert killed.state == "training"  # what a reconciler finds after a crash
    before = {m.step: m.loss for m in metrics(killed.id)}
    assert max(before) == KILL_AT - 1  # logged up to the kill (every 2 steps)

    events: list[Event] = []
    with session_scope(get_engine()) as session:
        resumed = train(session, "shop", None, None, run_id=killed.id, events=events.append)
    # It continued from the checkpoint at step 10; it did not start over.
    assert next(e.payload["done"] for e in events if e.type == "progress") == 12
    with session_scope(get_engine()) as session:
        uninterrupted = train(session, "shop", None, recipe(model))

    steps = [m.step for m in metrics(killed.id)]
    assert steps == [m.step for m in metrics(uninterrupted.run.id)] and len(steps) == len(set(steps))
    assert resumed.run.state == "evaluating"
    # Steps before the checkpoint were kept as the killed process wrote them; all losses match the clean run.
    again = {m.step: m.loss for m in metrics(killed.id)}
    assert all(again[step] == loss for step, loss in before.items() if step <= 10)
    clean = {m.step: m.loss for m in metrics(uninterrupted.run.id)}
    for step, loss in clean.items():
        if loss is not None:
            assert again[step] == pytest.approx(loss, rel=1e-3, abs=1e-3), step
    a = load_file(resumed.adapter_dir / "adapter_model.safetensors")
    b = load_file(uninterrupted.adapter_dir / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-4, rtol=1e-3)


def test_a_checkpoint_its_worker_died_writing_is_passed_over_for_the_one_before(tmp_path: Path) -> None:
    folder = tmp_path / "checkpoints"
    assert last_complete_checkpoint(folder) is None  # nothing trained yet
    for step in (4, 8, 12):
        (folder / f"checkpoint-{step}").mkdir(parents=True)
        (folder / f"checkpoint-{step}" / "adapter_model.safetensors").write_bytes(b"weights")
    (folder / "checkpoint-4" / "trainer_state.json").write_text('{"global_step": 4}', encoding="utf-8")
    (folder / "checkpoint-8" / "trainer_state.json").write_text('{"global_step": 8}', encoding="utf-8")
    (folder / "checkpoint-12" / "trainer_state.json").write_text('{"global_st', encoding="utf-8")  # cut off
    (folder / "checkpoint-16").mkdir()  # killed before the state was written at all
    assert last_complete_checkpoint(folder) == str(folder / "checkpoint-8")
    (folder / "checkpoint-8" / "trainer_state.json").unlink()
    assert last_complete_checkpoint(folder) == str(folder / "checkpoint-4")
