"""Data: a file a person shares (or the terminal names) imported as a new version of a project's dataset, and a
refused file's problems as people read them; the quality filter and the split (each a new version), the export,
a version's report, its versions and samples."""

import difflib
import os
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel, ValidationError

from bot.core import permissions
from bot.core.actions import (
    ExportData,
    FilterData,
    ImportData,
    ListVersions,
    ShowDataReport,
    ShowSamples,
    SplitData,
    StartRun,
)
from bot.core.catalogue import say
from bot.core.context import Context, Handler
from bot.core.errors import UserError
from bot.core.grammar import spell
from bot.core.handlers.projects import created_if_missing, require_tokenizer
from bot.core.messages import Message
from bot.core.render_data import change_message, data_report_message, samples_messages, versions_message
from engine.data.errors import RecordProblem
from engine.data.versions import (
    DEFAULT_DATASET,
    Entry,
    VersionChange,
    get_dataset,
    latest_version,
    list_versions,
    load_entries,
    resolve_version,
    version_label,
)
from engine.loop.projects import NotFoundError
from storage.models import DatasetVersion, Project

Settings = TypeVar("Settings", bound=BaseModel)

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


def _filter_data(context: Context, action: FilterData) -> list[Message]:
    from engine.data.filters import FilterConfig
    from engine.data.pipeline import filter_version, report_version

    project = _changing(context, action.project)
    config = _settings_of(FilterConfig, action.settings, action.source, context.language)
    if action.tokenizer is not None:
        require_tokenizer(action.tokenizer, context.language)
    change = _step(context, project, action, filter_version, config, tokenizer_path=action.tokenizer)
    report = report_version(context.session, project.name, dataset_name=action.dataset, number=change.version.number)
    label = version_label(context.session, change.version)
    return [change_message(label, change, context.language), data_report_message(report, context.language)]


def _split_data(context: Context, action: SplitData) -> list[Message]:
    from engine.data.pipeline import split_version
    from engine.data.split import SplitConfig

    project = _changing(context, action.project)
    sizes = {"test_size": ratio_or_count(action.test_size), "val_size": ratio_or_count(action.val_size)}
    values = {**sizes, "seed": action.seed, "stratify_by_tag": action.stratify}
    config = _settings_of(SplitConfig, values, None, context.language)
    change = _step(context, project, action, split_version, config)
    return [change_message(version_label(context.session, change.version), change, context.language)]


def _step(
    context: Context,
    project: Project,
    action: FilterData | SplitData,
    step: Callable[..., VersionChange],
    config: BaseModel,
    **options: object,
) -> VersionChange:
    """A step that makes a new version (the filter, the split) on the version asked for, by the person asking."""
    parent = _chosen_version(context, project, action.dataset, action.version)
    return step(
        context.session,
        project.name,
        dataset_name=action.dataset,
        number=parent.number,
        config=config,
        actor=context.actor.identity,
        platform=context.actor.platform,
        **options,
    )


def _export_data(context: Context, action: ExportData) -> list[Message]:
    """Files written on this machine: the terminal's only."""
    from engine.data.export import EXPORT_FORMATS
    from engine.data.pipeline import export_version

    command = f"tuneloop data export -p {action.project} --format {action.format} --out DIR"
    project = _changing(context, action.project)
    language = context.language
    permissions.require_terminal(context.actor, language, doing="export_data", command=command)
    if action.format not in EXPORT_FORMATS:
        formats = ", ".join(EXPORT_FORMATS)
        raise UserError(say(language, "data.export_format", format=action.format, formats=formats))
    version = _chosen_version(context, project, action.dataset, action.version)
    paths = export_version(
        context.session,
        project.name,
        action.format,
        Path(action.out),
        dataset_name=action.dataset,
        number=version.number,
        split=action.split,
    )
    split = say(language, "data.of_split", split=action.split) if action.split else ""
    label = version_label(context.session, version)
    exported = say(language, "data.exported", label=label, split=split, format=action.format, n=len(paths))
    return [Message(exported, files=paths)]


def _show_data_report(context: Context, action: ShowDataReport) -> list[Message]:
    """The report, its Markdown and histogram kept in the artifact store (for a chat thread, or the terminal's
    --markdown and --histogram)."""
    from engine.artifacts import get_artifact_store
    from engine.data.pipeline import publish_report

    project = context.project(action.project)
    version = _chosen_version(context, project, action.dataset, action.version)
    store = get_artifact_store(context.core.settings)
    report, stored = publish_report(
        context.session, store, project.name, dataset_name=action.dataset, number=version.number
    )
    paths = [store.path(artifact.key) for artifact in stored]
    files = [path for path in paths if path.suffix == ".md"]
    images = [path for path in paths if path.suffix == ".png"]
    return [data_report_message(report, context.language, files=files, images=images)]


def _list_versions(context: Context, action: ListVersions) -> list[Message]:
    project = context.project(action.project)
    versions = list_versions(context.session, get_dataset(context.session, project.name, action.dataset))
    return [versions_message(f"{project.name}/{action.dataset}", versions, context.language)]


def _show_samples(context: Context, action: ShowSamples) -> list[Message]:
    project = context.project(action.project)
    version = _chosen_version(context, project, action.dataset, action.version)
    entries = load_entries(context.session, version)
    label = version_label(context.session, version)
    if action.samples and (bad := [n for n in action.samples if not 1 <= n <= len(entries)]):
        numbers = ", ".join(map(str, bad))
        raise UserError(say(context.language, "data.no_sample", label=label, count=len(entries), numbers=numbers))
    numbers = action.samples or range(1, len(entries) + 1)

    def matches(entry: Entry) -> bool:
        removed = entry.filter_rule == action.rule or (action.rule == "any" and not entry.in_use)
        return (action.rule is None or removed) and (action.split is None or entry.split == action.split)

    shown = [(n, entries[n - 1]) for n in numbers if matches(entries[n - 1])]
    return samples_messages(label, shown, action.limit, context.language)


def _chosen_version(context: Context, project: Project, dataset: str, number: int | None) -> DatasetVersion:
    """Version `number` of the project's dataset (its latest when None); a number it does not have is said in plain
    words, with the numbers it has."""
    try:
        return resolve_version(context.session, project.name, dataset, number)
    except NotFoundError:
        latest = latest_version(context.session, project.name, dataset) if number is not None else None
        if latest is None:
            raise
        label = f"{project.name}/{dataset}"
        sentence = say(context.language, "data.no_version", dataset=label, version=number, latest=latest.number)
        raise UserError(sentence, not_found=True) from None


def _settings_of(model: type[Settings], values: dict, source: str | None, language: str) -> Settings:
    """`values` as the settings `model`, or what is wrong with them, naming the file and setting, with the closest
    valid name for a misspelt one."""
    try:
        return model(**values)
    except ValidationError as error:
        problems = []
        for problem in error.errors():
            field = ".".join(str(part) for part in problem["loc"])
            close = difflib.get_close_matches(field, model.model_fields, n=1)
            misspelt = problem["type"] == "extra_forbidden" and close
            hint = say(language, "data.did_you_mean", suggestion=close[0]) if misspelt else ""
            where = f"{source}: " if source else ""
            problems.append(say(language, "data.settings", source=where, field=field, problem=problem["msg"]) + hint)
        raise UserError("\n".join(problems)) from None


def ratio_or_count(size: float) -> float | int:
    """A split's size: below 1 a share of the samples, 1 or more a count."""
    return int(size) if size >= 1 else size


def _changing(context: Context, name: str) -> Project:
    """Project `name`, for someone who may change its data (its requesters)."""
    project = context.project(name)
    permissions.require(project, context.actor, "requester", context.language, doing="data")
    return project


HANDLERS: dict[type, Handler] = {
    ImportData: _import_data,
    FilterData: _filter_data,
    SplitData: _split_data,
    ExportData: _export_data,
    ShowDataReport: _show_data_report,
    ListVersions: _list_versions,
    ShowSamples: _show_samples,
}
