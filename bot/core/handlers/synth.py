"""Synthesis on the terminal: a model writes training data into a new, unreviewed version of a project's dataset,
in this process, its progress announced as it goes. A chat starts a run that synthesizes first, on the workers."""

from contextlib import suppress

from bot.core import permissions
from bot.core.actions import StartRun, Synthesize
from bot.core.context import Context, Handler
from bot.core.errors import UserError
from bot.core.grammar import spell
from bot.core.handlers.projects import created_if_missing
from bot.core.messages import Message
from bot.core.render_data import synth_message
from engine.data.versions import version_label
from engine.loop.projects import NotFoundError
from storage.artifacts import project_key, record_artifact


def _synthesize(context: Context, action: Synthesize) -> list[Message]:
    from engine.artifacts import get_artifact_store
    from engine.data.synth import Budget, SynthError, SynthRequest, synthesize_blocking

    in_chat = spell(StartRun(project=action.project)) + f' synth "{action.task}" n={action.n}'
    with suppress(NotFoundError):
        context.project(action.project)  # answered in its language
    permissions.require_terminal(
        context.actor, context.language, doing="synthesize", command="tuneloop data synth", in_chat=in_chat
    )
    mixes = {"personas": action.personas, "moods": action.moods, "difficulties": action.difficulties}
    request = SynthRequest(
        task=action.task,
        n=action.n,
        model=action.model,
        scenarios=action.scenarios,
        use_existing_tags=action.use_existing_tags,
        **{name: weights for name, weights in mixes.items() if weights},
        multi_turn_ratio=action.multi_turn_ratio,
        per_request=action.per_request,
        seed_version=action.seed_version,
        few_shot=action.few_shot,
        system_prompt=action.system_prompt,
        temperature=action.temperature,
        seed=action.seed,
        dataset=action.dataset,
        job=action.job,
        concurrency=action.concurrency,
        budget=Budget(max_requests=action.max_requests, max_tokens=action.max_tokens, max_cost_usd=action.max_cost),
    )
    try:
        request.check()
    except SynthError as error:
        raise UserError(str(error)) from None
    created = created_if_missing(context, action.project)
    project = context.project(action.project)
    permissions.require(project, context.actor, "requester", context.language, doing="data")
    context.session.commit()  # the project is kept: synthesis stores every batch in transactions of its own
    actor = context.actor
    try:
        outcome = synthesize_blocking(
            context.core.engine,
            project.name,
            request,
            events=context.events,
            actor=actor.identity,
            platform=actor.platform,
        )
    except SynthError as error:
        raise UserError(str(error)) from None
    # The report's Markdown is kept beside the dataset's, for a chat thread or the terminal's --markdown.
    store = get_artifact_store(context.core.settings)
    key = project_key(project.name, "datasets", action.dataset, "synth", f"{outcome.job}.md")
    stored = store.put_bytes(key, outcome.markdown.encode())
    record_artifact(context.session, stored, project_id=project.id, kind="report")
    change = outcome.change
    label = version_label(context.session, change.version) if change is not None else None
    summary = change.version.summary if change is not None else ""
    message = synth_message(outcome.report, label, bool(change and change.created), summary, context.language)
    message.files.append(store.path(key))
    return [*created, message]


HANDLERS: dict[type, Handler] = {Synthesize: _synthesize}
