"""Targeted data: the next iteration adds training data where its parent's evaluation found the model weakest.

The seed's loop is "analyse the low-score samples → add training data → retrain". Starting the next iteration of
run k (engine.loop.reviews) plans, from run k's latest evaluation:

- the weak sub-scenarios: tags (a sample's first tag) whose tuned mean overall score fell below the gate's, the
  `max_tags` weakest of them (3 by default: a small model taught everything at once learns nothing in particular);
- how many samples each gets: the project's `settings.targeted_data.counts`, else in proportion to how far the tag
  falls below the gate (`samples_per_point` per point of shortfall), at most `max_samples` in all;
- how: with a synthesis endpoint configured, new samples synthesized for exactly those tags (the run's synthesize
  stage), with the reviewers' corrected answers and the tag's training samples as few-shot examples of the wanted
  answers, and the weak test questions given only as topics (keywords), never as questions; the synthesis filter
  drops any new sample whose question is a near copy of a test question. Without one, the honest fallback: the weak
  tags' training samples are oversampled by the same count in the next training (each seen at most
  `max_oversample` times), and the plan says so.

The plan is stored in the next run's `Run.plan` (`PreparePlan.targeted`, with the `synthesize` part when new data is
synthesized), so the review summary, the run's training and its report all read the same numbers.
"""

import logging
import random
from collections import Counter
from collections.abc import Collection, Mapping, Sequence

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlmodel import Session, col, select

from engine.data.sample import Sample
from engine.data.synth import allocate, synthesis_configured
from engine.data.versions import Entry
from engine.evaluate.weakest import DEFAULT_THRESHOLD, UNTAGGED
from engine.loop.prepare import PreparePlan, SynthPlan, TagTarget, TargetedData
from engine.settings import Settings, get_settings
from storage.models import DatasetVersion, Evaluation, Judgement, Project

SETTING = "targeted_data"
TOPICS_PER_TAG = 12  # keywords of the weak test questions told to the synthesis model


class TargetingConfig(BaseModel):
    """A project's `settings.targeted_data`."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    samples_per_point: int = Field(20, ge=1)  # new samples per point a tag's mean falls below the gate
    counts: dict[str, int] | None = None  # fixed counts per weak tag, instead of in proportion to the shortfall
    max_samples: int = Field(200, ge=1)  # all weak tags together
    max_tags: int | None = Field(3, ge=1)  # only the weakest few, so the data is not spread thin; None: every one
    max_oversample: float = Field(3.0, ge=1.0)  # without synthesis: a weak tag's samples are seen at most this often
    task: str | None = None  # what the assistant does, for the synthesis model; else the samples' system prompt
    model: str | None = None  # the synthesis model; settings.synth_model when None


class TargetingError(ValueError):
    """A project's targeted-data setting that cannot be read; the message names the field."""


def targeting_config(project: Project) -> TargetingConfig:
    try:
        return TargetingConfig.model_validate((project.settings or {}).get(SETTING) or {})
    except ValidationError as error:
        problems = "; ".join(f"{SETTING}.{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())
        raise TargetingError(f"project {project.name} has a bad {SETTING} setting: {problems}") from None


def tag_means(session: Session, evaluation: Evaluation, leave_out: Collection[str] = ()) -> dict[str, float]:
    """Mean overall score of the tuned answers per sub-scenario (first tag), over valid judgements of the questions
    the run did not train on, and not in `leave_out` (questions another run trained on)."""
    scores: dict[str, list[float]] = {}
    for tags, overall, _ in _scored(session, evaluation, leave_out):
        scores.setdefault(tags[0] if tags else UNTAGGED, []).append(overall)
    return {tag: sum(values) / len(values) for tag, values in scores.items()}


def gate_threshold(evaluation: Evaluation) -> float:
    """The overall score the evaluation was gated at (its stored decision), the default gate's without one."""
    checks = ((evaluation.scores or {}).get("gate") or {}).get("checks") or []
    overall = next((c for c in checks if c.get("name") == "overall"), {})
    threshold = overall.get("threshold")
    return float(threshold) if isinstance(threshold, int | float) else DEFAULT_THRESHOLD


def plan_targeted(
    session: Session,
    project: Project,
    evaluation: Evaluation,
    version: DatasetVersion,
    entries: Sequence[Entry],
    corrected: Mapping[str, list[str]],
    *,
    settings: Settings | None = None,
) -> PreparePlan | None:
    """The next iteration's plan for its parent's weak sub-scenarios: `entries` are the next version's (run k's
    version as the reviews changed it), `corrected` the reviewers' corrected answers per tag. None when no tag is
    weak, or the project switched targeting off."""
    config = targeting_config(project)
    if not config.enabled:
        return None
    threshold = gate_threshold(evaluation)
    weak = {tag: mean for tag, mean in tag_means(session, evaluation).items() if mean < threshold and tag != UNTAGGED}
    synthesize = synthesis_configured(settings or get_settings())
    training = [e.sample for e in entries if e.in_use and e.split in ("train", None)]
    available = Counter(s.tags[0] for s in training if s.tags)
    if not synthesize:  # a tag without training samples has nothing to oversample
        weak = {tag: mean for tag, mean in weak.items() if available[tag]}
    weakest = sorted(weak, key=lambda tag: (weak[tag], tag))[: config.max_tags]
    weak = {tag: weak[tag] for tag in weakest}
    counts = _counts(weak, threshold, config)
    if not synthesize:  # copies of a handful of samples teach their wording, not the sub-scenario
        counts = {tag: min(n, int(available[tag] * (config.max_oversample - 1))) for tag, n in counts.items()}
    targets = [
        TagTarget(tag=tag, mean=round(weak[tag], 4), count=count, available=available[tag])
        for tag, count in sorted(counts.items(), key=lambda item: (weak[item[0]], item[0]))
        if count > 0
    ]
    if not targets:
        return None
    assert evaluation.id is not None
    targeted = TargetedData(
        mode="synthesize" if synthesize else "oversample", threshold=threshold, evaluation=evaluation.id, tags=targets
    )
    if not synthesize:
        return PreparePlan(targeted=targeted)
    topics = _weak_topics(session, evaluation, threshold, {t.tag for t in targets})
    synth = SynthPlan(
        task=config.task or _task(project, training),
        n=targeted.total,
        model=config.model,
        scenarios={t.tag: float(t.count) for t in targets},  # weights equal to the counts: exactly these counts
        scenario_notes={
            t.tag: "The assistant answered these topics poorly; cover them with new, different questions: "
            + ", ".join(topics.get(t.tag, []) or [t.tag])
            for t in targets
        },
        wanted_answers={t.tag: list(corrected[t.tag]) for t in targets if corrected.get(t.tag)} or None,
        seed_version=version.number,
        system_prompt=_system_prompt(training),
        split="train" if any(e.split is not None for e in entries) else None,
    )
    return PreparePlan(synthesize=synth, targeted=targeted)


def oversampled(samples: Sequence[Sample], targeted: TargetedData | None, seed: int) -> list[Sample]:
    """The training samples with the oversampling plan's extra copies of each weak tag's samples added (each tag's
    samples in a seeded order, cycled until its count is reached); the samples as they are for any other plan."""
    out = list(samples)
    if targeted is None or targeted.mode != "oversample":
        return out
    for target in targeted.tags:
        pool = [s for s in samples if s.tags and s.tags[0] == target.tag]
        random.Random(f"{seed}:{target.tag}").shuffle(pool)
        out += [pool[i % len(pool)] for i in range(target.count)] if pool else []
    return out


def _counts(weak: Mapping[str, float], threshold: float, config: TargetingConfig) -> dict[str, int]:
    if config.counts is not None:
        wanted = {tag: max(0, config.counts.get(tag, 0)) for tag in weak}
    else:
        wanted = {tag: max(1, round(config.samples_per_point * (threshold - mean))) for tag, mean in weak.items()}
    if sum(wanted.values()) <= config.max_samples:
        return wanted
    return allocate(config.max_samples, {tag: float(n) for tag, n in wanted.items()})


def trained_positions(evaluation: Evaluation) -> set[int]:
    """Positions of the test questions the evaluated run trained on (engine/evaluate/trained_on.py): not scored."""
    trained = (evaluation.scores or {}).get("trained_on") or {}
    return {int(p) for kind in ("preference_pairs", "sft_samples") for p in trained.get(kind) or []}


def _scored(
    session: Session, evaluation: Evaluation, leave_out: Collection[str] = ()
) -> list[tuple[list[str], float, str]]:
    rows = session.exec(
        select(Judgement.tags, Judgement.overall, Judgement.question, Judgement.position)
        .where(Judgement.evaluation_id == evaluation.id, Judgement.valid, col(Judgement.overall).is_not(None))
        .order_by(col(Judgement.id))
    ).all()
    trained, leave_out = trained_positions(evaluation), set(leave_out)
    return [
        (list(tags or []), float(overall), question)  # type: ignore[arg-type]
        for tags, overall, question, position in rows
        if position not in trained and question not in leave_out
    ]


def _weak_topics(session: Session, evaluation: Evaluation, threshold: float, tags: set[str]) -> dict[str, list[str]]:
    """Per weak tag, keywords of its test questions that scored below the threshold: what to cover, not the
    questions themselves (those stay unseen)."""
    import jieba  # half a second to load its dictionary code: only where keywords are picked
    import jieba.analyse

    jieba.setLogLevel(logging.WARNING)
    topics: dict[str, list[str]] = {}
    for row_tags, overall, question in _scored(session, evaluation):
        tag = row_tags[0] if row_tags else UNTAGGED
        if tag not in tags or overall >= threshold:
            continue
        known = topics.setdefault(tag, [])
        for word in jieba.analyse.extract_tags(question, topK=4):
            if word not in known and word != tag and len(known) < TOPICS_PER_TAG:
                known.append(word)
    return topics


def _system_prompt(samples: Sequence[Sample]) -> str | None:
    """The system prompt most training samples carry, so new samples are trained the same way."""
    prompts = Counter(s.messages[0].content for s in samples if s.messages and s.messages[0].role == "system")
    return prompts.most_common(1)[0][0] if prompts else None


def _task(project: Project, samples: Sequence[Sample]) -> str:
    system = _system_prompt(samples)
    if system:
        return f"The assistant of project {project.name}. Its instructions: {system}"
    return f"The chat assistant of project {project.name}, answering its users' questions."
