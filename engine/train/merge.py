"""Merging an adapter into its base model, and exporting a run's result for serving elsewhere.

A merged model is only as good as its stopping: it is saved with the tokenizer and chat template it was trained
with and a generation config whose EOS includes the template's end-of-turn token, then checked like the adapter.
"""

import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from peft import PeftModel
from sqlmodel import Session, select
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig, PreTrainedModel

from engine.data.versions import load_entries
from engine.train.eos import EosCheck, check_saved_model, check_stops, eos_ids, eos_prompts
from engine.train.prepare import end_of_turn_token
from engine.train.recipe import Recipe
from engine.train.start import split_entries
from storage.models import Adapter, DatasetVersion, Run


class ExportError(RuntimeError):
    """A run that has nothing to export, or whose export does not stop at the end-of-turn token."""


@dataclass
class ExportOutcome:
    run: Run
    path: Path
    merged: bool
    eos_check: EosCheck | None


def merged_model(adapter_dir: Path, base_model: str, dtype: torch.dtype = torch.float32) -> PreTrainedModel:
    """Base + adapter with the LoRA weights folded in (merge_and_unload), in full precision: merging into a
    4-bit base would quantise the adapter away."""
    base = AutoModelForCausalLM.from_pretrained(base_model, dtype=dtype)
    return PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()


def generation_config_for(folder: Path) -> GenerationConfig:
    """The saved generation config, with the chat template's end-of-turn token among its EOS ids."""
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    config = GenerationConfig.from_pretrained(str(folder))
    eot_id = tokenizer.convert_tokens_to_ids(end_of_turn_token(tokenizer))
    ids = eos_ids(config)
    if eot_id not in ids:
        config.eos_token_id = [eot_id, *ids]
    return config


def check_merged(
    adapter_dir: Path, base_model: str, prompts: Sequence[Sequence[dict]], *, max_new_tokens: int
) -> EosCheck:
    """The EOS check on the merged model, in memory (training runs it; export checks what it saved)."""
    model = merged_model(adapter_dir, base_model)
    tokenizer = AutoTokenizer.from_pretrained(str(adapter_dir))
    return check_stops(
        model,
        tokenizer,
        GenerationConfig.from_pretrained(str(adapter_dir)),
        prompts,
        max_new_tokens=max_new_tokens,
        what="merged model",
    )


def export_run(session: Session, run_id: int, out: Path, *, merge: bool) -> ExportOutcome:
    """Write run `run_id`'s result to `out`: the adapter as is, or (`merge`) a merged model, checked for EOS."""
    run = session.get(Run, run_id)
    if run is None:
        raise ExportError(f"no run {run_id}")
    adapter = session.exec(select(Adapter).where(Adapter.run_id == run_id)).first()
    if adapter is None or not Path(adapter.path).is_dir():
        raise ExportError(f"run {run_id} has no trained adapter (state: {run.state})")
    source = Path(adapter.path)
    if out.exists():
        shutil.rmtree(out)
    if not merge or adapter.finetuning_type == "full":
        shutil.copytree(source, out)  # a full fine-tune is already a whole model
        return ExportOutcome(run, out, merged=adapter.finetuning_type == "full", eos_check=None)

    model = merged_model(source, adapter.base_model)
    model.generation_config = generation_config_for(source)
    model.save_pretrained(str(out))
    AutoTokenizer.from_pretrained(str(source)).save_pretrained(str(out))
    model.generation_config.save_pretrained(str(out))

    prompts, max_new = _prompts(session, run, source)
    check = check_saved_model(out, prompts, max_new_tokens=max_new, what="merged model")
    if not check.passed:
        raise ExportError(f"EOS check failed: {check.message()}")
    return ExportOutcome(run, out, merged=True, eos_check=check)


def _prompts(session: Session, run: Run, tokenizer_dir: Path) -> tuple[list[list[dict]], int]:
    recipe = Recipe.model_validate(run.recipe or {})
    version = session.get(DatasetVersion, run.dataset_version_id) if run.dataset_version_id else None
    if version is None:
        raise ExportError(f"run {run.id} has no dataset version to take prompts from")
    train, validation = split_entries(load_entries(session, version), recipe.val_size, recipe.seed)
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    return eos_prompts(validation or train, tokenizer, recipe.cutoff_len)
