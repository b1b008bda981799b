"""Work done in this process: training, evaluating and exporting a model here, as the terminal does on its own
machine (a chat's runs are trained and evaluated by the workers). It is the terminal's only: a chat is refused with
the terminal's command, and with the chat's own way to the same end where there is one. What the engine announces
meanwhile goes to the action's events (the terminal shows it and announces it on the stream)."""

from pathlib import Path

from bot.core import permissions
from bot.core.actions import Evaluate, ExportModel, StartRun, Train
from bot.core.catalogue import say
from bot.core.context import Context, Handler
from bot.core.errors import UserError
from bot.core.grammar import parse_dataset, spell
from bot.core.handlers.runs import run_recipe
from bot.core.messages import Message
from bot.core.render import report_message
from engine.artifacts import get_artifact_store


def _train(context: Context, action: Train) -> list[Message]:
    # The training stack (torch, transformers) loads only when training here: the bots and the cpu worker start light.
    from engine.train.launch import launch_training
    from engine.train.prepare import PrepareError
    from engine.train.sft import TrainingError, train

    session, actor = context.session, context.actor
    project = context.project(action.project)
    permissions.require_terminal(
        actor,
        context.language,
        doing="train",
        command=f"tuneloop train --project {project.name}",
        in_chat=spell(StartRun(project=project.name, data=action.data)),
    )
    permissions.require(project, actor, "requester", context.language)
    if action.resume is not None:
        _, owner = context.run(action.resume)  # a run that is not there is named as such
        if owner.id != project.id:  # it would train into the other project's folder
            raise UserError(say(context.language, "train.resume_other", run=action.resume, project=owner.name))
    if action.processes > 1 and action.out is not None:
        raise UserError(say(context.language, "train.processes_out"))
    dataset, number = parse_dataset(action.data, context.language)
    recipe, notes = run_recipe(context, project, action.recipe, action.options)
    try:
        if action.processes > 1:
            outcome = launch_training(
                session,
                project.name,
                number,
                recipe,
                num_processes=action.processes,
                events=context.events,
                dataset_name=dataset,
                run_id=action.resume,
                requested_by=actor.identity,
            )
        else:
            trained = train(
                session,
                project.name,
                number,
                recipe,
                out_dir=Path(action.out) if action.out else None,
                events=context.events,
                dataset_name=dataset,
                run_id=action.resume,
                requested_by=actor.identity,
            )
            assert trained is not None  # a single process is rank 0
            outcome = trained
    except (PrepareError, TrainingError) as error:
        raise UserError("\n".join([*notes, str(error)])) from None  # what the recipe's reading noted, then why
    run = outcome.run
    language = context.language
    fields = [
        (say(language, "train.adapter"), f"{outcome.adapter_dir} (sha256 {outcome.adapter.sha256[:12]}…)"),
        (say(language, "train.loss_curve"), str(outcome.loss_curve)),
    ]
    done = Message(
        say(language, "train.done", run=run.id, project=project.name),
        lines=[check.message() for check in outcome.eos_checks],
        fields=fields,
        run_id=run.id,
        project=project.name,
    )
    return [*(Message(note, run_id=run.id) for note in notes), done]


def _evaluate(context: Context, action: Evaluate) -> list[Message]:
    from engine.evaluate.results import GenerationSettings
    from engine.evaluate.run import EvaluationError, EvaluationOptions, evaluate_run

    run, _ = context.run(action.run)
    permissions.require_terminal(context.actor, context.language, doing="evaluate", command=f"tuneloop eval {run.id}")
    options = EvaluationOptions(
        judge=action.judge,
        generation=GenerationSettings(max_new_tokens=action.max_new_tokens, batch_size=action.batch_size),
        max_samples=action.max_samples,
        pairwise=action.pairwise,
        stability_prompts=action.stability_prompts,
        stability_k=action.stability_k,
        forgetting=action.forgetting,
        weakest_k=action.weakest,
    )
    try:
        outcome = evaluate_run(context.session, action.run, options, events=context.events)
    except EvaluationError as error:
        raise UserError(str(error)) from None
    report = report_message(context.session, run, outcome.evaluation, context.language)
    report.files.insert(0, outcome.report.markdown)  # on this machine the Markdown report is at hand too
    return [report]


def _export(context: Context, action: ExportModel) -> list[Message]:
    from engine.train.merge import ExportError, export_run  # the training stack, only when exporting

    run, _ = context.run(action.run)
    language = context.language
    command = f"tuneloop export {run.id}" + (" --merge" if action.merge else "")
    permissions.require_terminal(context.actor, language, doing="export", command=command)
    if action.out is not None:
        out = Path(action.out)
    elif run.artifact_prefix:
        out = get_artifact_store().path(run.artifact_prefix) / ("merged" if action.merge else "export")
    else:
        raise UserError(say(language, "export.no_folder", run=run.id))
    try:
        outcome = export_run(context.session, action.run, out, merge=action.merge)
    except ExportError as error:
        raise UserError(str(error)) from None
    lines = [outcome.eos_check.message()] if outcome.eos_check is not None else []
    title = say(language, "export.merged" if outcome.merged else "export.adapter", run=run.id, path=outcome.path)
    return [Message(title, lines=lines, run_id=run.id)]


HANDLERS: dict[type, Handler] = {Train: _train, Evaluate: _evaluate, ExportModel: _export}
