"""Data: a file a person shares (or the terminal names) imported as a new version of a project's dataset, and a
refused file's problems as people read them."""

import os
from dataclasses import replace
from pathlib import Path

from bot.core import permissions
from bot.core.actions import ImportData, StartRun
from bot.core.catalogue import say
from bot.core.context import Context, Handler
from bot.core.errors import UserError
from bot.core.grammar import spell
from bot.core.handlers.projects import created_if_missing
from bot.core.messages import Message
from engine.data.errors import RecordProblem
from engine.data.versions import DEFAULT_DATASET
from storage.models import Project

SHOWN_PROBLEMS = 10  # a refused file's problems shown in chat; the rest are counted


def _import_data(context: Context, action: ImportData) -> list[Message]:
    created = []
    if action.run is not None:
        _, project = context.run(action.run)
    else:
        if action.create:
            created = created_if_missing(context, action.project or "")
        project = context.project(action.project or "")
    permissions.require(project, context.actor, "requester", context.language)
    if not action.upload:
        raise UserError(say(context.language, "import.whose"))
    imported, number = import_upload(context, project, action)
    data = str(number) if action.dataset == DEFAULT_DATASET else f"{action.dataset}:{number}"
    train = spell(StartRun(project=project.name, data=data))
    imported.lines.append(say(context.language, "import.next", command=train))
    imported.run_id = action.run
    return [*created, imported]


def import_upload(context: Context, project: Project, action: ImportData) -> tuple[Message, int]:
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
        lines += problem_lines(headline, loaded.problems, language)
        files.append(outcome.rejects_path)
    return Message(summary, lines=lines, files=files), version.number


def problem_lines(headline: str, problems: list[RecordProblem], language: str) -> list[str]:
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


HANDLERS: dict[type, Handler] = {ImportData: _import_data}
