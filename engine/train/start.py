"""What a run's start is checked against before the run exists, where no model folder is needed: the samples of its
dataset version and what its recipe asks of them. `tuneloop train` and a start from chat (engine.work.jobs.submit_run)
both call `start_samples`, so a start refused here creates no run and uses up no iteration number. Recipe keys,
stages and template names are refused earlier, when the recipe is read (engine.train.recipe); what needs the
model's tokenizer (a template that drops tools, answers beyond cutoff_len) is found where training prepares.

Light on purpose: the chat bots import it, and torch or transformers load only where a model trains."""

import random
from collections.abc import Sequence

from sqlmodel import Session

from engine.data.sample import Sample
from engine.data.versions import Entry, load_entries
from engine.loop.preferences import project_pairs
from engine.train.recipe import Recipe
from storage.models import Dataset, DatasetVersion


class StartRefused(ValueError):
    """A run that must not start on this data with this recipe; the message says why in a sentence."""


def split_entries(
    entries: Sequence[Entry], val_size: float, seed: int, max_samples: int | None = None
) -> tuple[list[Sample], list[Sample]]:
    """Training and validation samples of a dataset version: its train split (or every sample in use when it
    was never split; the first `max_samples` of it, as LLaMA-Factory takes them) and its validation split; with
    no validation split, `val_size` of train is held out. Test samples are never trained on."""
    usable = [e for e in entries if e.in_use]
    train = [e.sample for e in usable if e.split in ("train", None)][:max_samples]
    validation = [e.sample for e in usable if e.split == "validation"]
    if not validation and val_size > 0 and len(train) > 1:
        count = round(val_size * len(train)) if val_size < 1 else int(val_size)
        count = max(1, min(count, len(train) - 1))
        order = list(range(len(train)))
        random.Random(seed).shuffle(order)
        held = set(order[:count])
        validation = [s for i, s in enumerate(train) if i in held]
        train = [s for i, s in enumerate(train) if i not in held]
    return train, validation


def start_samples(session: Session, version: DatasetVersion, recipe: Recipe) -> tuple[list[Sample], list[Sample]]:
    """The training and validation samples of a run of `recipe` on `version`; raises StartRefused when there is
    nothing it could learn from: no training sample, every one labelled bad (KTO), early stopping without
    validation samples, or stage dpo without a preference pair."""
    train, validation = split_entries(load_entries(session, version), recipe.val_size, recipe.seed, recipe.max_samples)
    if not train:
        raise StartRefused(f"dataset version {version.number} has no training samples in use")
    if all(sample.label is False for sample in train):
        raise StartRefused(
            f"every training sample of dataset version {version.number} is labelled bad (KTO label false): "
            "there is no answer to learn"
        )
    if recipe.early_stopping_steps and not validation:
        raise StartRefused("early_stopping_steps needs validation samples: a validation split or val_size")
    if recipe.stage == "dpo" and not any(sample.rejected is not None for sample in train):
        dataset = session.get(Dataset, version.dataset_id)
        assert dataset is not None and dataset.project_id is not None
        if not project_pairs(session, dataset.project_id):
            raise StartRefused(
                "stage dpo has no preference pairs: fix judged samples in a review, "
                "or upload a preference dataset (chosen and rejected answers)"
            )
    return train, validation
