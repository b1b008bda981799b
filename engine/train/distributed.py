"""How several processes share a model: DDP, FSDP or DeepSpeed ZeRO-3, each an accelerate config shipped here.

A recipe chooses with `distributed: ddp|fsdp|zero3`, or LLaMA-Factory's `deepspeed: path/to/ds_config.json`
(which implies zero3). The checks run before any process starts, so a bad choice fails at once with its fix.
"""

import importlib.metadata
import importlib.util
from pathlib import Path

from engine.train.recipe import Recipe

ACCELERATE_CONFIGS = Path(__file__).with_name("accelerate")
CONFIG_FILES = {name: ACCELERATE_CONFIGS / f"{name}.yaml" for name in ("ddp", "fsdp", "zero3")}
DEFAULT_DEEPSPEED = ACCELERATE_CONFIGS / "ds_z3_config.json"
BITSANDBYTES_FOR_ZERO3 = (0, 43)  # QLoRA under ZeRO-3 / FSDP: PEFT 0.10's notes ask for bitsandbytes >= 0.43


class DistributedError(ValueError):
    """A distributed setting that cannot run; the message says how to fix it."""


def deepspeed_installed() -> bool:
    return importlib.util.find_spec("deepspeed") is not None


def config_file(recipe: Recipe) -> Path:
    """The accelerate config for the recipe's choice."""
    return CONFIG_FILES[recipe.distributed]


def deepspeed_config(recipe: Recipe) -> Path | None:
    """The recipe's DeepSpeed JSON as an absolute path (None unless zero3).

    `zero3` (or no `deepspeed` key) is the shipped ds_z3_config.json. A path is read relative to the working
    directory, as LLaMA-Factory does; a LLaMA-Factory YAML's `examples/deepspeed/ds_z3_config.json` that does not
    exist here falls back to the shipped file of that name, which follows LLaMA-Factory's."""
    if recipe.distributed != "zero3":
        return None
    if recipe.deepspeed in (None, "zero3"):
        return DEFAULT_DEEPSPEED
    path = Path(recipe.deepspeed).expanduser()
    if path.is_file():
        return path.resolve()
    if path.name == DEFAULT_DEEPSPEED.name:
        return DEFAULT_DEEPSPEED
    raise DistributedError(
        f"deepspeed config {recipe.deepspeed} not found (relative to {Path.cwd()}); "
        "write `deepspeed: zero3` for tuneloop's ZeRO-3 config"
    )


def check_distributed(recipe: Recipe, num_processes: int) -> Path:
    """The accelerate config for `recipe` in `num_processes` processes, or a DistributedError saying why not."""
    choice = recipe.distributed
    if choice == "ddp":
        return config_file(recipe)
    if num_processes < 2:
        raise DistributedError(
            f"distributed: {choice} shards the model across processes and needs at least 2 "
            f"(`tuneloop train --processes N`, one per GPU); with one process, remove `distributed`/`deepspeed`"
        )
    if choice == "zero3":
        if not deepspeed_installed():
            raise DistributedError("distributed: zero3 needs DeepSpeed: `pip install deepspeed` on the GPU worker")
        deepspeed_config(recipe)
    if recipe.finetuning_type == "qlora":
        # Supported upstream (PEFT >= 0.10): the 4-bit weights are stored in the compute dtype so that ZeRO-3 and
        # FSDP can shard them (load_model does this), which needs bitsandbytes >= 0.43.
        try:
            version = importlib.metadata.version("bitsandbytes")
        except importlib.metadata.PackageNotFoundError:
            return config_file(recipe)  # loading the 4-bit model says what to install
        if tuple(int(part) for part in version.split(".")[:2]) < BITSANDBYTES_FOR_ZERO3:
            raise DistributedError(f"qlora with distributed: {choice} needs bitsandbytes >= 0.43 (found {version})")
    return config_file(recipe)
