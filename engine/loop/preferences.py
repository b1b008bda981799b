"""Preference pairs from reviews: a reviewer's Fix of a judged sample says "this answer, not that one".

Every Fix of a judgement yields a pair: the prompt (the test sample's messages before its answer), the corrected
answer as chosen and the tuned model's answer as rejected. Pairs accumulate per project across iterations and are
what a DPO stage trains on (engine/train/dpo.py), beside the preference samples of an uploaded dataset.

The latest review of a judgement is the one that counts, as for the data: a later Fix replaces the pair, a later
Keep or Drop withdraws it (the pair stays as history, `active` false).

A Keep adds no pair, in either direction. A Keep says the sample (its question and reference) stays as it is;
it does not say the tuned answer is right, and the samples put before reviewers are the weakest ones, where the
pairwise judge preferring the tuned answer over the base's means the less bad of two weak answers. A pair
"tuned over base" from it would teach the model to prefer its own weak answer.
"""

from pathlib import Path

from sqlmodel import Session, col, func, select

from engine.data.sample import Message, Sample
from storage.models import Judgement, PreferencePair, Review
from storage.models import Sample as SampleRow

DPO_MIN_PAIRS_SETTING = "dpo_min_pairs"  # project setting: pairs needed before Retrain offers SFT + DPO
DEFAULT_DPO_MIN_PAIRS = 20
PAIRS_FILE = "preference_pairs.jsonl"  # beside a DPO run's adapter: the pairs it trained on (engine/train/dpo.py)


def note_review(session: Session, review: Review, judgement: Judgement, project_id: int, run_id: int) -> None:
    """Withdraw the judgement's earlier pair, and add the one a Fix makes. Nothing is committed here."""
    earlier = session.exec(
        select(PreferencePair).where(PreferencePair.judgement_id == judgement.id, col(PreferencePair.active))
    ).all()
    for pair in earlier:
        pair.active = False
        session.add(pair)
    rejected = (judgement.tuned_answer or "").strip()
    if review.verdict != "fix" or not review.corrected_answer or not rejected:
        return
    if review.corrected_answer.strip() == rejected:
        return  # the "correction" is what the model said: nothing to prefer
    session.add(
        PreferencePair(
            project_id=project_id,
            run_id=run_id,
            judgement_id=judgement.id,  # type: ignore[arg-type]
            review_id=review.id,  # type: ignore[arg-type]
            prompt=_prompt(session, judgement),
            chosen=review.corrected_answer,
            rejected=rejected,
            tags=list(judgement.tags or []) or None,
        )
    )
    session.flush()


def _prompt(session: Session, judgement: Judgement) -> list[dict]:
    """The messages the model answered: the test sample's up to its last answer (system turn and history
    included), or the judged question alone when the judgement is linked to no sample."""
    row = session.get(SampleRow, judgement.sample_id) if judgement.sample_id is not None else None
    if row is None:
        return [{"role": "user", "content": judgement.question}]
    sample = Sample(messages=row.messages, tools=row.tools)
    return [m.model_dump(exclude_none=True) for m in sample.messages[: sample.last_assistant_index()]]


def count_pairs(session: Session, project_id: int) -> int:
    """The project's pairs in force (distinct by content, as training sees them)."""
    return len(project_pairs(session, project_id))


def project_pairs(session: Session, project_id: int, *, through: int | None = None) -> list[Sample]:
    """The project's pairs in force as preference samples (last assistant turn chosen, `rejected` the other),
    oldest first, the same pair once; `through`: only pairs with an id up to it (what a run started with)."""
    query = select(PreferencePair).where(PreferencePair.project_id == project_id, col(PreferencePair.active))
    if through is not None:
        query = query.where(col(PreferencePair.id) <= through)
    samples: dict[str, Sample] = {}
    for pair in session.exec(query.order_by(col(PreferencePair.id))).all():
        sample = Sample(
            messages=[*pair.prompt, {"role": "assistant", "content": pair.chosen}],
            rejected=Message(role="assistant", content=pair.rejected),
            tags=list(pair.tags or []),
            origin="review",
        )
        samples.setdefault(sample.content_hash, sample)
    return list(samples.values())


def last_pair_id(session: Session, project_id: int) -> int | None:
    """The newest pair's id: a run records it so that a resumed run trains on the same pairs."""
    return session.exec(select(func.max(PreferencePair.id)).where(PreferencePair.project_id == project_id)).one()


def min_pairs(settings: dict | None) -> int:
    """How many pairs a project needs before Retrain offers SFT + DPO (its `dpo_min_pairs`, default 20)."""
    value = (settings or {}).get(DPO_MIN_PAIRS_SETTING, DEFAULT_DPO_MIN_PAIRS)
    return int(value) if isinstance(value, int | float) and value >= 1 else DEFAULT_DPO_MIN_PAIRS


def read_pairs_file(path: Path) -> list[Sample]:
    """The pairs a DPO run froze in `path` (one preference sample a line)."""
    return [Sample.model_validate_json(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
