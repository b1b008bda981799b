"""Training recipes: YAML whose keys follow LLaMA-Factory's names where a key means the same thing.

Unknown keys are errors, never silently ignored: a misspelt `lora_rnak` or a LLaMA-Factory key we do not
support would otherwise train with a default the user did not choose.
"""

import difflib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

DEFAULT_RECIPE = Path(__file__).with_name("recipes") / "default.yaml"

# LLaMA-Factory keys that tuneloop decides itself; their error says where the value comes from instead.
_DECIDED_ELSEWHERE = {
    "dataset": "the dataset comes from `tuneloop train --dataset VERSION`",
    "eval_dataset": "validation samples come from the dataset version's validation split or `val_size`",
    "output_dir": "a run writes into its own folder in the artifact store",
    "resume_from_checkpoint": "a restarted run resumes from its last checkpoint by itself",
    "overwrite_output_dir": "a run writes into its own folder in the artifact store",
}


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
    lora_alpha: float = Field(default=32, gt=0)
    lora_dropout: float = Field(default=0.05, ge=0, lt=1)
    lora_target: str | list[str] = "all"
    use_dora: bool = False
    cutoff_len: int = Field(default=2048, gt=0)
    num_train_epochs: float = Field(default=3.0, gt=0)
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
    train_on_prompt: bool = False
    val_size: float = Field(default=0.0, ge=0, description="Fraction (< 1) or count of training samples held out.")
    early_stopping_steps: int | None = Field(default=None, gt=0, description="Evaluations without improvement.")
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
                if top in _DECIDED_ELSEWHERE:
                    hint = f" ({_DECIDED_ELSEWHERE[top]})"
                else:
                    close = suggest_key(top)
                    hint = f" (did you mean '{close}'?)" if close else ""
                lines.append(f"{where}unknown key '{key}'{hint}")
            else:
                lines.append(f"{where}key '{key}': {problem['msg']}")
        raise RecipeError("\n".join(lines)) from None


def load_recipe(path: Path | str | None = None, **overrides: Any) -> Recipe:
    """The recipe in the YAML file `path` (the shipped default when None), with `overrides` applied."""
    path = Path(path) if path is not None else DEFAULT_RECIPE
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as error:
        raise RecipeError(f"{path}: cannot read the recipe: {error}") from None
    if not isinstance(values, dict):
        raise RecipeError(f"{path}: expected a mapping of recipe keys, got {type(values).__name__}")
    return parse_recipe({**values, **overrides}, source=path)


def recipe_yaml(recipe: Recipe) -> str:
    """The recipe as YAML, every key written out, so a run's folder says exactly how it was trained."""
    return yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False, allow_unicode=True)
