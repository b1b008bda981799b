"""Training recipes: YAML whose keys follow LLaMA-Factory's names where a key means the same thing.

Unknown keys are errors, never silently ignored: a misspelt `lora_rnak` or a LLaMA-Factory key we do not
support would otherwise train with a default the user did not choose. tuneloop's own defaults are those of its
shipped recipe (recipes/default.yaml); any other recipe file is read as LLaMA-Factory reads it: unset keys take
LLaMA-Factory's defaults, and the keys that steer only LLaMA-Factory's I/O are reported as ignored
(engine/train/llamafactory.py).
"""

import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from engine.train import llamafactory
from engine.train.templates import NAMED_TEMPLATES

DEFAULT_RECIPE = Path(__file__).with_name("recipes") / "default.yaml"


class RecipeError(ValueError):
    """A recipe that cannot be used; the message names the file, the key and what is wrong."""


class Recipe(BaseModel):
    """One training run's settings. Defaults follow the seeds: LoRA rank 16, alpha 32 on every linear
    layer, lr 2e-4 cosine with 10% warmup, 3 epochs, loss on assistant turns only."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    # LLaMA-Factory's own header keys, accepted so that its SFT YAMLs load unchanged.
    stage: Literal["sft"] = "sft"
    do_train: Literal[True] = True

    model_name_or_path: str | None = Field(default=None, description="Base model folder; the project's if unset.")
    template: str | None = Field(
        default=None, description="Chat template: the tokenizer's own if unset, 'chatml'/'qwen', or a .jinja file."
    )
    finetuning_type: Literal["lora", "qlora", "full"] = "lora"
    lora_rank: int = Field(default=16, gt=0)
    lora_alpha: float | None = Field(default=None, gt=0, description="2 × lora_rank if unset, as in LLaMA-Factory.")
    lora_dropout: float = Field(default=0.05, ge=0, lt=1)
    lora_target: str | list[str] = "all"
    use_dora: bool = False
    cutoff_len: int = Field(default=2048, gt=0)
    num_train_epochs: float = Field(default=3.0, gt=0)
    max_steps: int | None = Field(default=None, gt=0, description="Optimizer steps to stop after; wins over epochs.")
    max_samples: int | None = Field(default=None, gt=0, description="Train on the first this many samples only.")
    per_device_train_batch_size: int = Field(default=4, gt=0)
    gradient_accumulation_steps: int = Field(default=2, gt=0)
    learning_rate: float = Field(default=2e-4, gt=0)
    lr_scheduler_type: str = "cosine"
    warmup_ratio: float = Field(default=0.1, ge=0, lt=1)
    weight_decay: float = Field(default=0.0, ge=0)
    bf16: bool | None = Field(default=None, description="Chosen from the device when unset.")
    fp16: bool | None = Field(default=None, description="Chosen from the device when unset.")
    gradient_checkpointing: bool = False
    packing: bool | None = Field(
        default=None, description="Chosen from the attention kernel when unset: on with flash attention."
    )
    group_by_length: bool | None = Field(
        default=None, description="Batches of samples of similar length; unset: on unless packing."
    )
    train_on_prompt: bool = False
    val_size: float = Field(default=0.0, ge=0, description="Fraction (< 1) or count of training samples held out.")
    early_stopping_steps: int | None = Field(default=None, gt=0, description="Evaluations without improvement.")
    token_metrics: bool = Field(
        default=False,
        description="Log entropy and token accuracy every step (TRL's fused loss path, which costs time on a CPU).",
    )
    logging_steps: int = Field(default=10, gt=0)
    save_steps: int = Field(default=500, gt=0)
    seed: int = 42
    report_to: str | list[str] = "none"
    # More than one process (`tuneloop train --processes N`): how they share the model. LLaMA-Factory's
    # `deepspeed: path/to/ds_config.json` implies zero3; `deepspeed: zero3` is tuneloop's shipped config.
    distributed: Literal["ddp", "fsdp", "zero3"] = Field(
        default="ddp", description="ddp (a replica per process), fsdp (fully sharded) or zero3 (DeepSpeed)."
    )
    deepspeed: str | None = Field(default=None, description="DeepSpeed JSON for zero3, or 'zero3' for the shipped one.")

    @field_validator("lora_target")
    @classmethod
    def _targets(cls, value: str | list[str]) -> str | list[str]:
        # LLaMA-Factory writes a list as "q_proj,v_proj"; "all" means every linear layer.
        if isinstance(value, str):
            names = [name.strip() for name in value.split(",") if name.strip()]
            if names == ["all"]:
                return "all"
            value = names
        if not value or "all" in value:
            raise ValueError("lora_target is 'all' or a list of module names (e.g. q_proj, v_proj)")
        return value

    @field_validator("template")
    @classmethod
    def _template(cls, value: str | None) -> str | None:
        if value is None or value in NAMED_TEMPLATES or Path(value).suffix in (".jinja", ".j2"):
            return value
        problem = llamafactory.template_problem(value)
        if problem:
            raise ValueError(problem)
        return value

    @field_validator("max_steps", mode="before")
    @classmethod
    def _no_max_steps(cls, value: Any) -> Any:
        return None if value == -1 else value  # transformers' and LLaMA-Factory's spelling of "no limit"

    @model_validator(mode="before")
    @classmethod
    def _deepspeed_means_zero3(cls, values: Any) -> Any:
        if isinstance(values, dict) and values.get("deepspeed") and values.get("distributed") in (None, "ddp", "fsdp"):
            if values.get("distributed") is not None:
                raise ValueError(f"deepspeed needs distributed: zero3, not {values['distributed']}")
            values = {**values, "distributed": "zero3"}
        return values

    @model_validator(mode="after")
    def _consistent(self) -> "Recipe":
        if self.lora_alpha is None:
            self.lora_alpha = 2 * self.lora_rank
        if self.bf16 and self.fp16:
            raise ValueError("bf16 and fp16 cannot both be true")
        if self.use_dora and self.finetuning_type == "full":
            raise ValueError("use_dora needs finetuning_type lora or qlora")
        if self.early_stopping_steps and self.save_steps % self.logging_steps:
            # The best checkpoint is kept at evaluations, which run every logging_steps.
            raise ValueError("early_stopping_steps needs save_steps to be a multiple of logging_steps")
        return self

    @property
    def uses_lora(self) -> bool:
        return self.finetuning_type in ("lora", "qlora")


def suggest_key(key: str) -> str | None:
    """The valid recipe key closest to `key`, if any is close."""
    close = difflib.get_close_matches(key, list(Recipe.model_fields), n=1, cutoff=0.6)
    return close[0] if close else None


def parse_recipe(values: dict[str, Any], source: str | Path | None = None) -> Recipe:
    """`values` as a Recipe, or a RecipeError naming the source, every bad key and a suggestion."""
    where = f"{source}: " if source else ""
    try:
        return Recipe.model_validate(values)
    except ValidationError as error:
        lines = []
        for problem in error.errors():
            key = ".".join(str(part) for part in problem["loc"]) or "recipe"
            if problem["type"] == "extra_forbidden":
                top = str(problem["loc"][0])
                if top in llamafactory.IGNORED:
                    hint = f" ({llamafactory.IGNORED[top]})"
                else:
                    close = suggest_key(top)
                    hint = f" (did you mean '{close}'?)" if close else ""
                lines.append(f"{where}unknown key '{key}'{hint}")
            else:
                lines.append(f"{where}key '{key}': {problem['msg']}")
        raise RecipeError("\n".join(lines)) from None


@dataclass
class LoadedRecipe:
    recipe: Recipe
    notes: list[str] = field(default_factory=list)  # what was read differently from LLaMA-Factory, and why


def read_recipe(path: Path | str | None = None, **overrides: Any) -> LoadedRecipe:
    """The recipe in the YAML file `path` (the shipped default when None), with `overrides` applied; a file other
    than the shipped default is read as LLaMA-Factory reads it (its defaults, its I/O keys ignored with a note)."""
    path = Path(path) if path is not None else DEFAULT_RECIPE
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as error:
        raise RecipeError(f"{path}: cannot read the recipe: {error}") from None
    if not isinstance(values, dict):
        raise RecipeError(f"{path}: expected a mapping of recipe keys, got {type(values).__name__}")
    values = {**values, **overrides}
    refusal = llamafactory.refusal(values, get_args(Recipe.model_fields["stage"].annotation))
    if refusal:
        raise RecipeError(f"{path}: {refusal}")
    notes: list[str] = []
    if path.resolve() != DEFAULT_RECIPE.resolve():
        values, notes = llamafactory.take_over(values)
    return LoadedRecipe(parse_recipe(values, source=path), notes)


def load_recipe(path: Path | str | None = None, **overrides: Any) -> Recipe:
    """`read_recipe` without its notes."""
    return read_recipe(path, **overrides).recipe


def recipe_yaml(recipe: Recipe) -> str:
    """The recipe as YAML, every key written out, so a run's folder says exactly how it was trained."""
    return yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False, allow_unicode=True)
