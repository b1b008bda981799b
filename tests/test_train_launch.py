"""The multi-process launch path: `accelerate launch` with two processes, DDP on CPU over gloo."""

import json
from pathlib import Path

import pytest
import yaml
from sqlmodel import Session, select
from typer.testing import CliRunner

from bot.cli import app
from engine.database import get_engine
from engine.train.tiny import build_tiny_model
from storage.models import Adapter, Metric, Run
from tests.training_data import add_dataset, qa_entries

QA = [(f"第{i}号订单发货了吗？", f"第{i}号订单已于{i}日发出。") for i in range(1, 7)]


@pytest.mark.slow
def test_two_processes_train_one_run(tmp_path: Path) -> None:
    model = build_tiny_model(tmp_path / "tiny")
    add_dataset(qa_entries(QA))
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        yaml.safe_dump(
            {
                "model_name_or_path": str(model),
                "num_train_epochs": 20,
                "per_device_train_batch_size": 1,
                "gradient_accumulation_steps": 1,
                "learning_rate": 5e-3,
                "lora_dropout": 0.0,
                "packing": False,
                "logging_steps": 5,
                "cutoff_len": 128,
            }
        ),
        encoding="utf-8",
    )
    result = CliRunner().invoke(
        app, ["train", "--project", "shop", "--dataset", "1", "--recipe", str(recipe), "--processes", "2"]
    )
    assert result.exit_code == 0, result.output
    # Rank 0's progress came back to the parent, and rank 0 alone recorded the run.
    assert "step 60/60" in result.output and "adapter: " in result.output
    with Session(get_engine()) as session:
        run = session.exec(select(Run)).one()
        metrics = session.exec(select(Metric).where(Metric.run_id == run.id)).all()
        adapter = session.exec(select(Adapter).where(Adapter.run_id == run.id)).one()
    assert run.state == "evaluating"
    report = json.loads((Path(adapter.path).parent / "train_report.json").read_text(encoding="utf-8"))
    assert report["processes"] == 2 and report["steps"] == 60
    # 6 samples x 20 epochs, one per process per step: 60 steps in two processes (120 in one).
    steps = [m.step for m in metrics]
    assert max(steps) == 60 and len(steps) == len(set(steps))
    losses = [m.loss for m in sorted(metrics, key=lambda m: m.step) if m.loss is not None]
    assert losses[-1] < losses[0] - 1.0
