"""Supervised fine-tuning, as one readable flow driven by the recipe:

    dataset version → samples (train / validation) → token ids and loss mask → model (+ LoRA)
    → TRL SFTTrainer (metrics → storage and events, checkpoints every save_steps)
    → adapter saved with its tokenizer, chat template and generation config
    → EOS check on what was saved → loss curve, report, Adapter row.

`train` is what a GPU job calls. It commits as it goes (the Run row, every metric), because a run is
long and its progress must be visible, and kept, even when the process is killed.
"""

import json
import os
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from peft import LoraConfig
from sqlmodel import Session, col, select
from torch.utils.data import Sampler
from transformers import (
    AutoModelForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PrinterCallback,
    Trainer,
    TrainerCallback,
)
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_pt_utils import LengthGroupedSampler, get_length_grouped_indices
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from transformers.utils import is_flash_attn_2_available
from trl import SFTConfig, SFTTrainer

from engine.artifacts import get_artifact_store
from engine.data.sample import Sample
from engine.data.versions import DEFAULT_DATASET, resolve_version
from engine.events import Event, EventSink, ignore_events
from engine.loop.prepare import PreparePlan, TargetedData, plan_of
from engine.loop.projects import get_project
from engine.loop.runs import IllegalTransition, StageStopped, fail_run, next_iteration, transition, worker_actor
from engine.loop.targeting import oversampled
from engine.train.cancel import CancelCallback
from engine.train.charts import write_loss_curve
from engine.train.distributed import DistributedError, check_distributed, deepspeed_config
from engine.train.eos import EosCheck, check_saved_model, eos_prompts
from engine.train.merge import check_merged
from engine.train.metrics import MetricsCallback, overfitting_warning, run_metrics, warning_event
from engine.train.prepare import (
    PreparedData,
    PrepareError,
    data_notes,
    end_of_turn_token,
    load_tokenizer,
    local_model,
    prepare_data,
)
from engine.train.recipe import Recipe, recipe_yaml
from engine.train.start import StartRefused, start_samples
from storage.artifacts import StoredArtifact, adapter_digest, record_artifact, run_key, sha256_file
from storage.models import Adapter, DatasetVersion, Metric, Project, Run

SFT_REPORT = "train_report.json"


class TrainingError(RuntimeError):
    """A run that cannot start or whose result must not be used; the message says why."""


@dataclass
class TrainOutcome:
    run: Run
    adapter: Adapter
    adapter_dir: Path
    loss_curve: Path
    report: Path
    metrics: list[Metric]
    eos_checks: list[EosCheck]  # base+adapter, and the merged model for an adapter
    warnings: list[str] = field(default_factory=list)


def train(
    session: Session,
    project: str,
    dataset_version: int | None,
    recipe: Recipe | None,
    *,
    out_dir: Path | None = None,
    events: EventSink = ignore_events,
    dataset_name: str = DEFAULT_DATASET,
    run_id: int | None = None,
    callbacks: Sequence[TrainerCallback] = (),
    requested_by: str | None = None,
) -> TrainOutcome | None:
    """Train `recipe` on a dataset version (the latest when None) and return the checked adapter.

    With `run_id`, continue that run from its last checkpoint (a retried job after a crash), on the run's
    own dataset version and recipe. `callbacks` are added to the trainer (e.g. to cancel a run). A new run records
    `requested_by`.

    Under `accelerate launch` every process calls this with the same `run_id`; only rank 0 writes to storage,
    saves and checks the adapter, and the others return None."""
    project_row = get_project(session, project)
    previous = resume_run(session, run_id) if run_id else None
    if previous is not None and previous.dataset_version_id is not None:
        version = session.get(DatasetVersion, previous.dataset_version_id)
        assert version is not None
    else:
        version = resolve_version(session, project, dataset_name, dataset_version)
    if previous is not None and previous.recipe:
        recipe = Recipe.model_validate(previous.recipe)  # a resumed run trains exactly what it started
    if recipe is None:
        raise TrainingError("a new run needs a recipe")
    base_model = recipe.model_name_or_path or project_row.base_model
    if not base_model:
        raise TrainingError(
            f"no base model: set model_name_or_path in the recipe or `tuneloop project set {project} --base-model`"
        )
    try:  # fsdp / zero3 in one process, or without DeepSpeed, fails here rather than as a torch traceback
        check_distributed(recipe, int(os.environ.get("WORLD_SIZE", "1")))
        if previous is None:  # a resumed run goes on with the folder it started from
            base_model = local_model(base_model)
        recipe = recipe.model_copy(update={"model_name_or_path": base_model})
    except (DistributedError, PrepareError) as error:
        raise TrainingError(str(error)) from None
    main = is_main_process()
    if previous is None and not main:
        raise TrainingError("the processes of a multi-process launch continue a run that rank 0 created")
    # A start refused for its data or template creates no run and uses up no iteration number.
    prepared = None if previous is not None else prepare_run(session, version, recipe)
    run = previous or start_run(session, project_row, version.id, recipe, requested_by=requested_by)
    out_dir = Path(out_dir) if out_dir else get_artifact_store().path(run_key(project, run.id))
    if main:
        try:
            if run.state == "failed":  # a retried run: queued again, then trained from its last checkpoint
                transition(session, run, "queued", actor=worker_actor(), reason="retried")
            if run.state != "training":  # a resumed run (its process died) is training already
                transition(session, run, "training", actor=worker_actor())
        except IllegalTransition as error:
            raise TrainingError(str(error)) from None
        run.artifact_prefix = run_key(project, run.id)
        session.add(run)
        session.commit()
        events(Event("stage", project, {"stage": "train", "state": "training", "out_dir": str(out_dir)}, run=run.id))
    try:
        # A next iteration without new data for its weak sub-scenarios sees their samples more often instead.
        targeted = (plan_of(run) or PreparePlan()).targeted
        prepared = prepared or prepare_run(session, version, recipe, targeted)
        if recipe.stage == "dpo":
            from engine.train.dpo import train_sft_then_dpo  # its own flow, in its own file

            outcome = train_sft_then_dpo(session, project_row, run, prepared, out_dir, events, callbacks)
        else:
            outcome = run_sft(session, project_row, run, prepared, out_dir, events, callbacks)
    except StageStopped:
        raise  # its worker stopped it: the run stays training, and the job runs again from the last checkpoint
    except BaseException as error:
        if main:  # a run cancelled meanwhile stays cancelled
            # Refused before its first step (what only the model's tokenizer shows, on the worker): no iteration.
            refused = prepared is None and last_complete_checkpoint(out_dir / "checkpoints") is None
            reason = f"{type(error).__name__}: {error}"
            fail_run(session, run.id, reason, actor=worker_actor(), refused=refused)  # type: ignore[arg-type]
            session.commit()
            events(Event("failure", project, {"stage": "train", "error": run.error or str(error)}, run=run.id))
        raise
    if outcome is None:
        return None  # another process of a multi-process launch: rank 0 saves, checks and records
    transition(session, run, "evaluating", actor=worker_actor())  # the next stage; the worker queues it
    session.commit()
    events(
        Event(
            "report",
            project,
            {"stage": "train", "adapter": str(outcome.adapter_dir), "loss_curve": str(outcome.loss_curve)},
            run=run.id,
        )
    )
    return outcome


def last_complete_checkpoint(folder: Path) -> str | None:
    """The newest checkpoint that was written whole. A worker killed while saving leaves a newer folder without
    `trainer_state.json`, which the Trainer writes after the weights, optimizer and RNG state: resuming from that
    one would fail, so the one before it is taken (transformers' get_last_checkpoint takes the newest folder)."""
    steps = []
    for path in folder.glob(f"{PREFIX_CHECKPOINT_DIR}-*") if folder.is_dir() else []:
        step = path.name.rpartition("-")[2]
        if step.isdigit() and path.is_dir():
            steps.append((int(step), path))
    for _, path in sorted(steps, reverse=True):
        try:
            json.loads((path / TRAINER_STATE_NAME).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue  # written in part: its worker died while saving
        return str(path)
    return None


def is_main_process() -> bool:
    """Rank 0 of an `accelerate launch`, or the only process."""
    return int(os.environ.get("RANK", "0")) == 0


@dataclass
class RunData:
    """What a run trains on: its recipe, dataset version, samples, tokenizer and token ids."""

    recipe: Recipe
    version: DatasetVersion
    train_samples: list[Sample]
    val_samples: list[Sample]
    tokenizer: PreTrainedTokenizerBase
    data: PreparedData


def prepare_run(
    session: Session, version: DatasetVersion, recipe: Recipe, targeted: TargetedData | None = None
) -> RunData:
    """The run's samples as token ids, the weak sub-scenarios' oversampled as `targeted` plans; raises TrainingError
    for data or a template that cannot be trained on."""
    assert recipe.model_name_or_path is not None
    try:  # a run queued from chat names its model as the person gave it: a folder here, or a hub id
        recipe = recipe.model_copy(update={"model_name_or_path": local_model(recipe.model_name_or_path)})
        train_samples, val_samples = start_samples(session, version, recipe)
        train_samples = oversampled(train_samples, targeted, recipe.seed)
        tokenizer = load_tokenizer(recipe.model_name_or_path, recipe.template)
        data = prepare_data(train_samples, val_samples, tokenizer, recipe)
    except (StartRefused, PrepareError) as error:
        raise TrainingError(str(error)) from None
    if recipe.early_stopping_steps and data.validation is None:
        raise TrainingError(
            f"early_stopping_steps needs validation samples: none has an answer within cutoff_len={recipe.cutoff_len}"
        )
    return RunData(recipe, version, train_samples, val_samples, tokenizer, data)


def run_sft(
    session: Session,
    project: Project,
    run: Run,
    prepared: RunData,
    out_dir: Path,
    events: EventSink,
    callbacks: Sequence[TrainerCallback],
    *,
    adapter_name: str = "adapter",
) -> TrainOutcome | None:
    """The SFT flow of a run into `out_dir` (checkpoints/, `adapter_name`/, the loss curve and SFT_REPORT)."""
    recipe, version, tokenizer, data = prepared.recipe, prepared.version, prepared.tokenizer, prepared.data
    train_samples, val_samples = prepared.train_samples, prepared.val_samples
    assert run.id is not None and recipe.model_name_or_path is not None
    if is_main_process():
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "recipe.yaml").write_text(recipe_yaml(recipe), encoding="utf-8")

    notes = data_notes(data.stats["train"])  # said before the first step, and kept in the report
    for note in notes if is_main_process() else []:
        events(warning_event(project.name, run.id, note))

    trainer = build_trainer(recipe, tokenizer, data, out_dir / "checkpoints")
    trainer.add_callback(MetricsCallback(session, run.id, project.name, events))
    canceller = CancelCallback(run.id, session.get_bind())  # type: ignore[arg-type]
    trainer.add_callback(canceller)
    for callback in callbacks:
        trainer.add_callback(callback)
    last = last_complete_checkpoint(out_dir / "checkpoints")
    trainer.train(resume_from_checkpoint=last)
    if canceller.cancelled:
        raise TrainingError(f"run {run.id} was cancelled: training stopped at step {trainer.state.global_step}")
    adapter_dir = out_dir / (adapter_name if recipe.uses_lora else "model")
    save_trained(trainer, tokenizer, adapter_dir)  # every process: FSDP and ZeRO-3 gather the weights together
    if not trainer.is_world_process_zero():
        return None

    checks = check_adapter(adapter_dir, recipe, val_samples or train_samples, tokenizer)
    metrics = run_metrics(session, run.id)
    overfitting = overfitting_warning(metrics)
    if overfitting:
        events(warning_event(project.name, run.id, overfitting))
    warnings = [*notes, *([overfitting] if overfitting else [])]
    loss_curve = write_loss_curve(metrics, out_dir / "loss_curve.png", title=f"{project.name} run {run.id}")
    report = out_dir / SFT_REPORT
    report.write_text(
        json.dumps(
            {
                "run": run.id,
                "base_model": recipe.model_name_or_path,
                "finetuning_type": recipe.finetuning_type,
                "data": data.stats,
                "steps": trainer.state.global_step,
                "processes": trainer.args.world_size,
                "final_loss": next((m.loss for m in reversed(metrics) if m.loss is not None), None),
                "final_eval_loss": next((m.eval_loss for m in reversed(metrics) if m.eval_loss is not None), None),
                "eos_checks": [{**asdict(c), "message": c.message()} for c in checks],
                "warnings": warnings,
            },
            ensure_ascii=False,
            indent=2,
        ),
        encoding="utf-8",
    )
    adapter = record_adapter(session, project, run, version.id, recipe, adapter_dir)
    record_files(session, project, run, [loss_curve, report])
    session.commit()
    return TrainOutcome(run, adapter, adapter_dir, loss_curve, report, metrics, checks, warnings)


def check_adapter(
    adapter_dir: Path, recipe: Recipe, samples: Sequence[Sample], tokenizer: PreTrainedTokenizerBase
) -> list[EosCheck]:
    """The EOS check on what was saved (base + adapter, or the full model), and on the merged model for an
    adapter; TrainingError when any generation does not stop at the end-of-turn token."""
    assert recipe.model_name_or_path is not None
    prompts, max_new = eos_prompts(samples, tokenizer, recipe.cutoff_len)
    check = check_saved_model(
        adapter_dir,
        prompts,
        base_model=recipe.model_name_or_path if recipe.uses_lora else None,
        max_new_tokens=max_new,
    )
    checks = [check]
    if recipe.uses_lora:
        checks.append(check_merged(adapter_dir, recipe.model_name_or_path, prompts, max_new_tokens=max_new))
    for result in checks:
        if not result.passed:
            raise TrainingError(f"EOS check failed: {result.message()}")
    return checks


def build_trainer(
    recipe: Recipe, tokenizer: PreTrainedTokenizerBase, data: PreparedData, checkpoint_dir: Path
) -> SFTTrainer:
    """TRL's SFTTrainer for the recipe. The datasets already hold `input_ids` and `labels`, so TRL does not
    re-tokenize. With packing, it packs best-fit-decreasing and runs padding-free (position ids restart per
    sample and the attention mask is block-diagonal, so samples never attend to each other); without, batches
    are grouped by length and padded to their longest sample only."""
    bf16, fp16 = precision(recipe)
    packing = uses_packing(recipe)
    has_validation = data.validation is not None
    config = SFTConfig(
        output_dir=str(checkpoint_dir),
        max_length=recipe.cutoff_len,
        packing=packing,
        packing_strategy="bfd",
        train_sampling_strategy="group_by_length" if groups_by_length(recipe) else "random",
        eos_token=end_of_turn_token(tokenizer),  # TRL adds it to the model's generation config EOS ids
        num_train_epochs=recipe.num_train_epochs,
        max_steps=recipe.max_steps or -1,
        per_device_eval_batch_size=recipe.per_device_train_batch_size,
        learning_rate=recipe.learning_rate,
        eval_strategy="steps" if has_validation else "no",
        eval_steps=recipe.logging_steps if has_validation else None,
        load_best_model_at_end=bool(recipe.early_stopping_steps and has_validation),
        metric_for_best_model="eval_loss" if recipe.early_stopping_steps and has_validation else None,
        greater_is_better=False,
        deepspeed=str(deepspeed_config(recipe)) if recipe.distributed == "zero3" else None,
        include_num_input_tokens_seen="non_padding",
        **training_arguments(recipe),
    )
    # Packing needs varlen attention to pay off; when it was chosen for that, load the model with it.
    flash = packing and torch.cuda.is_available() and is_flash_attn_2_available()
    model = load_model(recipe, bf16=bf16, fp16=fp16, attn_implementation="flash_attention_2" if flash else None)
    callbacks = []
    if recipe.early_stopping_steps and has_validation:
        from transformers import EarlyStoppingCallback

        callbacks.append(EarlyStoppingCallback(early_stopping_patience=recipe.early_stopping_steps))
    trainer = _SFTTrainer(
        model=model,
        args=config,
        train_dataset=data.train,
        eval_dataset=data.validation,
        processing_class=tokenizer,
        peft_config=lora_config(recipe) if recipe.uses_lora else None,
        callbacks=callbacks,
    )
    trainer.remove_callback(PrinterCallback)  # progress goes to storage and events, not to stdout
    trainer.fused_loss = uses_fused_loss(recipe)
    return trainer


def uses_fused_loss(recipe: Recipe) -> bool:
    """TRL's loss through its own LM-head kernel, in chunks, with entropy and token accuracy: it saves memory with
    large vocabularies on a GPU, and packed batches need it; on a CPU transformers' loss is faster (bench/peer.py),
    unless the recipe asks for `token_metrics`, which only TRL's path computes."""
    return recipe.token_metrics or uses_packing(recipe) or torch.cuda.is_available()


class _LengthGroupedByEpoch(LengthGroupedSampler):
    """Batches of similar length, in an order drawn from (seed, epoch) alone. transformers' sampler draws from the
    global RNG, whose state at a mid-epoch checkpoint is not the one the epoch started with, so a resumed run
    would replay a different order than the one it was interrupted in."""

    def __init__(self, batch_size: int, lengths: list[int], seed: int) -> None:
        super().__init__(batch_size, lengths=lengths)
        self.seed, self.epoch = seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(get_length_grouped_indices(self.lengths, self.batch_size, generator=generator))


class _SFTTrainer(SFTTrainer):
    """SFTTrainer with a resumable length-grouped sampler, and transformers' own loss where TRL's fused one does
    not pay (`fused_loss`)."""

    fused_loss = True

    def compute_loss(
        self, model: Any, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch: Any = None
    ) -> Any:
        if self.fused_loss:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        return Trainer.compute_loss(self, model, inputs, return_outputs, num_items_in_batch)

    def _get_train_sampler(self, train_dataset: Dataset | None = None) -> Sampler | None:
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        if self.args.train_sampling_strategy != "group_by_length" or dataset is None:
            return super()._get_train_sampler(train_dataset)
        lengths = [len(ids) for ids in dataset["input_ids"]]
        batch = self.args.train_batch_size * self.args.gradient_accumulation_steps
        return _LengthGroupedByEpoch(batch, lengths, self.args.data_seed or self.args.seed)


def training_arguments(recipe: Recipe) -> dict[str, Any]:
    """The Trainer arguments every training flow of a run takes from the recipe the same way (SFT, DPO): batch
    shape, schedule, precision, logging and checkpoints, seed, device."""
    bf16, fp16 = precision(recipe)
    return {
        "per_device_train_batch_size": recipe.per_device_train_batch_size,
        "gradient_accumulation_steps": recipe.gradient_accumulation_steps,
        "lr_scheduler_type": recipe.lr_scheduler_type,
        "warmup_steps": recipe.warmup_ratio,  # transformers 5: a float below 1 is a ratio of the total steps
        "weight_decay": recipe.weight_decay,
        "bf16": bf16,
        "fp16": fp16,
        # TRL's default is True; the recipe decides. transformers 5 renamed it activation_checkpointing.
        "activation_checkpointing": recipe.gradient_checkpointing,
        "gradient_checkpointing": recipe.gradient_checkpointing,
        "logging_steps": recipe.logging_steps,
        "logging_first_step": True,
        "save_strategy": "steps",
        "save_steps": recipe.save_steps,
        "save_total_limit": 2,
        "seed": recipe.seed,
        "data_seed": recipe.seed,
        "report_to": recipe.report_to,
        "disable_tqdm": True,
        "use_cpu": not torch.cuda.is_available(),  # several CPU processes then train with DDP over gloo
        "dataloader_pin_memory": torch.cuda.is_available(),
        "optim": "paged_adamw_8bit" if recipe.finetuning_type == "qlora" else "adamw_torch",
    }


def uses_packing(recipe: Recipe) -> bool:
    """The recipe's `packing`, else packing only where attention runs varlen kernels (flash attention on a GPU).
    Padding-free packing flattens a batch into one sequence; sdpa and eager attention then work on a dense
    block-diagonal mask over all of it, which costs more than the padding it saves (bench/train.py)."""
    if recipe.packing is not None:
        return recipe.packing
    return torch.cuda.is_available() and is_flash_attn_2_available()


def groups_by_length(recipe: Recipe) -> bool:
    """The recipe's `group_by_length`, else on unless packing (packed batches have no padding to save)."""
    return recipe.group_by_length if recipe.group_by_length is not None else not uses_packing(recipe)


def precision(recipe: Recipe) -> tuple[bool, bool]:
    """(bf16, fp16): the recipe's choice, else bf16 where the GPU has it, fp16 on other GPUs, fp32 on CPU."""
    if recipe.bf16 is not None or recipe.fp16 is not None:
        return bool(recipe.bf16), bool(recipe.fp16)
    if not torch.cuda.is_available():
        return False, False
    bf16 = torch.cuda.is_bf16_supported()
    return bf16, not bf16


def load_model(
    recipe: Recipe, *, bf16: bool = False, fp16: bool = False, attn_implementation: str | None = None
) -> PreTrainedModel:
    """The base model, fresh from disk (a 4-bit model must not have run a forward before training)."""
    assert recipe.model_name_or_path is not None
    kwargs: dict[str, Any] = {"attn_implementation": attn_implementation} if attn_implementation else {}
    if recipe.finetuning_type == "qlora":
        from transformers import BitsAndBytesConfig

        compute = torch.bfloat16 if bf16 or not torch.cuda.is_available() else torch.float16
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=compute,
            # ZeRO-3 and FSDP shard floating-point tensors only: store the 4-bit weights in the compute dtype.
            bnb_4bit_quant_storage=compute if recipe.distributed != "ddp" else torch.uint8,
        )
        kwargs["dtype"] = compute
    elif recipe.finetuning_type == "lora" and (bf16 or fp16):
        kwargs["dtype"] = torch.bfloat16 if bf16 else torch.float16  # frozen weights at half size
    else:
        kwargs["dtype"] = torch.float32  # full fine-tuning keeps fp32 master weights; amp casts per op
    return AutoModelForCausalLM.from_pretrained(recipe.model_name_or_path, **kwargs)


def lora_config(recipe: Recipe) -> LoraConfig:
    return LoraConfig(
        r=recipe.lora_rank,
        lora_alpha=recipe.lora_alpha,
        lora_dropout=recipe.lora_dropout,
        target_modules="all-linear" if recipe.lora_target == "all" else list(recipe.lora_target),
        use_dora=recipe.use_dora,
        bias="none",
        task_type="CAUSAL_LM",
    )


def save_trained(trainer: SFTTrainer, tokenizer: PreTrainedTokenizerBase, out: Path) -> Path:
    """The adapter (or full model) with the tokenizer, chat template and generation config it was trained with.

    Every process calls this: under FSDP and ZeRO-3 the weights are gathered from all of them; rank 0 writes."""
    main = trainer.is_world_process_zero()
    if main and out.exists():
        shutil.rmtree(out)  # a retried run rewrites its result whole
    if getattr(trainer, "is_fsdp_enabled", False):
        # Checkpoints stay sharded; the adapter is one file that loads without FSDP.
        trainer.accelerator.state.fsdp_plugin.set_state_dict_type("FULL_STATE_DICT")
    trainer.save_model(str(out))
    if not main:
        return out
    (out / "training_args.bin").unlink(missing_ok=True)  # a pickle of the arguments; the run keeps recipe.yaml
    tokenizer.save_pretrained(str(out))
    model = trainer.model
    generation_config = getattr(model, "generation_config", None) or model.get_base_model().generation_config
    generation_config.save_pretrained(str(out))
    return out


def record_adapter(
    session: Session, project: Project, run: Run, version_id: int | None, recipe: Recipe, folder: Path
) -> Adapter:
    sha256, size = adapter_digest(folder)
    adapter = session.exec(select(Adapter).where(Adapter.run_id == run.id)).first() or Adapter(
        project_id=project.id,  # type: ignore[arg-type]
        run_id=run.id,
        path=str(folder),
        sha256=sha256,
        size_bytes=size,
        base_model=recipe.model_name_or_path or "",
    )
    adapter.path, adapter.sha256, adapter.size_bytes = str(folder), sha256, size
    adapter.dataset_version_id = version_id
    adapter.base_model = recipe.model_name_or_path or ""
    adapter.rank = recipe.lora_rank if recipe.uses_lora else None
    adapter.finetuning_type = recipe.finetuning_type
    adapter.recipe = recipe.model_dump(mode="json")
    session.add(adapter)
    session.flush()
    return adapter


def record_files(session: Session, project: Project, run: Run, files: list[Path]) -> None:
    """Artifact rows for the files a run wrote inside the artifact store (a custom out_dir has none)."""
    root = get_artifact_store().root
    for path in files:
        if path.resolve().is_relative_to(root):
            key = path.resolve().relative_to(root).as_posix()
            stored = StoredArtifact(key=key, sha256=sha256_file(path), size_bytes=path.stat().st_size)
            kind = "chart" if path.suffix == ".png" else "report"
            record_artifact(session, stored, project_id=project.id, run_id=run.id, kind=kind)


def start_run(
    session: Session,
    project: Project,
    version_id: int | None,
    recipe: Recipe,
    *,
    requested_by: str | None = None,
    platform: str | None = None,
) -> Run:
    counted = select(Run).where(Run.project_id == project.id, col(Run.iteration).is_not(None))
    previous = session.exec(counted.order_by(col(Run.iteration).desc())).first()
    run = Run(
        project_id=project.id,  # type: ignore[arg-type]
        iteration=next_iteration(session, project.id),  # type: ignore[arg-type]
        parent_run_id=previous.id if previous else None,
        dataset_version_id=version_id,
        recipe=recipe.model_dump(mode="json"),
        requested_by=requested_by,
        platform=platform,
    )
    session.add(run)
    session.flush()
    return run


def resume_run(session: Session, run_id: int) -> Run:
    run = session.get(Run, run_id)
    if run is None:
        raise TrainingError(f"no run {run_id} to resume")
    return run
