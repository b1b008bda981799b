"""`tuneloop export --run RUN --merge`: a merged model that answers as base+adapter did and stops at <|im_end|>."""

from pathlib import Path

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig
from typer.testing import CliRunner

from bot.cli import app
from engine.database import get_engine
from engine.train.recipe import Recipe
from engine.train.sft import train
from engine.train.tiny import IM_END, build_tiny_model
from storage.db import session_scope
from tests.training_data import add_dataset, qa_entries

QA = [
    ("你好", "您好，有什么可以帮您？"),
    ("可以退货吗？", "签收后7天内支持无理由退货。"),
    ("多久到货？", "一般三到五天送达。"),
]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


def test_export_merge_writes_a_checked_model(tiny: Path, tmp_path: Path) -> None:
    add_dataset(qa_entries(QA))
    recipe = Recipe(
        model_name_or_path=str(tiny),
        num_train_epochs=40,
        per_device_train_batch_size=3,
        gradient_accumulation_steps=1,
        learning_rate=5e-3,
        lora_dropout=0.0,
        cutoff_len=128,
    )
    with session_scope(get_engine()) as session:
        outcome = train(session, "shop", None, recipe)

    out = tmp_path / "merged"
    result = CliRunner().invoke(app, ["export", "--run", str(outcome.run.id), "--merge", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "merged model: generation stopped at <|im_end|>" in result.output
    files = {p.name for p in out.iterdir()}
    assert {"model.safetensors", "config.json", "tokenizer.json", "chat_template.jinja"} <= files
    assert not {"adapter_config.json", "adapter_model.safetensors"} & files
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert tokenizer.convert_tokens_to_ids(IM_END) in GenerationConfig.from_pretrained(out).eos_token_id

    # The merged weights compute what base+adapter computes.
    merged = AutoModelForCausalLM.from_pretrained(out).eval()
    adapted = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny), outcome.adapter_dir).eval()
    inputs = tokenizer.apply_chat_template(
        [{"role": "user", "content": QA[1][0]}], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    with torch.no_grad():
        torch.testing.assert_close(merged(**inputs).logits, adapted(**inputs).logits, atol=1e-4, rtol=1e-4)

    # Without --merge the adapter is copied as it is; a run that never trained has nothing to export.
    plain = CliRunner().invoke(app, ["export", "--run", str(outcome.run.id), "--out", str(tmp_path / "adapter")])
    assert plain.exit_code == 0 and (tmp_path / "adapter" / "adapter_config.json").exists()
    missing = CliRunner().invoke(app, ["export", "--run", "99", "--merge"])
    assert missing.exit_code == 1 and "no run 99" in missing.output
