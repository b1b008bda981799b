"""Runs: starting one on the workers (on a dataset version, an upload or synthesis), following them, stopping and
retrying them."""

from pathlib import Path
from typing import Any

from pydantic import ValidationError

from bot.core import permissions
from bot.core.actions import (
    Cancel,
    ImportData,
    ListRuns,
    Reconcile,
    Retry,
    ShowHistory,
    ShowReport,
    StartRun,
    Status,
)
from bot.core.catalogue import say
from bot.core.context import Context, Handler
from bot.core.errors import UserError
from bot.core.grammar import parse_dataset
from bot.core.handlers.data import import_upload, ratio_or_count
from bot.core.messages import Message
from bot.core.render import history_message, report_message, run_card, runs_message, state_word
from engine.loop.runs import cancel_run, failed_from, latest_evaluation, list_runs, run_history
from engine.train.recipe import DEFAULT_RECIPE, Recipe, read_recipe
from storage.models import Project, Run

GOING = ("queued", "preparing", "training", "evaluating", "deploying")


def _start_run(context: Context, action: StartRun) -> list[Message]:
    from engine.data.filters import FilterConfig
    from engine.data.split import SplitConfig
    from engine.loop.prepare import PreparePlan, SynthPlan
    from engine.work.jobs import submit_run

    session, actor = context.session, context.actor
    project = context.project(action.project)
    permissions.require(project, actor, "requester", context.language)
    dataset, number = parse_dataset(action.data, context.language)
    messages = []
    if action.upload is not None:
        upload = ImportData(upload=action.upload, upload_name=action.upload_name, dataset=dataset)
        imported, number = import_upload(context, project, upload)
        messages.append(imported)
    recipe, notes = run_recipe(context, project, action.recipe, action.options)
    messages += [Message(note) for note in notes]
    try:
        plan = PreparePlan(
            synthesize=SynthPlan(task=action.task, n=action.synthesize) if action.task and action.synthesize else None,
            filter=FilterConfig() if action.filter else None,
            split=SplitConfig(test_size=ratio_or_count(action.test_size)) if action.split else None,
        )
    except ValidationError as error:
        raise UserError(f"cannot prepare that run: {error.errors()[0]['msg']}") from None
    preparing = bool(plan.synthesize or plan.filter or plan.split)
    run = context.on_queues(
        lambda pool: submit_run(
            session,
            pool,
            project.name,
            number,
            recipe,
            actor.identity,
            dataset_name=dataset,
            platform=actor.platform,
            plan=plan if preparing else None,
            groups=actor.group_identities,
        )
    )
    stage = say(context.language, "stage.preparation" if preparing else "stage.training")
    for message in messages:
        message.run_id = run.id  # what the import found belongs in the run's thread
    messages.append(
        Message(say(context.language, "run.queued", run=run.id, project=project.name, stage=stage), run_id=run.id)
    )
    messages.append(run_card(session, run, context.language))
    return messages


def run_recipe(
    context: Context, project: Project, recipe_file: str | None, options: dict[str, Any]
) -> tuple[Recipe, list[str]]:
    """The recipe a new run of `project` trains: the file (the default recipe if None) under the project's own
    settings, under the person's `options`; and what reading it noted (a LLaMA-Factory key it ignores), in words."""
    chosen = {**(project.recipe or {}), **options}
    if project.base_model and "model_name_or_path" not in options:
        chosen["model_name_or_path"] = project.base_model
    path = Path(recipe_file) if recipe_file else DEFAULT_RECIPE
    loaded = read_recipe(path, **chosen)
    return loaded.recipe, [say(context.language, "run.recipe_note", recipe=path.name, note=n) for n in loaded.notes]


def _status(context: Context, action: Status) -> list[Message]:
    if action.run is not None:
        run, _ = context.run(action.run)
        return [run_card(context.session, run, context.language)]
    rows = [(run, name) for run, name in list_runs(context.session) if run.state in GOING]
    return [runs_message(rows, context.language, going=True)]


def _list_runs(context: Context, action: ListRuns) -> list[Message]:
    if action.project is not None:
        context.project(action.project)
    return [runs_message(list_runs(context.session, project=action.project, state=action.state), context.language)]


def _history(context: Context, action: ShowHistory) -> list[Message]:
    context.run(action.run)
    return [history_message(run_history(context.session, action.run), context.language)]


def _report(context: Context, action: ShowReport) -> list[Message]:
    run, _ = context.run(action.run)
    evaluation = latest_evaluation(context.session, action.run)
    if evaluation is None:
        return [run_card(context.session, run, context.language)]
    return [report_message(context.session, run, evaluation, context.language)]


def _cancel(context: Context, action: Cancel) -> list[Message]:
    run, project = context.run(action.run)
    _require_requester_or_approver(context, run, project)
    cancel_run(context.session, run.id, context.actor.identity, platform=context.actor.platform)  # type: ignore[arg-type]
    return [Message(say(context.language, "run.cancelled", run=run.id, who=context.actor.name), run_id=run.id)]


def _retry(context: Context, action: Retry) -> list[Message]:
    from engine.work.jobs import is_queued_run, retry_and_enqueue

    run, project = context.run(action.run)
    _require_requester_or_approver(context, run, project)
    if not is_queued_run(context.session, action.run) and failed_from(context.session, run) != "deploying":
        raise UserError(say(context.language, "run.retried_inline", run=action.run))
    actor = context.actor
    job = context.on_queues(
        lambda pool: retry_and_enqueue(context.session, pool, action.run, actor.identity, platform=actor.platform)
    )
    stage = state_word(context.language, run.state)
    queued = job.arq_job_id if job else "-"
    return [
        Message(
            say(context.language, "run.retried", run=run.id, who=actor.name, stage=stage, job=queued), run_id=run.id
        ),
        run_card(context.session, run, context.language),
    ]


def _reconcile(context: Context, action: Reconcile) -> list[Message]:
    """Re-queue the stages whose worker went silent or whose queue entry was lost; take cancelled runs' jobs off."""
    from engine.work.reconcile import reconcile

    language = context.language
    permissions.require_terminal(context.actor, language, doing="reconcile", command="tuneloop reconcile")
    silent_after_s = context.core.settings.silent_after_s
    report = context.on_queues(lambda pool: reconcile(context.session, pool, silent_after_s=silent_after_s))
    named = (("lost", report.lost), ("requeued", report.requeued), ("cancelled", report.cancelled))
    lines = [say(language, f"reconcile.{what}", jobs=", ".join(jobs)) for what, jobs in named if jobs]
    return [Message(line) for line in lines or [say(language, "reconcile.nothing")]]


def _require_requester_or_approver(context: Context, run: Run, project: Project) -> None:
    """A run is stopped or retried by whoever started it or by an approver."""
    if run.requested_by == context.actor.identity:
        return
    permissions.require_any(project, context.actor, ("approver",), context.language, doing="cancel", run=run.id)


HANDLERS: dict[type, Handler] = {
    StartRun: _start_run,
    Status: _status,
    ListRuns: _list_runs,
    ShowHistory: _history,
    ShowReport: _report,
    Cancel: _cancel,
    Retry: _retry,
    Reconcile: _reconcile,
}
