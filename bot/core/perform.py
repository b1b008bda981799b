"""Carrying out what a person asked: `Core.perform(action, actor)` checks who may, calls the engine and answers with
messages in the person's language. It is synchronous and blocking (the database, the queues, a deployment); a chat
face calls `perform_async`, which runs it off the event loop, in a thread, so that no face blocks its loop.

Rules that every face shares live here, once: whether an approval queues the deployment (a run its workers ran) or
deploys in this process, which stage a retry goes on from, how a run is assembled from a dataset, an upload or
synthesis, and that a Fix needs the answer. Engine errors become UserErrors, whose message is the sentence to show;
refusals are audited."""

import asyncio
import os
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

from pydantic import ValidationError
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from bot.core import permissions
from bot.core.actions import (
    Action,
    Approve,
    Cancel,
    ConfigureProject,
    DeployUnapproved,
    Help,
    ImportData,
    ListRuns,
    NewProject,
    RequestApproval,
    Retrain,
    Retry,
    Review,
    Rollback,
    SetLanguage,
    ShowHistory,
    ShowProject,
    ShowReport,
    ShowReview,
    ShowReviewSummary,
    StartRun,
    Status,
    dump_action,
    load_action,
)
from bot.core.catalogue import DEFAULT_LANGUAGE, LANGUAGES, say
from bot.core.errors import UserError
from bot.core.grammar import parse, parse_dataset, spell
from bot.core.identity import Actor
from bot.core.messages import Message
from bot.core.render import (
    change_phrase,
    deployed_message,
    help_message,
    history_message,
    project_message,
    report_message,
    review_cards,
    run_card,
    runs_message,
    state_word,
    summary_message,
)
from engine.data.errors import DataError, RecordProblem
from engine.data.split import SplitError
from engine.data.versions import DEFAULT_DATASET
from engine.database import DatabaseNotReadyError
from engine.loop.projects import NotFoundError, ProjectNameError, get_or_create_project, get_project, list_projects
from engine.loop.reviews import ReviewError, record_review, review_summary, start_next_iteration
from engine.loop.runs import (
    RunError,
    approve_run,
    cancel_run,
    deploy_approved,
    failed_from,
    get_run,
    latest_evaluation,
    list_runs,
    request_approval,
    run_history,
)
from engine.serve.adapters import DeployError
from engine.settings import Settings, get_settings
from engine.train.recipe import DEFAULT_RECIPE, RecipeError, read_recipe
from storage.db import ConflictError, session_scope
from storage.models import AuditEvent, ChatAction, ChatUser, Evaluation, Judgement, Project, Run
from storage.models import Review as ReviewRow

Result = TypeVar("Result")
SHOWN_PROBLEMS = 10  # a refused file's problems shown in chat; the rest are counted
GOING = ("queued", "preparing", "training", "evaluating", "deploying")
# What people see as engine sentences: the engine's own errors about what they asked.
_ENGINE_MISTAKES = (
    RunError,
    ReviewError,
    NotFoundError,
    ProjectNameError,
    DeployError,
    RecipeError,
    SplitError,
    DatabaseNotReadyError,
    ConflictError,
)


@dataclass
class Context:
    """One action being carried out: its unit of work, who asked, and the language to answer in."""

    core: "Core"
    session: Session
    actor: Actor
    language: str

    def project(self, name: str) -> Project:
        project = get_project(self.session, name)
        self.language = self.core.language_for(self.session, self.actor, project)
        return project

    def run(self, run_id: int) -> tuple[Run, Project]:
        run = get_run(self.session, run_id)
        project = self.session.get(Project, run.project_id)
        assert project is not None
        self.language = self.core.language_for(self.session, self.actor, project)
        return run, project

    def on_queues(self, call: Callable[[Any], Awaitable[Result]]) -> Result:
        return self.core.on_queues(call)


@dataclass
class Core:
    engine: Engine
    settings: Settings

    @classmethod
    def from_settings(cls) -> "Core":
        from engine.database import get_engine

        return cls(get_engine(), get_settings())

    # --- carrying out -----------------------------------------------------------------------------------------

    def perform(self, action: Action, actor: Actor) -> list[Message]:
        """Carry out `action` for `actor`; raises UserError (the sentence to show) when it cannot be done."""
        handler = _HANDLERS[type(action)]
        language = DEFAULT_LANGUAGE
        try:
            with session_scope(self.engine) as session:
                context = Context(self, session, actor, self.language_for(session, actor))
                try:
                    return handler(context, action)
                finally:
                    language = context.language
        except UserError as error:
            if error.refused:
                self.audit_refusal(action, actor, str(error))
            raise
        except DataError as error:
            # What is wrong with a file, record by record (file, record, field): for everyone who shares it.
            raise UserError("\n".join(_problem_lines(error.headline, error.problems, language)), public=True) from None
        except _ENGINE_MISTAKES as error:
            # The core checked who may first; the engine's own refusals are its backstop and say why themselves.
            sentence = str(error) or say(language, "error.internal", kind=type(error).__name__)
            transient = isinstance(error, ConflictError | DatabaseNotReadyError)
            raise UserError(sentence, not_found=isinstance(error, NotFoundError), transient=transient) from None

    def audit_refusal(self, action: Action, actor: Actor, reason: str) -> None:
        """Keep a refusal on record, in its own transaction: the refused action's own work was rolled back."""
        with session_scope(self.engine) as session:
            permissions.record_refusal(session, actor, action.kind, _project_id(session, action), reason)

    async def perform_async(self, action: Action, actor: Actor) -> list[Message]:
        """`perform` off the event loop: the database and the queues are reached from a thread."""
        return await asyncio.to_thread(self.perform, action, actor)

    def parse(self, text: str, actor: Actor) -> Action:
        """Chat text as an action, mistakes answered in the person's language with the closest valid word."""
        with session_scope(self.engine) as session:
            language = self.language_for(session, actor)
            projects = [project.name for project in list_projects(session)]
        return parse(text, language, projects)

    def on_queues(self, call: Callable[[Any], Awaitable[Result]]) -> Result:
        """Run `call` with a connection to the configured queues, then close it. `perform` runs in a thread of its
        own (or the terminal's main thread), never on a face's event loop, so the queue gets a short loop here."""
        from engine.work.connection import QueuesUnreachableError, open_queues

        async def run() -> Result:
            pool = await open_queues(self.settings.redis_url)
            try:
                return await call(pool)
            finally:
                await pool.aclose()

        try:
            return asyncio.run(run())
        except QueuesUnreachableError as error:
            # Its URL shown with the password hidden; like a run that is not there, nothing to act on (exit 1).
            raise UserError(str(error), not_found=True) from None

    # --- languages and buttons ------------------------------------------------------------------------------

    def language_for(self, session: Session, actor: Actor, project: Project | None = None) -> str:
        """The person's own choice, else the project's, else English."""
        chosen = session.exec(
            select(ChatUser.language).where(ChatUser.platform == actor.platform, ChatUser.user_id == actor.user_id)
        ).first()
        if chosen:
            return chosen
        language = (project.settings or {}).get("language") if project is not None else None
        return language if language in LANGUAGES else DEFAULT_LANGUAGE

    def language_of(self, actor: Actor, project: str | None = None) -> str:
        """`language_for` in a session of its own, `project` named (None or unknown: the person's or English)."""
        with Session(self.engine) as session:
            row = session.exec(select(Project).where(Project.name == project)).first() if project else None
            return self.language_for(session, actor, row)

    def store_buttons(self, messages: list[Message]) -> list[Message]:
        """Give every button a short key under which its action is kept server-side (a chat face sends the key)."""
        with session_scope(self.engine) as session:
            for message in messages:
                for button in message.buttons:
                    if button.key is None:
                        button.key = secrets.token_urlsafe(12)  # 16 characters, unguessable
                        stored = ChatAction(
                            key=button.key, action=dump_action(button.action), asks=button.asks_for_text
                        )
                        session.add(stored)
        return messages

    def action_for_key(self, key: str) -> Action:
        return self.button_for_key(key)[0]

    def button_for_key(self, key: str) -> tuple[Action, str | None]:
        """A pressed button's action, and the prompt for the text it needs first (None: it needs none)."""
        with session_scope(self.engine) as session:
            stored = session.exec(select(ChatAction).where(ChatAction.key == key)).first()
        if stored is None:
            raise UserError(say(DEFAULT_LANGUAGE, "error.internal", kind="unknown button"))
        return load_action(stored.action), stored.asks


def _project_id(session: Session, action: Action) -> int | None:
    name = getattr(action, "project", None)
    if name is not None:
        return session.exec(select(Project.id).where(Project.name == name)).first()
    run_id = getattr(action, "run", None)
    if run_id is not None:
        return session.exec(select(Run.project_id).where(Run.id == run_id)).first()
    return None


# --- projects -----------------------------------------------------------------------------------------------


def _help(context: Context, action: Help) -> list[Message]:
    return [help_message(action.topic, context.language)]


def _project_exists(session: Session, name: str) -> bool:
    return session.exec(select(Project.id).where(Project.name == name)).first() is not None


def _created_if_missing(context: Context, name: str) -> list[Message]:
    """Create project `name` unless it exists (a terminal's `project set` or import); the sentence saying so."""
    return [] if _project_exists(context.session, name) else _new_project(context, NewProject(project=name))[:1]


def _new_project(context: Context, action: NewProject) -> list[Message]:
    session = context.session
    if _project_exists(session, action.project):
        context.project(action.project)  # answered in the project's language
        raise UserError(say(context.language, "project.exists", project=action.project))
    project = get_or_create_project(session, action.project)
    _apply_settings(project, action.base_model, action.template, action.language)
    session.add(project)
    _audit(context, "project.created", project, {"base_model": action.base_model, "template": action.template})
    context.language = context.core.language_for(session, context.actor, project)
    return [
        Message(say(context.language, "project.created", project=project.name)),
        project_message(project, context.language),
    ]


def _configure_project(context: Context, action: ConfigureProject) -> list[Message]:
    if action.create:
        _created_if_missing(context, action.project)
    project = context.project(action.project)
    people = {"reviewers": action.reviewers, "approvers": action.approvers, "requesters": action.requesters}
    if any(value is not None for value in (*people.values(), action.channels, action.four_eyes)):
        # Who may do what is the approvers' to change, once there are any.
        permissions.require(project, context.actor, "approver", context.language, doing="configure")
    _apply_settings(project, action.base_model, action.template, action.language)
    if action.tokenizer is not None:
        project.tokenizer_path = action.tokenizer
    settings = dict(project.settings or {})
    if action.reviewers is not None:
        project.reviewers = action.reviewers
    if action.approvers is not None:
        project.approvers = action.approvers
    if action.requesters is not None:
        settings["requesters"] = action.requesters
    if action.channels is not None:
        settings["channels"] = action.channels
    if action.language is not None:
        settings["language"] = action.language
    if action.four_eyes is not None:
        settings["approver_not_requester"] = action.four_eyes
    project.settings = {**(project.settings or {}), **settings}
    context.session.add(project)
    _audit(context, "project.configured", project, dump_action(action))
    context.language = context.core.language_for(context.session, context.actor, project)
    return [
        Message(say(context.language, "project.updated", project=project.name)),
        project_message(project, context.language),
    ]


def _apply_settings(project: Project, base_model: str | None, template: str | None, language: str | None) -> None:
    if base_model is not None:
        project.base_model = base_model
    if template is not None:
        project.recipe = {**(project.recipe or {}), "template": template}
    if language is not None:
        project.settings = {**(project.settings or {}), "language": language}


def _show_project(context: Context, action: ShowProject) -> list[Message]:
    return [project_message(context.project(action.project), context.language)]


def _set_language(context: Context, action: SetLanguage) -> list[Message]:
    session, actor = context.session, context.actor
    row = session.exec(
        select(ChatUser).where(ChatUser.platform == actor.platform, ChatUser.user_id == actor.user_id)
    ).first() or ChatUser(platform=actor.platform, user_id=actor.user_id)
    row.language = action.language
    session.add(row)
    context.language = action.language
    return [Message(say(action.language, "language.set"))]


# --- runs ----------------------------------------------------------------------------------------------------


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
        imported, number = _import(context, project, upload)
        messages.append(imported)
    options = {**(project.recipe or {}), **action.options}
    if project.base_model and "model_name_or_path" not in action.options:
        options["model_name_or_path"] = project.base_model
    recipe_path = Path(action.recipe) if action.recipe else DEFAULT_RECIPE
    loaded = read_recipe(recipe_path, **options)
    recipe = loaded.recipe
    messages += [
        Message(say(context.language, "run.recipe_note", recipe=recipe_path.name, note=n)) for n in loaded.notes
    ]
    try:
        plan = PreparePlan(
            synthesize=SynthPlan(task=action.task, n=action.synthesize) if action.task and action.synthesize else None,
            filter=FilterConfig() if action.filter else None,
            split=SplitConfig(test_size=int(action.test_size) if action.test_size >= 1 else action.test_size)
            if action.split
            else None,
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


def _import_data(context: Context, action: ImportData) -> list[Message]:
    created = []
    if action.run is not None:
        _, project = context.run(action.run)
    else:
        if action.create:
            created = _created_if_missing(context, action.project or "")
        project = context.project(action.project or "")
    permissions.require(project, context.actor, "requester", context.language)
    if not action.upload:
        raise UserError(say(context.language, "import.whose"))
    imported, number = _import(context, project, action)
    data = str(number) if action.dataset == DEFAULT_DATASET else f"{action.dataset}:{number}"
    train = spell(StartRun(project=project.name, data=data))
    imported.lines.append(say(context.language, "import.next", command=train))
    imported.run_id = action.run
    return [*created, imported]


def _import(context: Context, project: Project, action: ImportData) -> tuple[Message, int]:
    """Import an uploaded file as a new version of the project's dataset (committed: the data is kept whatever
    comes next); its summary (what was read, warnings, the rejects file when records were refused) and the version's
    number. A file with no valid record, or any invalid one unless `skip_invalid`, is refused (DataError) record by
    record."""
    from engine.data.pipeline import import_file

    path = Path(action.upload)
    outcome = import_file(
        context.session,
        project.name,
        path,
        dataset_name=action.dataset,
        fmt=action.format,
        encoding=action.encoding,
        entry=action.entry,
        limits=context.core.settings.read_limits(action.max_bytes),
        skip_invalid=action.skip_invalid,
        rejects_path=Path(action.rejects) if action.rejects else None,
        actor=context.actor.identity,
        platform=context.actor.platform,
    )
    context.session.commit()  # the data is kept even when the run cannot start
    version, loaded = outcome.change.version, outcome.loaded
    language, shown = context.language, action.upload_name or path.name
    where = {"project": project.name, "dataset": action.dataset, "version": version.number}
    if outcome.change.created:
        summary = say(
            language, "run.imported", file=shown, added=outcome.added, present=outcome.already_present, **where
        )
    else:
        summary = say(language, "import.nothing_new", file=shown, **where)
    read = say(
        language,
        "import.read",
        records=loaded.records,
        format=loaded.format,
        encoding=loaded.encoding,
        valid=len(loaded.samples),
        refused=len(loaded.problems),
    )
    lines, files = [read, *(say(language, "import.warning", warning=w) for w in loaded.warnings)], []
    if outcome.rejects_path is not None:
        headline = say(language, "import.rejected", n=len(loaded.problems), file=outcome.rejects_path.name)
        lines += _problem_lines(headline, loaded.problems, language)
        files.append(outcome.rejects_path)
    return Message(summary, lines=lines, files=files), version.number


def _problem_lines(headline: str, problems: list[RecordProblem], language: str) -> list[str]:
    """A file's problems as people read them: the headline, then the first few (file, record, field: what is
    wrong), the rest counted. A file is named by its name alone: where it was kept on this machine is nobody's
    business in a chat."""
    folders = {str(Path(problem.file).parent) + os.sep for problem in problems if problem.file}
    shown = [str(replace(problem, file=Path(problem.file).name)) for problem in problems[:SHOWN_PROBLEMS]]
    if len(problems) > SHOWN_PROBLEMS:
        shown.append(say(language, "import.more_problems", n=len(problems) - SHOWN_PROBLEMS))
    for folder in folders:
        headline = headline.replace(folder, "")
    return [headline, *shown]


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


def _require_requester_or_approver(context: Context, run: Run, project: Project) -> None:
    """A run is stopped or retried by whoever started it or by an approver."""
    if run.requested_by == context.actor.identity:
        return
    permissions.require_any(project, context.actor, ("approver",), context.language, doing="cancel", run=run.id)


# --- reviews and iterations ----------------------------------------------------------------------------------


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


# --- approval, deployment, rollback --------------------------------------------------------------------------


def _request_approval(context: Context, action: RequestApproval) -> list[Message]:
    run, project = context.run(action.run)
    permissions.require_any(project, context.actor, ("reviewer", "requester"), context.language, doing="reviewer")
    request_approval(context.session, action.run, context.actor.identity, platform=context.actor.platform)
    approvers = ", ".join(map(str, project.approvers or [])) or say(context.language, "word.anyone")
    return [
        Message(say(context.language, "approval.requested", run=run.id, approvers=approvers), run_id=run.id),
        run_card(context.session, run, context.language),
    ]


def _approve(context: Context, action: Approve) -> list[Message]:
    """Approve, then deploy: on the cpu queue's workers for a run its workers ran (a worker's reconciler would
    deploy it anyway), in this process for a run trained on the terminal."""
    from engine.work.jobs import approve_and_enqueue, is_queued_run

    run, project = context.run(action.run)
    actor, session = context.actor, context.session
    permissions.require(project, actor, "approver", context.language)
    override = (action.override or "").strip() or None
    approval: dict[str, Any] = {
        "platform": actor.platform,
        "override_reason": override,
        "groups": actor.group_identities,
    }
    if is_queued_run(session, action.run):
        job = context.on_queues(lambda pool: approve_and_enqueue(session, pool, action.run, actor.identity, **approval))
        lines = [say(context.language, "approval.override", reason=override)] if override else []
        text = say(context.language, "approval.queued", run=run.id, who=actor.name, job=job.arq_job_id)
        return [Message(text, lines=lines, run_id=run.id), run_card(session, run, context.language)]
    approve_run(session, action.run, actor.identity, **approval)
    session.commit()
    approved = Message(say(context.language, "approval.deploying", run=run.id, who=actor.name), run_id=run.id)
    try:
        outcome = deploy_approved(session, action.run, actor.identity, servers=action.servers, platform=actor.platform)
    except (DeployError, RunError, NotFoundError) as error:
        session.commit()  # the run's failure is kept
        raise UserError(say(context.language, "deploy.failed", run=run.id, error=str(error))) from None
    return [approved, _deploy_message(context, run, project, outcome)]


def _deploy_unapproved(context: Context, action: DeployUnapproved) -> list[Message]:
    """The operator's way around approval: the terminal only, with a reason, audited."""
    from engine.serve.deploy import deploy_run

    run, project = context.run(action.run)
    actor = context.actor
    if actor.platform != "cli":
        raise UserError(say(context.language, "refused.operator", run=run.id), refused=True)
    reason = action.reason.strip()
    if not reason:
        raise UserError(say(context.language, "refused.reason"))
    _audit(context, "run.deploy_unapproved", project, {"run": run.id, "state": run.state, "reason": reason}, run=run)
    outcome = deploy_run(context.session, action.run, actor.identity, servers=action.servers, platform=actor.platform)
    message = _deploy_message(context, run, project, outcome)
    message.lines.insert(0, say(context.language, "deploy.unapproved", run=run.id, who=actor.name, reason=reason))
    return [message]


def _deploy_message(context: Context, run: Run, project: Project, outcome: Any) -> Message:
    language = context.language
    if not outcome.ok:
        context.session.commit()  # the failed deployment is kept
        raise UserError(say(language, "deploy.failed", run=run.id, error=outcome.message))
    lines = [outcome.message]
    lines += [say(language, "deploy.answered", server=url, answer=answer) for url, answer in outcome.answers.items()]
    lines += [say(language, "deploy.warning", warning=warning) for warning in outcome.warnings]
    version = outcome.deployment.version_name
    return deployed_message(project.name, version, run.id, language, context.core.settings.gateway_url, lines)  # type: ignore[arg-type]


def _rollback(context: Context, action: Rollback) -> list[Message]:
    from engine.serve.deploy import rollback

    project = context.project(action.project)
    permissions.require(project, context.actor, "approver", context.language)
    outcome = rollback(
        context.session, project.name, context.actor.identity, servers=action.servers, platform=context.actor.platform
    )
    if not outcome.ok:
        context.session.commit()
        raise UserError(outcome.message)
    lines = [say(context.language, "deploy.warning", warning=warning) for warning in outcome.warnings]
    return [Message(say(context.language, "rollback.done", project=project.name, message=outcome.message), lines=lines)]


def _audit(context: Context, action: str, project: Project, detail: dict, *, run: Run | None = None) -> None:
    context.session.flush()
    context.session.add(
        AuditEvent(
            actor=context.actor.identity,
            platform=context.actor.platform,
            action=action,
            project_id=project.id,
            subject_type="run" if run is not None else "project",
            subject_id=run.id if run is not None else project.id,
            detail=detail,
        )
    )


_HANDLERS: dict[type, Callable[[Context, Any], list[Message]]] = {
    Help: _help,
    NewProject: _new_project,
    ConfigureProject: _configure_project,
    ShowProject: _show_project,
    SetLanguage: _set_language,
    StartRun: _start_run,
    ImportData: _import_data,
    Status: _status,
    ListRuns: _list_runs,
    ShowHistory: _history,
    ShowReport: _report,
    Cancel: _cancel,
    Retry: _retry,
    ShowReview: _show_review,
    Review: _review,
    ShowReviewSummary: _review_summary,
    Retrain: _retrain,
    RequestApproval: _request_approval,
    Approve: _approve,
    DeployUnapproved: _deploy_unapproved,
    Rollback: _rollback,
}
