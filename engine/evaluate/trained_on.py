"""The test questions a run trained on, which its gate must not count.

The loop puts a test question into training two ways: a reviewer's Fix of a judged test sample is a preference
pair that a DPO stage trains on (engine/loop/preferences.py), and a project with `review_fixes_train` adds the
fixed test sample to train (origin "review", engine/loop/reviews.py). An evaluation keeps its whole test split,
but the gate and the headline numbers are over the questions the run did not train on; the others are reported
apart (engine/evaluate/run.py). A question is matched by its text (`Sample.prompt_text`), as a judged question is
stored. A test question an upload also put in train is the split's business: its leak check moves it out of test.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from sqlmodel import Session, col, select

from engine.data.sample import Sample
from engine.evaluate.results import GeneratedSample
from engine.loop.preferences import PAIRS_FILE, project_pairs, read_pairs_file
from storage.models import Adapter, Run
from storage.models import Sample as SampleRow


@dataclass(frozen=True)
class TrainedOn:
    """Indices (GeneratedSample.index) of the evaluated samples whose question the run trained on."""

    preference: tuple[int, ...] = ()  # as a preference pair (DPO)
    sft: tuple[int, ...] = ()  # as a training sample, and not as a pair

    @property
    def indices(self) -> frozenset[int]:
        return frozenset(self.preference) | frozenset(self.sft)

    def to_dict(self) -> dict[str, list[int]]:
        return {"preference_pairs": list(self.preference), "sft_samples": list(self.sft)}


def trained_on(session: Session, run: Run, samples: Sequence[GeneratedSample]) -> TrainedOn:
    """Which of `samples` (the run's evaluated test samples) asked a question the run trained on."""
    pairs = _pair_questions(session, run)
    trained = _sft_questions(session, run)
    return TrainedOn(
        preference=tuple(s.index for s in samples if s.question in pairs),
        sft=tuple(s.index for s in samples if s.question in trained and s.question not in pairs),
    )


def _pair_questions(session: Session, run: Run) -> set[str]:
    """The questions of the pairs a DPO run trained on: those it froze beside its adapter, or, for a run that
    froze none (its training folder moved), the project's pairs, which include them."""
    if (run.recipe or {}).get("stage") != "dpo":
        return set()
    adapter = session.exec(select(Adapter).where(Adapter.run_id == run.id)).first()
    frozen = Path(adapter.path).parent / PAIRS_FILE if adapter is not None else None
    if frozen is not None and frozen.is_file():
        pairs = read_pairs_file(frozen)
    else:
        pairs = project_pairs(session, run.project_id)
    return {pair.prompt_text() for pair in pairs}


def _sft_questions(session: Session, run: Run) -> set[str]:
    """The questions of the fixed test samples a review added to the run's training split."""
    rows = session.exec(
        select(SampleRow.messages, SampleRow.tools).where(
            SampleRow.version_id == run.dataset_version_id,
            SampleRow.split == "train",
            SampleRow.origin == "review",
            col(SampleRow.filter_rule).is_(None),
        )
    ).all()
    return {Sample(messages=messages, tools=tools).prompt_text() for messages, tools in rows}
