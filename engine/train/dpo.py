"""SFT then DPO, as one readable flow driven by the recipe (`stage: dpo` and its `pref_*` keys):

    SFT (engine/train/sft.py's flow) → sft_adapter/, checked, unless an earlier attempt of the run finished it
    → preference pairs: the dataset version's preference samples + the project's pairs from reviews,
      frozen in the run's folder (preference_pairs.jsonl) so that a resumed run trains on the same ones
    → prompt / chosen / rejected token ids, each answer masked as SFT masks it (answer + end-of-turn token)
    → the SFT adapter, trainable again, with a frozen copy of it as the reference (TRL's "ref" adapter):
      the reference is the SFT policy, not the bare base
    → TRL DPOTrainer (metrics numbered on from SFT's last step, checkpoints every save_steps, resumable)
    → adapter/ saved with its tokenizer and generation config → EOS check, merged check → report, Adapter row.

The DPO phase trains in one process.
"""

import json
import os
from collections.abc import Sequence
from pathlib import Path

from datasets import Dataset
from peft import PeftModel
from sqlmodel import Session
from transformers import PreTrainedTokenizerBase, PrinterCallback, TrainerCallback
from trl import DPOConfig, DPOTrainer

from engine.data.sample import Sample
from engine.events import EventSink
from engine.loop.preferences import PAIRS_FILE, project_pairs, read_pairs_file
from engine.train.cancel import CancelCallback
from engine.train.charts import write_loss_curve
from engine.train.metrics import MetricsCallback, run_metrics
from engine.train.prepare import assistant_spans, end_of_turn_token, load_tokenizer, message_dicts
from engine.train.recipe import Recipe
from engine.train.sft import (
    SFT_REPORT,
    RunData,
    TrainingError,
    TrainOutcome,
    check_adapter,
    last_complete_checkpoint,
    load_model,
    precision,
    record_adapter,
    record_files,
    run_sft,
    save_trained,
    training_arguments,
)
from storage.models import Project, Run

SFT_ADAPTER = "sft_adapter"
DPO_REPORT = "dpo_report.json"


def train_sft_then_dpo(
    session: Session,
    project: Project,
    run: Run,
    prepared: RunData,
    out_dir: Path,
    events: EventSink,
    callbacks: Sequence[TrainerCallback],
) -> TrainOutcome:
    """Train the run's SFT adapter, then DPO on top of it; the run's adapter is the DPO one."""
    recipe, version = prepared.recipe, prepared.version
    assert run.id is not None and recipe.model_name_or_path is not None
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise TrainingError("stage dpo trains in one process: run it without --processes")
    sft_report = out_dir / SFT_REPORT
    if not (sft_report.is_file() and (out_dir / SFT_ADAPTER).is_dir()):  # else a resumed run in its DPO phase
        run_sft(session, project, run, prepared, out_dir, events, callbacks, adapter_name=SFT_ADAPTER)
    sft_steps = int(json.loads(sft_report.read_text(encoding="utf-8"))["steps"])

    train, validation = prepared.train_samples, prepared.val_samples
    pairs = frozen_pairs(session, project, train, out_dir / PAIRS_FILE)
    tokenizer = load_tokenizer(out_dir / SFT_ADAPTER)  # the chat template SFT trained and saved with
    data, stats = tokenize_pairs(pairs, tokenizer, recipe.cutoff_len)
    trainer = build_dpo_trainer(recipe, tokenizer, data, out_dir / SFT_ADAPTER, out_dir / "dpo_checkpoints")
    trainer.add_callback(MetricsCallback(session, run.id, project.name, events, step_offset=sft_steps))
    canceller = CancelCallback(run.id, session.get_bind())  # type: ignore[arg-type]
    trainer.add_callback(canceller)
    for callback in callbacks:
        trainer.add_callback(callback)
    trainer.train(resume_from_checkpoint=last_complete_checkpoint(out_dir / "dpo_checkpoints"))
    if canceller.cancelled:
        raise TrainingError(f"run {run.id} was cancelled: DPO stopped at step {trainer.state.global_step}")
    trainer.model.delete_adapter("ref")  # the reference was a frozen copy for training; it is not served
    adapter_dir = save_trained(trainer, tokenizer, out_dir / "adapter")

    checks = check_adapter(adapter_dir, recipe, validation or train, tokenizer)  # the prompts SFT's check used
    metrics = run_metrics(session, run.id)
    loss_curve = write_loss_curve(metrics, out_dir / "loss_curve.png", title=f"{project.name} run {run.id}")
    history = [log for log in trainer.state.log_history if "rewards/margins" in log]
    report = out_dir / DPO_REPORT
    report.write_text(
        json.dumps(
            {
                "run": run.id,
                "reference": str(out_dir / SFT_ADAPTER),
                "pairs": stats,
                "sft_steps": sft_steps,
                "dpo_steps": trainer.state.global_step,
                "final_loss": history[-1]["loss"] if history and "loss" in history[-1] else None,
                "final_reward_margin": history[-1]["rewards/margins"] if history else None,
                "eos_checks": [{"what": c.what, "passed": c.passed, "message": c.message()} for c in checks],
            },
            ensure_ascii=False,
            indent=2,
        ),
        encoding="utf-8",
    )
    adapter = record_adapter(session, project, run, version.id, recipe, adapter_dir)
    record_files(session, project, run, [loss_curve, sft_report, report])
    session.commit()
    return TrainOutcome(run, adapter, adapter_dir, loss_curve, report, metrics, checks)


def frozen_pairs(session: Session, project: Project, train: Sequence[Sample], path: Path) -> list[Sample]:
    """The pairs the run trains on: read back from `path` when an earlier attempt wrote it, else the preference
    samples among `train` (an uploaded preference dataset) and the project's pairs from reviews, written there."""
    if path.is_file():
        return read_pairs_file(path)
    pairs = {s.content_hash: s for s in [s for s in train if s.rejected is not None]}
    for sample in project_pairs(session, project.id):  # type: ignore[arg-type]
        pairs.setdefault(sample.content_hash, sample)
    if not pairs:
        raise TrainingError(
            f"stage dpo has no preference pairs for project {project.name}: fix judged samples in a review, "
            "or upload a preference dataset (chosen and rejected answers)"
        )
    text = "".join(s.model_dump_json(exclude_none=True) + "\n" for s in pairs.values())
    partial = path.with_suffix(".partial")
    partial.write_text(text, encoding="utf-8")
    partial.replace(path)  # whole or not at all: a resumed run must not read half of it
    return list(pairs.values())


def tokenize_pair(sample: Sample, tokenizer: PreTrainedTokenizerBase, eot: str) -> dict[str, list[int]]:
    """Prompt, chosen and rejected token ids. Each answer is what SFT's loss mask trains on: the tokens from the
    answer's start through the end-of-turn token (not the newline the template writes after it)."""
    assert sample.rejected is not None
    ids: dict[str, list[int]] = {}
    for name, answer in (("chosen", sample.messages[-1]), ("rejected", sample.rejected)):
        messages = message_dicts(sample.model_copy(update={"messages": [*sample.messages[:-1], answer]}))
        text, spans = assistant_spans(tokenizer, messages, eot)
        start, end = spans[-1]
        encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        pieces = list(zip(encoded["input_ids"], encoded["offset_mapping"], strict=True))
        ids[f"{name}_prompt"] = [token for token, (at, _) in pieces if at < start]
        ids[f"{name}_ids"] = [token for token, (at, _) in pieces if start <= at < end]
    prompt = ids.pop("chosen_prompt")
    if ids.pop("rejected_prompt") != prompt:
        raise TrainingError("the prompt tokenizes differently before the chosen and the rejected answer")
    return {"prompt_ids": prompt, "chosen_ids": ids["chosen_ids"], "rejected_ids": ids["rejected_ids"]}


def tokenize_pairs(
    pairs: Sequence[Sample], tokenizer: PreTrainedTokenizerBase, cutoff_len: int
) -> tuple[Dataset, dict[str, int]]:
    """A Dataset of prompt_ids, chosen_ids and rejected_ids; pairs whose prompt alone fills `cutoff_len` are left
    out (nothing of either answer would remain to compare)."""
    eot = end_of_turn_token(tokenizer)
    rows: dict[str, list] = {"prompt_ids": [], "chosen_ids": [], "rejected_ids": []}
    dropped = 0
    for sample in pairs:
        item = tokenize_pair(sample, tokenizer, eot)
        if len(item["prompt_ids"]) >= cutoff_len:
            dropped += 1
            continue
        for key, value in item.items():
            rows[key].append(value)
    if not rows["prompt_ids"]:
        raise TrainingError(f"no preference pair's prompt fits in cutoff_len={cutoff_len}")
    return Dataset.from_dict(rows), {"pairs": len(rows["prompt_ids"]), "dropped": dropped}


def build_dpo_trainer(
    recipe: Recipe, tokenizer: PreTrainedTokenizerBase, data: Dataset, sft_adapter: Path, checkpoint_dir: Path
) -> DPOTrainer:
    """TRL's DPOTrainer on base + the SFT adapter (trainable). With no ref_model, TRL copies the adapter into a
    frozen "ref" adapter and computes the reference log-probabilities with it. `pref_ftx` is TRL's `sft` loss
    weighted beside the preference loss."""
    bf16, fp16 = precision(recipe)
    losses, weights = [recipe.pref_loss], [1.0]
    if recipe.pref_ftx:
        losses, weights = [recipe.pref_loss, "sft"], [1.0, recipe.pref_ftx]
    config = DPOConfig(
        output_dir=str(checkpoint_dir),
        beta=recipe.pref_beta,
        loss_type=losses,
        loss_weights=weights,
        max_length=recipe.cutoff_len,
        num_train_epochs=recipe.pref_num_train_epochs,
        learning_rate=recipe.pref_learning_rate,
        **training_arguments(recipe),
    )
    model = PeftModel.from_pretrained(load_model(recipe, bf16=bf16, fp16=fp16), str(sft_adapter), is_trainable=True)
    trainer = _PretokenizedDPOTrainer(model=model, args=config, train_dataset=data, processing_class=tokenizer)
    trainer.remove_callback(PrinterCallback)  # progress goes to storage and events, not to stdout
    return trainer


class _PretokenizedDPOTrainer(DPOTrainer):
    """DPOTrainer on pairs tokenize_pairs already tokenized with SFT's masking; TRL's own tokenization would
    train on the newline after the end-of-turn token too."""

    def _prepare_dataset(self, dataset, processing_class, args, dataset_name):  # type: ignore[no-untyped-def]
        return dataset
