"""Training end to end on the tiny model: LoRA and full fine-tuning memorise a small set, metrics and events are
recorded, the adapter reloads with PEFT and stops at <|im_end|>, and a model that does not stop fails the run."""

import json
import re
from pathlib import Path

import pytest
import torch
import yaml
from peft import PeftModel
from sqlalchemy.engine import Engine
from sqlmodel import Session, select
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig, PreTrainedTokenizerBase
from typer.testing import CliRunner

from bot.cli import app
from bot.core.grammar import parse_dataset
from engine.data.versions import Entry
from engine.database import get_engine
from engine.events import Event
from engine.train.eos import check_stops
from engine.train.metrics import overfitting_warning
from engine.train.prepare import load_tokenizer, prepare_data
from engine.train.recipe import Recipe
from engine.train.sft import TrainingError, adapter_digest, build_trainer, train
from engine.train.tiny import IM_END, build_tiny_model
from storage.db import session_scope
from storage.models import Adapter, Artifact, Metric, Run
from tests.training_data import SHOP_QA, SHOP_SYSTEM, add_dataset, qa_entries


def memorisable(split: str = "train") -> list[Entry]:
    return qa_entries(SHOP_QA, split, system=SHOP_SYSTEM)


def fast_recipe(model: Path, **overrides: object) -> Recipe:
    values = {
        "model_name_or_path": str(model),
        "num_train_epochs": 30,
        "per_device_train_batch_size": 2,
        "gradient_accumulation_steps": 1,
        "learning_rate": 5e-3,
        "lora_dropout": 0.0,
        "logging_steps": 5,
        "cutoff_len": 128,
    }
    return Recipe.model_validate({**values, **overrides})


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


def generate(model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, question: str) -> str:
    messages = [{"role": "system", "content": SHOP_SYSTEM}, {"role": "user", "content": question}]
    inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=40, do_sample=False)
    return tokenizer.decode(output[0, inputs["input_ids"].shape[1] :])


def test_lora_memorises_records_metrics_and_reloads(db_engine: Engine, tiny: Path) -> None:
    number = add_dataset(memorisable(), engine=db_engine)
    events: list[Event] = []
    with session_scope(db_engine) as session:
        outcome = train(session, "shop", number, fast_recipe(tiny), events=events.append)

    with Session(db_engine) as session:
        run = session.get(Run, outcome.run.id)
        assert run is not None and run.state == "evaluating" and run.error is None
        metrics = session.exec(select(Metric).where(Metric.run_id == run.id).order_by(Metric.step)).all()
        adapter = session.exec(select(Adapter).where(Adapter.run_id == run.id)).one()
        charts = session.exec(select(Artifact).where(Artifact.run_id == run.id, Artifact.kind == "chart")).all()
    losses = [m.loss for m in metrics if m.loss is not None]
    assert len(losses) >= 5 and losses[-1] < losses[0] - 1.0
    assert [m.step for m in metrics] == sorted({m.step for m in metrics})  # one row per step
    last = metrics[-1]
    assert last.learning_rate is not None and last.grad_norm is not None and last.epoch == pytest.approx(30)
    assert all(m.tokens_per_second and m.tokens_per_second > 0 for m in metrics[1:])
    assert last.eta_seconds == pytest.approx(0, abs=0.5)
    progress = [e for e in events if e.type == "progress"]
    assert len(progress) == len(metrics) and progress[-1].payload["done"] == progress[-1].payload["total"]
    assert events[-1].type == "report"

    # The adapter: its files, tokenizer, template and EOS, and the row that describes it.
    files = {p.name for p in outcome.adapter_dir.iterdir()}
    assert {"adapter_model.safetensors", "adapter_config.json", "tokenizer.json", "chat_template.jinja"} <= files
    im_end = AutoTokenizer.from_pretrained(outcome.adapter_dir).convert_tokens_to_ids(IM_END)
    assert im_end in GenerationConfig.from_pretrained(outcome.adapter_dir).eos_token_id
    assert (adapter.sha256, adapter.size_bytes) == adapter_digest(outcome.adapter_dir)
    assert (adapter.base_model, adapter.rank, adapter.finetuning_type) == (str(tiny), 16, "lora")
    assert adapter.dataset_version_id == run.dataset_version_id and adapter.recipe["lora_alpha"] == 32
    assert outcome.loss_curve.read_bytes().startswith(b"\x89PNG") and len(charts) == 1
    assert [c.what for c in outcome.eos_checks] == ["base+adapter", "merged model"]
    assert all(c.passed for c in outcome.eos_checks)

    # Reloaded with PEFT on the base model, it answers from memory and stops.
    tokenizer = AutoTokenizer.from_pretrained(outcome.adapter_dir)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny), outcome.adapter_dir).eval()
    answers = [generate(model, tokenizer, q) for q, _ in SHOP_QA]
    assert sum(answer == a + IM_END for answer, (_, a) in zip(answers, SHOP_QA, strict=True)) >= 4, answers


def test_full_fine_tuning_memorises(tiny: Path) -> None:
    engine = get_engine()
    number = add_dataset(memorisable(), engine=engine)
    with session_scope(engine) as session:
        outcome = train(session, "shop", number, fast_recipe(tiny, finetuning_type="full", learning_rate=3e-3))
    losses = [m.loss for m in outcome.metrics if m.loss is not None]
    assert losses[-1] < losses[0] - 2.0
    assert (outcome.adapter.finetuning_type, outcome.adapter.rank) == ("full", None)
    assert (outcome.adapter_dir / "model.safetensors").exists()
    model = AutoModelForCausalLM.from_pretrained(outcome.adapter_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(outcome.adapter_dir)
    assert generate(model, tokenizer, SHOP_QA[1][0]) == SHOP_QA[1][1] + IM_END


def test_a_model_that_does_not_stop_fails_the_run(tiny: Path) -> None:
    engine = get_engine()
    number = add_dataset(memorisable(), engine=engine)
    events: list[Event] = []
    untrained = fast_recipe(tiny, num_train_epochs=1, learning_rate=1e-6)
    with pytest.raises(TrainingError, match=r"EOS check failed: .*did not stop at <\|im_end\|>"):  # noqa: SIM117
        with session_scope(engine) as session:
            train(session, "shop", number, untrained, events=events.append)
    with Session(engine) as session:
        run = session.exec(select(Run)).one()
        assert run.state == "failed" and "EOS check failed" in (run.error or "")
    assert events[-1].type == "failure"


def test_eos_check_wants_the_end_of_turn_token_in_the_generation_config(tiny: Path) -> None:
    model = AutoModelForCausalLM.from_pretrained(tiny)
    tokenizer = AutoTokenizer.from_pretrained(tiny)
    prompts = [[{"role": "user", "content": "你好"}]]
    wrong = GenerationConfig(eos_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"))
    check = check_stops(model, tokenizer, wrong, prompts, max_new_tokens=4, what="base")
    assert not check.passed and "does not include <|im_end|>" in check.message()


def test_validation_loss_and_overfitting_warning(tiny: Path) -> None:
    engine = get_engine()
    number = add_dataset(memorisable() + memorisable("validation")[:2], engine=engine)
    with session_scope(engine) as session:
        outcome = train(session, "shop", number, fast_recipe(tiny, num_train_epochs=10, logging_steps=2))
    evals = [m for m in outcome.metrics if m.eval_loss is not None]
    assert len(evals) >= 3 and evals[-1].eval_loss < evals[0].eval_loss
    report = json.loads(outcome.report.read_text(encoding="utf-8"))
    assert report["data"]["validation"]["samples"] == 2 and report["final_eval_loss"] is not None

    def rows(*pairs: tuple[float, float | None]) -> list[Metric]:
        return [Metric(run_id=1, step=i, loss=loss, eval_loss=ev) for i, (loss, ev) in enumerate(pairs)]

    rising = rows((2.0, 2.1), (1.5, 1.9), (1.0, 2.0), (0.5, 2.3))
    assert "possible overfitting" in (overfitting_warning(rising) or "")
    assert overfitting_warning(rows((2.0, 2.1), (1.5, 1.9), (1.0, 1.8), (0.5, 1.7))) is None
    assert overfitting_warning(rows((2.0, 2.1), (2.2, 2.2), (2.4, 2.3))) is None  # both rising: not overfitting


def test_cli_train(tiny: Path, tmp_path: Path) -> None:
    number = add_dataset(memorisable())
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(fast_recipe(tiny).model_dump(mode="json")), encoding="utf-8")
    runner = CliRunner()
    result = runner.invoke(app, ["train", "--project", "shop", "--dataset", str(number), "--recipe", str(recipe)])
    assert result.exit_code == 0, result.output
    assert "adapter: " in result.output and "loss curve: " in result.output
    assert re.search(r"step (\d+)/\1, loss", result.output)  # progress through to the last step

    recipe.write_text("lora_rnak: 8\n", encoding="utf-8")
    result = runner.invoke(app, ["train", "--project", "shop", "--recipe", str(recipe)])
    assert result.exit_code == 2 and "did you mean 'lora_rank'?" in result.output
    recipe.write_text("lora_rank: 8\n", encoding="utf-8")
    result = runner.invoke(app, ["train", "--project", "shop", "--recipe", str(recipe)])
    assert result.exit_code == 2 and "no base model" in result.output
    result = runner.invoke(app, ["train", "--project", "nope", "--recipe", str(recipe)])
    assert result.exit_code == 1 and "no project named 'nope'" in result.output


def test_qlora_trains_a_4bit_nf4_base_with_a_paged_optimiser(tiny: Path, tmp_path: Path) -> None:
    recipe = fast_recipe(tiny, finetuning_type="qlora")
    tokenizer = load_tokenizer(tiny)
    data = prepare_data([e.sample for e in memorisable()], [], tokenizer, recipe)
    trainer = build_trainer(recipe, tokenizer, data, tmp_path / "checkpoints")
    quantized = [m for m in trainer.model.modules() if type(m).__name__ == "Linear4bit"]
    assert quantized and all(m.weight.quant_state.quant_type == "nf4" for m in quantized)
    assert all(m.weight.quant_state.nested for m in quantized)  # double quantisation
    assert trainer.args.optim == "paged_adamw_8bit"

    engine = get_engine()
    number = add_dataset(memorisable(), engine=engine)
    with session_scope(engine) as session:
        outcome = train(session, "shop", number, recipe)
    losses = [m.loss for m in outcome.metrics if m.loss is not None]
    assert losses[-1] < losses[0] - 2.0
    assert outcome.adapter.finetuning_type == "qlora" and all(c.passed for c in outcome.eos_checks)


def test_early_stopping_needs_validation_samples(tiny: Path) -> None:
    number = add_dataset(memorisable())
    recipe = fast_recipe(tiny, early_stopping_steps=2, save_steps=10)
    with pytest.raises(TrainingError, match="early_stopping_steps needs validation samples"):  # noqa: SIM117
        with session_scope(get_engine()) as session:
            train(session, "shop", number, recipe)


def test_dora_adapter(tiny: Path) -> None:
    number = add_dataset(memorisable())
    with session_scope(get_engine()) as session:
        outcome = train(session, "shop", number, fast_recipe(tiny, use_dora=True))
    config = json.loads((outcome.adapter_dir / "adapter_config.json").read_text(encoding="utf-8"))
    linear = ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]
    targets = {name.rsplit(".", 1)[-1] for name in config["target_modules"]}
    assert config["use_dora"] is True and sorted(targets) == linear  # `all`: every linear layer but the head
    losses = [m.loss for m in outcome.metrics if m.loss is not None]
    assert losses[-1] < losses[0]


@pytest.mark.parametrize(
    ("value", "expected"),
    [("3", ("main", 3)), ("latest", ("main", None)), ("faq", ("faq", None)), ("faq:2", ("faq", 2))],
)
def test_dataset_option(value: str, expected: tuple[str, int | None]) -> None:
    assert parse_dataset(value) == expected
