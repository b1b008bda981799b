"""DDP, FSDP and DeepSpeed ZeRO-3: the shipped accelerate configs, how a recipe chooses one, and the checks that
run before any process starts. (FSDP and ZeRO-3 runs themselves need GPUs; the DDP path runs in
test_train_launch.)"""

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from accelerate.commands.config.config_args import load_config_from_file
from accelerate.commands.launch import _validate_launch_command, launch_command_parser
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin
from accelerate.utils.launch import prepare_multi_gpu_env
from sqlmodel import Session, select
from typer.testing import CliRunner

from bot.cli import app
from engine.database import get_engine
from engine.train import distributed, sft
from engine.train.distributed import (
    CONFIG_FILES,
    DEFAULT_DEEPSPEED,
    DistributedError,
    check_distributed,
    deepspeed_config,
)
from engine.train.launch import launch_command
from engine.train.recipe import RecipeError, load_recipe, parse_recipe
from storage.models import Run
from tests.training_data import add_dataset, qa_entries

EXPECTED = {"ddp": DistributedType.MULTI_GPU, "fsdp": DistributedType.FSDP, "zero3": DistributedType.DEEPSPEED}


@pytest.fixture
def with_deepspeed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(distributed, "deepspeed_installed", lambda: True)


def accelerate_args(command: list[str]):
    """What `accelerate launch` makes of our command line: its own parser and config-file defaults."""
    start = command.index("accelerate.commands.launch") + 1
    args = launch_command_parser().parse_args(command[start:])
    return _validate_launch_command(args)[0]


@pytest.mark.parametrize("name", ["ddp", "fsdp", "zero3"])
def test_each_shipped_config_loads_in_accelerate(name: str) -> None:
    config = load_config_from_file(str(CONFIG_FILES[name]))
    assert config.distributed_type == EXPECTED[name]
    assert (config.num_machines, config.use_cpu, config.mixed_precision) == (1, False, "no")  # precision: recipe's


def test_the_fsdp_config_shards_fully_and_suits_lora(monkeypatch: pytest.MonkeyPatch) -> None:
    fsdp = load_config_from_file(str(CONFIG_FILES["fsdp"])).fsdp_config
    assert fsdp["fsdp_sharding_strategy"] == "FULL_SHARD"
    assert fsdp["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
    assert fsdp["fsdp_state_dict_type"] == "SHARDED_STATE_DICT"
    assert fsdp["fsdp_use_orig_params"] is True  # frozen and trainable (LoRA) weights in one flat parameter
    # The environment `accelerate launch` gives the processes, and the plugin Accelerator builds from it, wraps
    # the model's decoder layer class.
    env = prepare_multi_gpu_env(accelerate_args(launch_command(1, 2, config_file=CONFIG_FILES["fsdp"])))
    assert env["ACCELERATE_USE_FSDP"] == "true" and env["FSDP_USE_ORIG_PARAMS"] == "true"
    for key, value in env.items():
        if key.startswith(("FSDP_", "ACCELERATE_USE_FSDP")):
            monkeypatch.setenv(key, value)
    # Broadcasting rank 0's weights (sync_module_states, with cpu_ram_efficient_loading) needs a GPU to exist.
    monkeypatch.setenv("FSDP_CPU_RAM_EFFICIENT_LOADING", "false")
    monkeypatch.setenv("FSDP_SYNC_MODULE_STATES", "false")
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tiny = Qwen2ForCausalLM(
        Qwen2Config(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2)
    )
    plugin = FullyShardedDataParallelPlugin()
    plugin.set_auto_wrap_policy(tiny)
    assert plugin.transformer_cls_names_to_wrap == ["Qwen2DecoderLayer"]
    assert plugin.sharding_strategy.name == "FULL_SHARD"


def test_the_zero3_config_is_llamafactorys_zero3() -> None:
    ds = json.loads(DEFAULT_DEEPSPEED.read_text(encoding="utf-8"))
    assert ds["zero_optimization"]["stage"] == 3
    assert ds["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True  # one adapter file
    assert ds["train_micro_batch_size_per_gpu"] == "auto"  # filled from the recipe by TrainingArguments
    zero3 = load_config_from_file(str(CONFIG_FILES["zero3"])).deepspeed_config
    assert zero3["zero_stage"] == 3 and zero3["zero3_init_flag"] is True


@pytest.mark.parametrize(
    ("values", "name", "accelerate_flag"),
    [
        ({}, "ddp", "multi_gpu"),
        ({"distributed": "fsdp"}, "fsdp", "use_fsdp"),
        ({"distributed": "zero3"}, "zero3", "use_deepspeed"),
        ({"deepspeed": "zero3"}, "zero3", "use_deepspeed"),
    ],
)
def test_the_launch_command_names_the_chosen_config(
    values: dict, name: str, accelerate_flag: str, with_deepspeed: None
) -> None:
    recipe = parse_recipe(values)
    chosen = check_distributed(recipe, 4)
    assert chosen == CONFIG_FILES[name] and chosen.is_file()
    command = launch_command(7, 4, config_file=chosen)
    assert command[command.index("--config_file") + 1] == str(chosen)
    assert command[-2:] == ["--run", "7"]
    args = accelerate_args(command)
    assert getattr(args, accelerate_flag) is True
    assert args.num_processes == 4  # --num_processes overrides the file's 2


def test_a_llamafactory_deepspeed_key_loads_and_means_zero3(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "lf.yaml"
    path.write_text(
        "stage: sft\ndo_train: true\nfinetuning_type: lora\ndeepspeed: examples/deepspeed/ds_z3_config.json\n",
        encoding="utf-8",
    )
    monkeypatch.chdir(tmp_path)
    recipe = load_recipe(path)
    assert recipe.distributed == "zero3"
    assert deepspeed_config(recipe) == DEFAULT_DEEPSPEED  # LF's example path, not here: the shipped file of that name
    own = tmp_path / "examples" / "deepspeed" / "ds_z3_config.json"
    own.parent.mkdir(parents=True)
    own.write_text("{}", encoding="utf-8")
    assert deepspeed_config(recipe) == own.resolve()  # a file that exists is the user's
    with pytest.raises(DistributedError, match="deepspeed: zero3"):
        deepspeed_config(parse_recipe({"deepspeed": "missing/ds_z2.json"}))
    assert (
        parse_recipe({"distributed": "zero3"}).deepspeed is None
        and deepspeed_config(parse_recipe({"distributed": "zero3"})) == DEFAULT_DEEPSPEED
    )
    assert parse_recipe({}).distributed == "ddp" and deepspeed_config(parse_recipe({})) is None


def test_contradicting_or_misspelt_distributed_keys_are_errors() -> None:
    with pytest.raises(RecipeError, match="deepspeed needs distributed: zero3, not fsdp"):
        parse_recipe({"distributed": "fsdp", "deepspeed": "zero3"})
    with pytest.raises(RecipeError, match="'distributed'"):
        parse_recipe({"distributed": "fdsp"})
    with pytest.raises(RecipeError, match="did you mean 'deepspeed'"):
        parse_recipe({"deep_speed": "zero3"})


@pytest.mark.parametrize("choice", ["fsdp", "zero3"])
def test_sharding_needs_two_processes(choice: str, with_deepspeed: None) -> None:
    with pytest.raises(DistributedError, match="needs at least 2"):
        check_distributed(parse_recipe({"distributed": choice}), 1)
    check_distributed(parse_recipe({"distributed": choice}), 2)
    assert check_distributed(parse_recipe({}), 1) == CONFIG_FILES["ddp"]  # ddp in one process is plain training


def test_zero3_without_deepspeed_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(distributed, "deepspeed_installed", lambda: False)
    with pytest.raises(DistributedError, match="pip install deepspeed` on the GPU worker"):
        check_distributed(parse_recipe({"deepspeed": "zero3"}), 2)


def test_qlora_with_zero3_or_fsdp_stores_4bit_weights_in_the_compute_dtype(
    monkeypatch: pytest.MonkeyPatch, with_deepspeed: None
) -> None:
    """Supported upstream (PEFT >= 0.10, bitsandbytes >= 0.43) when the quantised weights are stored in a float
    dtype that ZeRO-3 / FSDP can shard."""
    seen: list[dict[str, Any]] = []
    monkeypatch.setattr(sft.AutoModelForCausalLM, "from_pretrained", lambda path, **kwargs: seen.append(kwargs))
    for choice in ("ddp", "fsdp", "zero3"):
        recipe = parse_recipe({"finetuning_type": "qlora", "distributed": choice, "model_name_or_path": "m"})
        check_distributed(recipe, 2)
        sft.load_model(recipe, bf16=True)
    storage = [kwargs["quantization_config"].bnb_4bit_quant_storage for kwargs in seen]
    assert storage == [torch.uint8, torch.bfloat16, torch.bfloat16]


def test_the_cli_refuses_fsdp_in_one_process_before_a_run_exists(tmp_path: Path) -> None:
    add_dataset(qa_entries([("q?", "a.")]))
    recipe = tmp_path / "fsdp.yaml"
    recipe.write_text(yaml.safe_dump({"model_name_or_path": "models/x", "distributed": "fsdp"}), encoding="utf-8")
    result = CliRunner().invoke(app, ["train", "--project", "shop", "--dataset", "1", "--recipe", str(recipe)])
    assert result.exit_code != 0 and "needs at least 2" in result.output
    with Session(get_engine()) as session:
        assert session.exec(select(Run)).all() == []


def test_resume_with_processes_continues_the_same_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`--resume RUN --processes N` launches the processes on RUN itself (they resume from its checkpoint)."""
    add_dataset(qa_entries([("q?", "a.")]))
    with Session(get_engine()) as session:
        from engine.loop.projects import get_project

        run = sft.start_run(session, get_project(session, "shop"), None, parse_recipe({"model_name_or_path": "m"}))
        run.state = "failed"
        session.commit()
        run_id = run.id
    commands: list[list[str]] = []
    popen = subprocess.Popen

    def fake_popen(command: list[str], **kwargs: Any) -> subprocess.Popen:
        commands.append(command)
        return popen([sys.executable, "-c", "raise SystemExit(3)"], **kwargs)

    monkeypatch.setattr("engine.train.launch.subprocess.Popen", fake_popen)
    result = CliRunner().invoke(app, ["train", "--project", "shop", "--resume", str(run_id), "--processes", "2"])
    assert result.exit_code != 0 and f"run {run_id} failed (exit 3)" in result.output, result.output
    assert commands[0][-2:] == ["--run", str(run_id)] and str(CONFIG_FILES["ddp"]) in commands[0]
    with Session(get_engine()) as session:
        assert [r.id for r in session.exec(select(Run)).all()] == [run_id]  # no new run
    result = CliRunner().invoke(app, ["train", "--project", "shop", "--processes", "2", "--out", str(tmp_path)])
    assert result.exit_code != 0 and "--out" in result.output
