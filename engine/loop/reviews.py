"""Reviews and iterations: people's verdicts on judged samples, and the next iteration they lead to.

A reviewer keeps, fixes (with a corrected answer) or drops a sample. A review names either a judgement (a
test sample as the evaluation judged it) or a sample row directly (a training sample). The project's
`reviewers` list says who may review; an empty or missing list lets anyone. Every review is kept as history;
for each sample the latest review, by anyone, is the one that counts.

Starting the next iteration of run k turns the latest reviews of its samples into a new dataset version
(kind "review", parent: run k's version) and a queued run k+1 on it with the same recipe:

- A review of a judgement targets the test sample it judged (`Judgement.sample_id`, a row of run k's version).
  Reviews of rows of other versions, and reviews recorded after the next iteration started, change nothing.
- fix on a test sample: the corrected answer replaces its reference (the last assistant turn), and the sample
  stays in test. It is not added to the training data: training on a test question would leak the test set
  and inflate the next evaluation. A project that wants its weak test samples' corrections learned anyway sets
  `settings["review_fixes_train"] = true`; the corrected sample is then also added to train (origin "review"),
  and its evaluation no longer measures that question fairly.
- fix on any other sample (train, validation): the corrected answer replaces its answer.
  A corrected answer is plain text: it replaces the last assistant turn whole, tool calls included.
- drop: the sample is removed the way filters remove samples: it stays in the version with the filter rule
  "review_drop" and a reason naming the reviewer, so reports can say what was removed and why.
- keep: no change.

Starting the next iteration also plans data for the sub-scenarios where run k's evaluation found the model
weakest (engine.loop.targeting): new samples synthesized by the next run's synthesize stage, or, without a synthesis
endpoint, the weak tags' training samples oversampled. The summary states the plan before anyone starts it; the
next run keeps it in its `plan`, and its report names what the iteration changed beside each tag's score.
A Fix of a judgement also yields a preference pair for DPO (engine.loop.preferences, which says why a Keep
yields none).

A changed sample gets a new content hash; the samples no review changed keep theirs, and the old version is
never touched (entries are loaded, changed in memory and saved as a new version). When the reviews change
nothing and no data is targeted there is nothing to retrain on, and starting the next iteration is refused.
Starting it again returns the run that already continues run k. Nothing here commits: the caller's unit of work
stores all of it or none of it.
"""

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from sqlmodel import Session, col, select

from engine.data.sample import Message, Sample
from engine.data.versions import Entry, load_entries, save_version
from engine.evaluate.weakest import UNTAGGED
from engine.loop.preferences import DEFAULT_DPO_MIN_PAIRS, count_pairs, min_pairs, note_review
from engine.loop.prepare import PreparePlan, TargetedData, plan_of
from engine.loop.projects import is_listed
from engine.loop.runs import next_iteration
from engine.loop.targeting import TargetingError, plan_targeted, tag_means, trained_positions
from storage.models import AuditEvent, Dataset, DatasetVersion, Evaluation, Judgement, Project, Review, Run
from storage.models import Sample as SampleRow

VERDICTS = ("keep", "fix", "drop")
DROP_RULE = "review_drop"
FIXES_TRAIN_SETTING = "review_fixes_train"


class ReviewError(ValueError):
    """A review or an iteration that cannot be recorded or started; the message says why, in a plain sentence."""


@dataclass
class ReviewSummary:
    """The latest verdict on each reviewed sample of a run, and what the next iteration would change."""

    run_id: int
    verdicts: dict[str, int]  # keep | fix | drop -> samples whose latest review says so
    fixed_answers: int = 0  # training answers replaced
    better_references: int = 0  # test references replaced
    dropped: int = 0
    new_training_samples: int = 0  # fixed test samples added to train (only with review_fixes_train)
    targeted: TargetedData | None = None  # data for the weak sub-scenarios (engine.loop.targeting)
    by_tag: dict[str, dict[str, int]] = field(default_factory=dict)  # sub-scenario -> "fixes" / "drops" -> count
    pairs: int = 0  # the project's preference pairs from reviews, this run's included
    min_pairs: int = DEFAULT_DPO_MIN_PAIRS  # pairs needed before the next iteration may train SFT + DPO

    @property
    def offers_dpo(self) -> bool:
        return self.pairs >= self.min_pairs

    @property
    def changes(self) -> int:
        targeted = self.targeted.total if self.targeted else 0
        return self.fixed_answers + self.better_references + self.dropped + self.new_training_samples + targeted

    @property
    def lines(self) -> list[str]:
        reviewed = sum(self.verdicts.values())
        if not reviewed:
            return [f"No samples of run {self.run_id} are reviewed yet."]
        done = {"keep": "kept", "fix": "fixed", "drop": "dropped"}
        counts = ", ".join(f"{self.verdicts.get(verdict, 0)} {word}" for verdict, word in done.items())
        head = f"{_plural(reviewed, 'sample')} of run {self.run_id} reviewed: {counts}."
        if not self.changes:
            return [head, "No review changes the data: there is nothing to retrain on yet."]
        lines = [head, f"The next iteration would {_change_phrase(self, future=True)}."]
        if self.offers_dpo:
            lines.append(f"It may also train SFT + DPO on {_plural(self.pairs, 'preference pair')}.")
        return lines


@dataclass
class NextIteration:
    run: Run
    version: DatasetVersion
    created: bool  # False: the next iteration had already been started
    summary: ReviewSummary | None = None  # what the reviews changed (None when it had already been started)


@dataclass
class IterationComparison:
    """A run's evaluation beside its parent run's: each pair is (iteration k-1, iteration k). When run k trained on
    some of its test questions (`left_out` of them), the scores of both are over the questions it did not train on."""

    run_id: int
    iteration: int
    parent_run_id: int
    parent_iteration: int
    overall: tuple[float | None, float | None]
    win_rate: tuple[float | None, float | None]
    invalid_rate: tuple[float | None, float | None]
    chrf: tuple[float | None, float | None]
    gate_passed: tuple[bool | None, bool | None]
    tags: dict[str, tuple[float | None, float | None]] = field(default_factory=dict)  # sub-scenario -> means
    changes: dict[str, list[str]] = field(default_factory=dict)  # sub-scenario -> what iteration k changed there
    # A DPO iteration judged pairwise against iteration k-1's answers (Evaluation.scores["versus_previous"])
    versus_previous: dict | None = None
    left_out: int = 0

    @property
    def lines(self) -> list[str]:
        lines = [_move("overall", *self.overall, "{:.1f}", "{:+.1f}")]
        if self.left_out:
            lines[0] += f" on the questions it did not train on ({_plural(self.left_out, 'test question')} left out)"
        if self.versus_previous:
            lines.append(_versus_line(self.versus_previous, self.parent_iteration))
        if self.win_rate != (None, None):
            lines.append(_move("win rate", *_percent(self.win_rate), "{:.0f}%", "{:+.0f} pts"))
        if self.invalid_rate != (None, None):
            lines.append(_move("invalid judgements", *_percent(self.invalid_rate), "{:.1f}%", "{:+.1f} pts"))
        if self.chrf != (None, None):
            lines.append(_move("reference chrF", *self.chrf, "{:.1f}", "{:+.1f}"))
        before, after = (_gate_word(g) for g in self.gate_passed)
        lines.append(f"gate {before} → {after}")
        for tag, means in self.tags.items():
            changed = self.changes.get(tag)
            shown = _move(f"{tag}:", *means, "{:.1f}", "{:+.1f}")
            lines.append(f"{shown} · {', '.join(changed)}" if changed else shown)
        return lines


# --- recording a review ------------------------------------------------------------------------------------


def record_review(
    session: Session,
    *,
    judgement_id: int | None = None,
    sample_id: int | None = None,
    reviewer: str,
    verdict: str,
    corrected_answer: str | None = None,
    comment: str | None = None,
    platform: str | None = None,
    groups: Sequence[str] = (),
) -> Review:
    """Record `reviewer`'s verdict on a judgement or a sample; it supersedes earlier reviews of the same sample."""
    reviewer = (reviewer or "").strip()
    verdict = (verdict or "").strip().lower()
    corrected_answer = (corrected_answer or "").strip() or None
    if not reviewer:
        raise ReviewError("a review needs the reviewer's name")
    if verdict not in VERDICTS:
        raise ReviewError(f"a verdict is keep, fix or drop, not '{verdict}'")
    if verdict == "fix" and corrected_answer is None:
        raise ReviewError("a fix needs the corrected answer")
    if verdict != "fix" and corrected_answer is not None:
        raise ReviewError(f"a corrected answer goes with the verdict fix, not {verdict}")
    if (judgement_id is None) == (sample_id is None):
        raise ReviewError("a review names either the judgement or the sample it is about, one of them")

    if judgement_id is not None:
        judgement = session.get(Judgement, judgement_id)
        if judgement is None:
            raise ReviewError(f"there is no judgement {judgement_id} to review")
        project = _project_of_judgement(session, judgement)
        target = f"judgement {judgement_id}"
        row = session.get(SampleRow, judgement.sample_id) if judgement.sample_id is not None else None
        if row is None and verdict != "keep":
            raise ReviewError(f"{target} is not linked to a test sample, so a {verdict} could not change the data")
    else:
        row = session.get(SampleRow, sample_id)
        if row is None:
            raise ReviewError(f"there is no sample {sample_id} to review")
        project = _project_of_sample(session, row)
        target = f"sample {sample_id}"
    if row is not None and row.filter_rule is not None:
        raise ReviewError(f"{target} was already removed ({row.filter_rule}: {row.filter_reason}); nothing to review")
    allowed = [str(name) for name in project.reviewers or []]
    if not is_listed(allowed, reviewer, groups):
        raise ReviewError(f"{reviewer} may not review project {project.name}; its reviewers are {', '.join(allowed)}")

    review = Review(
        judgement_id=judgement_id,
        sample_id=sample_id,
        reviewer=reviewer,
        platform=platform,
        verdict=verdict,
        corrected_answer=corrected_answer,
        comment=(comment or "").strip() or None,
    )
    session.add(review)
    session.flush()
    if judgement_id is not None:
        note_review(session, review, judgement, project.id, _run_of_judgement(session, judgement))  # type: ignore[arg-type]
    session.add(
        AuditEvent(
            actor=reviewer,
            platform=platform,
            action="review.recorded",
            project_id=project.id,
            subject_type="review",
            subject_id=review.id,
            detail={"verdict": verdict, "judgement_id": judgement_id, "sample_id": sample_id},
        )
    )
    session.flush()
    return review


def _project_of_judgement(session: Session, judgement: Judgement) -> Project:
    evaluation = session.get(Evaluation, judgement.evaluation_id)
    run = session.get(Run, evaluation.run_id) if evaluation else None
    project = session.get(Project, run.project_id) if run else None
    if project is None:
        raise ReviewError(f"judgement {judgement.id} belongs to no project")
    return project


def _run_of_judgement(session: Session, judgement: Judgement) -> int:
    evaluation = session.get(Evaluation, judgement.evaluation_id)
    assert evaluation is not None  # a foreign key
    return evaluation.run_id


def _project_of_sample(session: Session, row: SampleRow) -> Project:
    version = session.get(DatasetVersion, row.version_id)
    dataset = session.get(Dataset, version.dataset_id) if version else None
    project = session.get(Project, dataset.project_id) if dataset else None
    if project is None:
        raise ReviewError(f"sample {row.id} belongs to no project")
    return project


# --- from reviews to the next version -------------------------------------------------------------------------


@dataclass
class _Plan:
    run: Run
    version: DatasetVersion
    entries: list[Entry]  # the next version's entries (the run's version's, changed in memory)
    summary: ReviewSummary
    prepare: PreparePlan | None  # the next run's plan: data targeted at the weak sub-scenarios


def _get_run(session: Session, run_id: int) -> Run:
    run = session.get(Run, run_id)
    if run is None:
        raise ReviewError(f"there is no run {run_id}")
    return run


def _latest_reviews(session: Session, run: Run, row_ids: Iterable[int]) -> dict[int, Review]:
    """Sample row id -> the latest review of it, through the run's judgements or of the row itself."""
    row_ids = list(row_ids)
    by_judgement = session.exec(
        select(Review, Judgement.sample_id)
        .join(Judgement, col(Review.judgement_id) == col(Judgement.id))
        .join(Evaluation, col(Judgement.evaluation_id) == col(Evaluation.id))
        .where(Evaluation.run_id == run.id, col(Judgement.sample_id).is_not(None))
    ).all()
    by_sample = session.exec(select(Review).where(col(Review.sample_id).in_(row_ids))).all() if row_ids else []
    targeted = [(review, row_id) for review, row_id in by_judgement] + [(r, r.sample_id) for r in by_sample]
    latest: dict[int, Review] = {}
    # Ids, not timestamps, order the reviews: they follow the order of recording and never tie.
    for review, row_id in sorted(targeted, key=lambda pair: pair[0].id or 0):
        latest[row_id] = review  # type: ignore[index]
    return latest


def _with_answer(sample: Sample, answer: str) -> Sample:
    messages = list(sample.messages)
    last = sample.last_assistant_index()
    messages[last] = Message(role="assistant", content=answer, name=messages[last].name)
    return sample.model_copy(update={"messages": messages})


def _prompt_key(sample: Sample) -> list[dict]:
    return [m.model_dump(exclude_none=True) for m in sample.messages[: sample.last_assistant_index()]]


def _add_to_train(entries: list[Entry], corrected: Sample) -> None:
    """Add a fixed test sample to train, replacing the one an earlier review added for the same question."""
    learned = Entry(
        corrected.model_copy(update={"origin": "review", "original": None, "original_format": None}), "train"
    )
    for index, entry in enumerate(entries):
        same_question = _prompt_key(entry.sample) == _prompt_key(corrected)
        if entry.in_use and entry.split == "train" and entry.sample.origin == "review" and same_question:
            entries[index] = learned
            return
    entries.append(learned)


def _plan(session: Session, run: Run) -> _Plan:
    version = session.get(DatasetVersion, run.dataset_version_id) if run.dataset_version_id else None
    if version is None:
        raise ReviewError(f"run {run.id} records no dataset version, so its reviews cannot change any data")
    project = session.get(Project, run.project_id)
    fixes_train = bool((project.settings or {}).get(FIXES_TRAIN_SETTING)) if project else False
    entries = load_entries(session, version)
    row_ids = session.exec(
        select(SampleRow.id).where(SampleRow.version_id == version.id).order_by(col(SampleRow.position))
    ).all()
    index_of = {row_id: index for index, row_id in enumerate(row_ids)}
    summary = ReviewSummary(run.id, dict.fromkeys(VERDICTS, 0))  # type: ignore[arg-type]
    answers: dict[str, list[str]] = {}  # sub-scenario -> the reviewers' corrected answers
    summary.pairs = count_pairs(session, run.project_id)
    summary.min_pairs = min_pairs(project.settings if project else None)
    for row_id, review in sorted(_latest_reviews(session, run, index_of).items()):
        index = index_of.get(row_id)
        if index is None or not entries[index].in_use:
            continue
        summary.verdicts[review.verdict] = summary.verdicts.get(review.verdict, 0) + 1
        entry = entries[index]
        counts = summary.by_tag.setdefault(_tag_of(entry.sample), {})
        if review.verdict == "drop":
            entry.filter_rule = DROP_RULE
            why = f": {review.comment}" if review.comment else ""
            entry.filter_reason = f"dropped by {review.reviewer} in the review of run {run.id}{why}"
            summary.dropped += 1
            counts["drops"] = counts.get("drops", 0) + 1
        elif review.verdict == "fix" and review.corrected_answer:
            corrected = _with_answer(entry.sample, review.corrected_answer)
            if corrected.content_hash == entry.sample.content_hash:
                continue  # the "correction" is the answer it already had
            entry.sample = corrected
            counts["fixes"] = counts.get("fixes", 0) + 1
            answers.setdefault(_tag_of(corrected), []).append(review.corrected_answer)
            if entry.split != "test":
                summary.fixed_answers += 1
                continue
            summary.better_references += 1
            if fixes_train:
                _add_to_train(entries, corrected)
                summary.new_training_samples += 1
    summary.by_tag = {tag: counts for tag, counts in summary.by_tag.items() if counts}
    evaluation = _latest_evaluation(session, run.id)  # type: ignore[arg-type]
    try:
        prepare = (
            plan_targeted(session, project, evaluation, version, entries, answers)
            if evaluation is not None and project is not None
            else None
        )
    except TargetingError as error:
        raise ReviewError(str(error)) from None
    summary.targeted = prepare.targeted if prepare else None
    return _Plan(run, version, entries, summary, prepare)


def _tag_of(sample: Sample) -> str:
    return sample.tags[0] if sample.tags else UNTAGGED


def review_summary(session: Session, run_id: int) -> ReviewSummary:
    """The latest verdicts on run `run_id`'s samples and what starting the next iteration would change."""
    return _plan(session, _get_run(session, run_id)).summary


def _change_phrase(summary: ReviewSummary, *, future: bool = False) -> str:
    parts = [
        (summary.fixed_answers, "training answer", "replace {}", "{} fixed"),
        (summary.better_references, "reference", "improve {}", "{} improved"),
        (summary.dropped, "sample", "remove {}", "{} dropped"),
        (summary.new_training_samples, "fixed test sample", "add {} to train", "{} added to train"),
    ]
    phrase = [(will if future else done).format(_plural(n, noun)) for n, noun, will, done in parts if n]
    if summary.targeted:
        phrase.append(_targeted_phrase(summary.targeted))
    return ", ".join(phrase)


def _targeted_phrase(targeted: TargetedData) -> str:
    """What the targeted data does, in English ("40 new samples for 退货 and 发票")."""
    tags = [t.tag for t in targeted.tags]
    named = tags[0] if len(tags) == 1 else f"{', '.join(tags[:-1])} and {tags[-1]}"
    if targeted.mode == "synthesize":
        return f"{_plural(targeted.total, 'new sample')} for {named}"
    factors = ", ".join(f"{t.tag} ×{t.factor:.3g}" for t in targeted.tags)
    return f"no synthesis endpoint: oversampling {factors} instead of new data"


def start_next_iteration(
    session: Session, run_id: int, *, by: str, platform: str | None = None, dpo: bool = False
) -> NextIteration:
    """Turn the reviews of run `run_id` into a new dataset version and queue the next iteration's run on it;
    with `dpo`, the run trains SFT then DPO on the project's preference pairs (`stage: dpo`), which needs the
    project's `dpo_min_pairs` of them."""
    run = _get_run(session, run_id)
    started = session.exec(select(Run).where(Run.parent_run_id == run.id).order_by(col(Run.id))).first()
    if started is not None:
        version = session.get(DatasetVersion, started.dataset_version_id) if started.dataset_version_id else None
        if version is None:
            raise ReviewError(f"run {started.id} already continues run {run.id}, without a dataset version")
        return NextIteration(started, version, created=False)
    plan = _plan(session, run)
    if not plan.summary.changes:
        raise ReviewError(
            f"no reviews change the data of run {run.id}, and no sub-scenario is weak; nothing to retrain on"
        )
    if dpo and not plan.summary.offers_dpo:
        raise ReviewError(
            f"SFT + DPO needs {plan.summary.min_pairs} preference pairs from reviews; "
            f"the project has {plan.summary.pairs}"
        )
    dataset = session.get(Dataset, plan.version.dataset_id)
    assert dataset is not None
    summary = plan.summary
    change = save_version(
        session,
        dataset,
        plan.entries,
        kind="review",
        summary=f"review of run {run.id}: {_change_phrase(summary)}",
        parent=plan.version,
        detail={
            "run": run.id,
            "fixed_answers": summary.fixed_answers,
            "better_references": summary.better_references,
            "dropped": summary.dropped,
            "new_training_samples": summary.new_training_samples,
            "verdicts": summary.verdicts,
            "by_tag": summary.by_tag,
        },
        actor=by,
        platform=platform or run.platform or "cli",
        reviewed=True,
    )
    next_run = Run(
        project_id=run.project_id,
        iteration=next_iteration(session, run.project_id),  # in a straight chain, run k's iteration + 1
        parent_run_id=run.id,
        dataset_version_id=change.version.id,
        recipe={**(run.recipe or {}), "stage": "dpo"} if dpo else dict(run.recipe) if run.recipe is not None else None,
        plan=plan.prepare.model_dump(mode="json", exclude_none=True) if plan.prepare else None,
        state="queued",
        requested_by=by,
        platform=platform or run.platform,
        thread_ref=run.thread_ref,
    )
    session.add(next_run)
    session.flush()
    session.add(
        AuditEvent(
            actor=by,
            platform=platform or run.platform,
            action="run.next_iteration",
            project_id=run.project_id,
            subject_type="run",
            subject_id=next_run.id,
            detail={
                "parent_run": run.id,
                "dataset_version": change.version.id,
                "iteration": next_run.iteration,
                "dpo_pairs": summary.pairs if dpo else None,
            },
        )
    )
    session.flush()
    return NextIteration(next_run, change.version, created=True, summary=summary)


# --- iteration k against iteration k-1 ------------------------------------------------------------------------


def iteration_comparison(
    session: Session, run_id: int, *, evaluation: Evaluation | None = None
) -> IterationComparison | None:
    """Run `run_id`'s evaluation (`evaluation`, else its latest) beside its parent run's latest evaluation;
    None when the run has no parent or either has no evaluation."""
    run = _get_run(session, run_id)
    parent = session.get(Run, run.parent_run_id) if run.parent_run_id else None
    current = evaluation or _latest_evaluation(session, run.id)  # type: ignore[arg-type]
    previous = _latest_evaluation(session, parent.id) if parent else None  # type: ignore[arg-type]
    if parent is None or current is None or previous is None:
        return None
    # The questions run k trained on count on neither side: k-1 is scored on the same questions as k.
    trained = _trained_questions(session, current)
    before_tags, after_tags = tag_means(session, previous, trained), tag_means(session, current)
    before = _row_scores(session, previous, trained) if trained else _stored_scores(previous)
    after = _stored_scores(current)
    return IterationComparison(
        run_id=run.id,  # type: ignore[arg-type]
        iteration=run.iteration,
        parent_run_id=parent.id,  # type: ignore[arg-type]
        parent_iteration=parent.iteration,
        overall=(before.overall, after.overall),
        win_rate=(before.win_rate, after.win_rate),
        invalid_rate=(before.invalid_rate, after.invalid_rate),
        chrf=(before.chrf, after.chrf),
        gate_passed=(previous.gate_passed, current.gate_passed),
        tags={
            tag: (before_tags.get(tag), after_tags.get(tag)) for tag in sorted(before_tags.keys() | after_tags.keys())
        },
        changes=_iteration_changes(session, run),
        versus_previous=(current.scores or {}).get("versus_previous"),
        left_out=len(trained_positions(current)),
    )


def _trained_questions(session: Session, evaluation: Evaluation) -> set[str]:
    """The questions of the test samples the evaluated run trained on."""
    positions = trained_positions(evaluation)
    if not positions:
        return set()
    rows = session.exec(
        select(Judgement.question, Judgement.position).where(Judgement.evaluation_id == evaluation.id)
    ).all()
    return {question for question, position in rows if position in positions}


class _Scores(NamedTuple):
    """What "Compared with iteration k-1" shows of one evaluation."""

    overall: float | None
    win_rate: float | None
    invalid_rate: float | None
    chrf: float | None


def _stored_scores(evaluation: Evaluation) -> _Scores:
    return _Scores(
        _score(evaluation, "judge", "means", "tuned", "overall"),
        _score(evaluation, "judge", "pairwise", "win_rate"),
        evaluation.invalid_rate,
        _score(evaluation, "reference", "tuned", "chrf"),
    )


def _row_scores(session: Session, evaluation: Evaluation, leave_out: set[str]) -> _Scores:
    """`evaluation`'s scores from its judgements, leaving out the questions in `leave_out` and those its own run
    trained on (as its stored scores do)."""
    trained = trained_positions(evaluation)
    rows = [
        row
        for row in session.exec(
            select(
                Judgement.overall, Judgement.pairwise, Judgement.detail, Judgement.question, Judgement.position
            ).where(Judgement.evaluation_id == evaluation.id)
        ).all()
        if row.question not in leave_out and row.position not in trained
    ]
    overall = [row.overall for row in rows if row.overall is not None]
    verdicts = [row.pairwise for row in rows if row.pairwise is not None]
    details = [row.detail or {} for row in rows]
    judged = [j for d in details for j in [d.get("base"), d.get("tuned"), *(d.get("pair") or [])] if j]
    chrf = [d["reference"]["tuned"]["chrf"] for d in details if d.get("reference")]
    return _Scores(
        sum(overall) / len(overall) if overall else None,
        sum(p == "tuned" for p in verdicts) / len(verdicts) if verdicts else None,
        sum(not j.get("valid") for j in judged) / len(judged)
        if judged and evaluation.invalid_rate is not None
        else None,
        sum(chrf) / len(chrf) if chrf else None,
    )


def _iteration_changes(session: Session, run: Run) -> dict[str, list[str]]:
    """Per sub-scenario, what iteration k changed: the data targeted at it, and the reviews' fixes and drops."""
    changes: dict[str, list[str]] = {}
    targeted = (plan_of(run) or PreparePlan()).targeted
    version = session.get(DatasetVersion, run.dataset_version_id) if run.dataset_version_id else None
    kept = _synthesized_per_tag(session, version) if targeted and targeted.mode == "synthesize" else {}
    for target in targeted.tags if targeted else []:
        if targeted.mode == "synthesize":  # type: ignore[union-attr]
            made = kept.get(target.tag)
            note = f"{_plural(made, 'new sample')}" if made is not None else f"{target.count} new samples planned"
        else:
            note = f"oversampled ×{target.factor:.3g} ({target.count} extra copies)"
        changes.setdefault(target.tag, []).append(note)
    review = _review_version(session, version)
    for tag, counts in ((review.detail or {}).get("by_tag") or {} if review else {}).items():
        for key, one in (("fixes", "1 fix"), ("drops", "1 drop")):
            if counts.get(key):
                changes.setdefault(tag, []).append(one if counts[key] == 1 else f"{counts[key]} {key}")
    return changes


def _review_version(session: Session, version: DatasetVersion | None) -> DatasetVersion | None:
    """The review version a next iteration trains on: its own, or the one its targeted synthesis was added to."""
    if version is not None and version.kind == "synthesis" and version.parent_id:
        version = session.get(DatasetVersion, version.parent_id)
    return version if version is not None and version.kind == "review" else None


def _synthesized_per_tag(session: Session, version: DatasetVersion | None) -> dict[str, int]:
    report = (version.detail or {}) if version is not None and version.kind == "synthesis" else {}
    return {tag: row.get("kept", 0) for tag, row in (report.get("per_scenario") or {}).items()}


def _latest_evaluation(session: Session, run_id: int) -> Evaluation | None:
    return session.exec(
        select(Evaluation).where(Evaluation.run_id == run_id).order_by(col(Evaluation.id).desc())
    ).first()


def _score(evaluation: Evaluation, *path: str) -> float | None:
    value: object = evaluation.scores or {}
    for key in path:
        value = value.get(key) if isinstance(value, dict) else None
    return float(value) if isinstance(value, int | float) else None


def _versus_line(versus: dict, parent_iteration: int) -> str:
    """ "win rate against iteration 1: 75% (3 won, 1 lost, 0 tied of 4; 2 were DPO pairs)"."""
    pairwise = versus.get("pairwise") or {}
    rate = pairwise.get("win_rate")
    shown = f"{rate * 100:.0f}%" if isinstance(rate, int | float) else "n/a"
    counts = f"{pairwise.get('wins', 0)} won, {pairwise.get('losses', 0)} lost, {pairwise.get('ties', 0)} tied"
    counts += f" of {pairwise.get('pairs', 0)}"
    if versus.get("left_out"):
        counts += f" questions it did not train on; {versus['left_out']} it trained on left out"
    return f"win rate against iteration {parent_iteration}: {shown} ({counts})"


def _percent(pair: tuple[float | None, float | None]) -> tuple[float | None, float | None]:
    return tuple(None if v is None else v * 100 for v in pair)  # type: ignore[return-value]


def _move(label: str, before: float | None, after: float | None, form: str, delta: str) -> str:
    shown = [form.format(v) if v is not None else "n/a" for v in (before, after)]
    line = f"{label} {shown[0]} → {shown[1]}"
    if before is None or after is None:
        return line
    return f"{line} ({delta.format(after - before)})"


def _gate_word(passed: bool | None) -> str:
    return "not decided" if passed is None else ("passed" if passed else "failed")


def _plural(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"
