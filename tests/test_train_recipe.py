"""Recipes: LLaMA-Factory key names, the seeds' defaults, and unknown keys as errors with a suggestion."""

from pathlib import Path

import pytest

from engine.train.recipe import DEFAULT_RECIPE, Recipe, RecipeError, load_recipe, parse_recipe, recipe_yaml

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "recipes"

# The shape of LLaMA-Factory's examples/train_lora/qwen2_5_lora_sft.yaml, restricted to the keys tuneloop shares.
LLAMAFACTORY_SFT = """\
### model
model_name_or_path: Qwen/Qwen2.5-1.5B-Instruct

### method
stage: sft
do_train: true
finetuning_type: lora
lora_rank: 8
lora_alpha: 16
lora_dropout: 0.1
lora_target: q_proj,v_proj
use_dora: false

### dataset
template: qwen
cutoff_len: 1024
val_size: 0.1
packing: false
train_on_prompt: false

### train
per_device_train_batch_size: 1
gradient_accumulation_steps: 8
learning_rate: 1.0e-4
num_train_epochs: 3.0
lr_scheduler_type: cosine
warmup_ratio: 0.1
weight_decay: 0.01
bf16: true
gradient_checkpointing: true
logging_steps: 10
save_steps: 500
seed: 42
report_to: none
"""


def test_defaults_follow_the_seeds() -> None:
    recipe = Recipe()
    assert (recipe.finetuning_type, recipe.lora_rank, recipe.lora_alpha, recipe.lora_target) == ("lora", 16, 32, "all")
    assert (recipe.learning_rate, recipe.lr_scheduler_type, recipe.warmup_ratio) == (2e-4, "cosine", 0.1)
    assert recipe.num_train_epochs == 3 and recipe.train_on_prompt is False
    assert recipe.bf16 is None and recipe.fp16 is None  # chosen from the device
    assert load_recipe(DEFAULT_RECIPE) == recipe  # the shipped file says what the code does


def test_a_llamafactory_sft_yaml_loads_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "qwen2_5_lora_sft.yaml"
    path.write_text(LLAMAFACTORY_SFT, encoding="utf-8")
    recipe = load_recipe(path)
    assert recipe.model_name_or_path == "Qwen/Qwen2.5-1.5B-Instruct"
    assert recipe.lora_target == ["q_proj", "v_proj"]  # LLaMA-Factory's comma-separated form
    assert (recipe.lora_rank, recipe.cutoff_len, recipe.val_size, recipe.bf16) == (8, 1024, 0.1, True)
    assert recipe.template == "qwen" and recipe.gradient_checkpointing is True
    # The shipped examples load too, and a recipe survives its own YAML.
    for example in EXAMPLES.glob("*.yaml"):
        loaded = load_recipe(example)
        assert parse_recipe(__import__("yaml").safe_load(recipe_yaml(loaded))) == loaded


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("lora_rnak", "did you mean 'lora_rank'?"),
        ("learning_rat", "did you mean 'learning_rate'?"),
        ("num_train_epoch", "did you mean 'num_train_epochs'?"),
        # LLaMA-Factory keys tuneloop does not support are refused, not ignored.
        ("per_device_eval_batch_size", "did you mean 'per_device_train_batch_size'?"),
        ("lora_alpha_ratio", "did you mean 'lora_alpha'?"),
        ("zzz_unrelated", "unknown key 'zzz_unrelated'"),
    ],
)
def test_unknown_keys_are_named_with_a_suggestion(tmp_path: Path, key: str, expected: str) -> None:
    path = tmp_path / "recipe.yaml"
    path.write_text(LLAMAFACTORY_SFT + f"{key}: 1\n", encoding="utf-8")
    with pytest.raises(RecipeError) as raised:
        load_recipe(path)
    message = str(raised.value)
    assert str(path) in message and f"unknown key '{key}'" in message and expected in message


def test_bad_values_and_files_are_plain_errors(tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match="key 'finetuning_type'"):
        parse_recipe({"finetuning_type": "prefix"})
    with pytest.raises(RecipeError, match="bf16 and fp16"):
        parse_recipe({"bf16": True, "fp16": True})
    with pytest.raises(RecipeError, match="key 'lora_rank'"):
        parse_recipe({"lora_rank": 0})
    with pytest.raises(RecipeError, match="save_steps to be a multiple of logging_steps"):
        parse_recipe({"early_stopping_steps": 3, "logging_steps": 10, "save_steps": 25})
    broken = tmp_path / "broken.yaml"
    broken.write_text("lora_rank: [1,\n", encoding="utf-8")
    with pytest.raises(RecipeError, match=r"broken\.yaml: cannot read"):
        load_recipe(broken)
    listed = tmp_path / "list.yaml"
    listed.write_text("- lora_rank\n", encoding="utf-8")
    with pytest.raises(RecipeError, match=r"list\.yaml: expected a mapping"):
        load_recipe(listed)
    with pytest.raises(RecipeError, match=r"missing\.yaml"):
        load_recipe(tmp_path / "missing.yaml")
