"""Reviews and iterations: the weakest judged samples as cards to keep, fix or drop, the summary of what the
reviews change, and the next iteration they start."""

from sqlmodel import Session, col, select

from bot.core import permissions
from bot.core.actions import Retrain, Review, ShowReview, ShowReviewSummary
from bot.core.catalogue import say
from bot.core.context import Context, Handler
from bot.core.errors import UserError
from bot.core.messages import Message
from bot.core.render import change_phrase, review_cards, run_card, summary_message
from engine.loop.reviews import record_review, review_summary, start_next_iteration
from engine.loop.runs import latest_evaluation
from storage.models import Evaluation, Judgement, Run
from storage.models import Review as ReviewRow


def _show_review(context: Context, action: ShowReview) -> list[Message]:
    run, _ = context.run(action.run)
    judgements = _weakest(context.session, run, action.limit)
    if not judgements:
        return [Message(say(context.language, "review.none", run=run.id), run_id=run.id)]
    latest = _latest_verdicts(context.session, [j.id for j in judgements])  # type: ignore[misc]
    return review_cards(run, judgements, latest, context.language)


def _weakest(session: Session, run: Run, limit: int) -> list[Judgement]:
    """The run's latest evaluation's judged samples, lowest score first (invalid judgements, unscored, last)."""
    evaluation = latest_evaluation(session, run.id)  # type: ignore[arg-type]
    if evaluation is None:
        return []
    judgements = session.exec(select(Judgement).where(Judgement.evaluation_id == evaluation.id)).all()
    weakest = (evaluation.scores or {}).get("weakest") or {}
    by_position = {j.position: j for j in judgements}
    chosen = [by_position[i] for i in weakest.get("indices") or [] if i in by_position]
    rest = sorted(
        (j for j in judgements if j not in chosen),
        key=lambda j: (j.overall is None, j.overall if j.overall is not None else 0.0, j.id),
    )
    return (chosen + rest)[:limit]


def _latest_verdicts(session: Session, judgement_ids: list[int]) -> dict[int, str]:
    reviews = session.exec(
        select(ReviewRow).where(col(ReviewRow.judgement_id).in_(judgement_ids)).order_by(col(ReviewRow.id))
    ).all()
    return {review.judgement_id: review.verdict for review in reviews if review.judgement_id is not None}


def _review(context: Context, action: Review) -> list[Message]:
    run, project = context.run(action.run)
    judged_in = context.session.exec(
        select(Evaluation.run_id)
        .join(Judgement, col(Judgement.evaluation_id) == col(Evaluation.id))
        .where(Judgement.id == action.judgement)
    ).first()
    if judged_in != run.id:
        raise UserError(say(context.language, "review.not_of_run", id=action.judgement, run=run.id))
    if action.verdict == "fix" and not (action.answer or "").strip():
        raise UserError(say(context.language, "review.fix_needs_answer", run=run.id, id=action.judgement))
    permissions.require(project, context.actor, "reviewer", context.language)
    record_review(
        context.session,
        judgement_id=action.judgement,
        reviewer=context.actor.identity,
        verdict=action.verdict,
        corrected_answer=action.answer,
        comment=action.comment,
        platform=context.actor.platform,
        groups=context.actor.group_identities,
    )
    verdict = say(context.language, f"verdict.{action.verdict}")
    return [
        Message(
            say(context.language, "review.recorded", who=context.actor.name, id=action.judgement, verdict=verdict),
            run_id=run.id,
        )
    ]


def _review_summary(context: Context, action: ShowReviewSummary) -> list[Message]:
    run, _ = context.run(action.run)
    return [summary_message(review_summary(context.session, action.run), run, context.language)]


def _retrain(context: Context, action: Retrain) -> list[Message]:
    from engine.work.jobs import enqueue_stage, next_stage

    run, project = context.run(action.run)
    permissions.require_any(project, context.actor, ("reviewer", "requester"), context.language, doing="reviewer")
    following = start_next_iteration(
        context.session, action.run, by=context.actor.identity, platform=context.actor.platform, dpo=action.dpo
    )
    if not following.created:
        return [Message(say(context.language, "retrain.already", run=following.run.id, parent=run.id), run_id=run.id)]
    context.session.commit()
    next_run = following.run
    assert next_run.id is not None and following.summary is not None
    first = next_stage(context.session, next_run) or "train"  # synthesize first when it targets new data
    context.on_queues(lambda pool: enqueue_stage(context.session, pool, next_run.id, first))  # type: ignore[arg-type]
    text = say(
        context.language,
        "retrain.started",
        iteration=next_run.iteration,
        run=next_run.id,
        version=following.version.number,
        change=change_phrase(following.summary, context.language),
    )
    lines = [say(context.language, "retrain.dpo", n=following.summary.pairs)] if action.dpo else []
    return [Message(text, lines=lines, run_id=next_run.id), run_card(context.session, next_run, context.language)]


HANDLERS: dict[type, Handler] = {
    ShowReview: _show_review,
    Review: _review,
    ShowReviewSummary: _review_summary,
    Retrain: _retrain,
}
