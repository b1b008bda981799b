"""The terminal face of tuneloop: the same command grammar the chat front ends speak."""

import difflib
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, TypeVar

import typer
import yaml
from pydantic import BaseModel, ValidationError
from rich.console import Console
from rich.table import Table
from sqlalchemy.engine import make_url
from sqlmodel import Session

from engine.data.errors import DataError
from engine.data.export import EXPORT_FORMATS
from engine.data.filters import FilterConfig
from engine.data.formats import FORMATS
from engine.data.pipeline import export_version, filter_version, import_file, report_version, split_version
from engine.data.readers import ReadLimits
from engine.data.report import render_markdown, render_terminal, write_length_histogram
from engine.data.split import SplitConfig, SplitError
from engine.data.versions import DEFAULT_DATASET, get_dataset, list_versions, write_atomic_text
from engine.database import DatabaseNotReadyError, get_engine
from engine.projects import NotFoundError, configure_project, list_projects
from engine.settings import get_settings
from storage.db import session_scope
from storage.migrate import upgrade

app = typer.Typer(help="tuneloop: the fine-tuning loop as one conversation.", no_args_is_help=True)
db_app = typer.Typer(help="The database.", no_args_is_help=True)
data_app = typer.Typer(help="Datasets: import → filter → split → export → report.", no_args_is_help=True)
project_app = typer.Typer(help="Projects: a named assistant, its base model and tokenizer.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(project_app, name="project")
app.add_typer(data_app, name="data")

console = Console(soft_wrap=True)  # messages stay whole lines; tables still fit the width
errors = Console(stderr=True, soft_wrap=True)

ProjectOption = Annotated[str, typer.Option("--project", "-p", help="Project name, e.g. customer_service.")]
DatasetOption = Annotated[str, typer.Option("--dataset", help="Dataset within the project.")]
VersionOption = Annotated[int | None, typer.Option("--version", "-v", help="Dataset version; latest if unset.")]

EXIT_INVALID_DATA = 2
SettingsModel = TypeVar("SettingsModel", bound=BaseModel)


@contextmanager
def _session() -> Iterator[Session]:
    """A unit of work with the user's mistakes turned into plain messages, never tracebacks."""
    try:
        with session_scope(get_engine()) as session:
            yield session
    except DataError as error:
        _print_data_error(error)
        raise typer.Exit(EXIT_INVALID_DATA) from None
    except SplitError as error:
        errors.print(f"[red]error:[/red] cannot split: {error}")
        raise typer.Exit(EXIT_INVALID_DATA) from None
    except (NotFoundError, DatabaseNotReadyError) as error:
        errors.print(f"[red]error:[/red] {error}")
        raise typer.Exit(1) from None


def _print_data_error(error: DataError, shown: int = 20) -> None:
    errors.print(f"[red]error:[/red] {error.headline}")
    if [str(p) for p in error.problems] == [error.headline]:
        return
    for problem in error.problems[:shown]:
        errors.print(f"  {problem}", markup=False, highlight=False)
    if len(error.problems) > shown:
        errors.print(f"  … and {len(error.problems) - shown} more")
    summary = error.summary()
    if len(error.problems) > 1 and summary:
        errors.print("problems by kind: " + ", ".join(f"{kind} {n}" for kind, n in summary.most_common()))


@db_app.command("upgrade")
def db_upgrade(revision: str = "head") -> None:
    """Migrate the database to the latest schema (or to REVISION)."""
    url = get_settings().resolved_database_url
    upgrade(url, revision)
    console.print(f"database at {_redact(url)} is at {revision}")


@project_app.command("set")
def project_set(
    name: Annotated[str, typer.Argument(help="Project name, e.g. customer_service.")],
    base_model: Annotated[str | None, typer.Option(help="Base model path or name.")] = None,
    tokenizer: Annotated[str | None, typer.Option(help="Tokenizer folder or tokenizer.json for token lengths.")] = None,
) -> None:
    """Create a project, or change its settings."""
    if tokenizer is not None and not Path(tokenizer).exists():
        _fail(f"tokenizer {tokenizer} does not exist")
    with _session() as session:
        project = configure_project(session, name, base_model=base_model, tokenizer_path=tokenizer)
        console.print(
            f"project {project.name}: base model {project.base_model or '-'}, tokenizer {project.tokenizer_path or '-'}"
        )


@project_app.command("list")
def project_list() -> None:
    """List the projects."""
    with _session() as session:
        table = Table("project", "base model", "tokenizer", "created")
        for project in list_projects(session):
            table.add_row(
                project.name, project.base_model or "", project.tokenizer_path or "", f"{project.created_at:%Y-%m-%d}"
            )
    console.print(table)


@data_app.command("import")
def data_import(
    file: Annotated[Path, typer.Argument(help="JSON, JSONL, CSV or TSV file, or a dataset_info.json.")],
    project: ProjectOption,
    dataset: DatasetOption = DEFAULT_DATASET,
    fmt: Annotated[str, typer.Option("--format", help=f"One of: auto, {', '.join(FORMATS)}.")] = "auto",
    encoding: Annotated[str | None, typer.Option(help="Force an encoding (utf-8, utf-16, gb18030…).")] = None,
    entry: Annotated[str | None, typer.Option(help="The entry to import from a dataset_info.json.")] = None,
    skip_invalid: Annotated[bool, typer.Option(help="Store the valid records and write the rejects.")] = False,
    rejects: Annotated[Path | None, typer.Option(help="Where --skip-invalid writes the rejects.")] = None,
    max_bytes: Annotated[int | None, typer.Option(help="Refuse files larger than this.")] = None,
) -> None:
    """Import a dataset file into a project as a new dataset version."""
    if fmt != "auto" and fmt not in FORMATS:
        _fail(f"unknown format '{fmt}'; choose one of: auto, {', '.join(FORMATS)}")
    settings = get_settings()
    limits = ReadLimits(
        max_bytes=max_bytes or settings.max_upload_bytes,
        max_records=settings.max_records,
        max_record_bytes=settings.max_record_bytes,
    )
    with _session() as session:
        outcome = import_file(
            session,
            project,
            file,
            dataset_name=dataset,
            fmt=fmt,
            encoding=encoding,
            entry=entry,
            limits=limits,
            skip_invalid=skip_invalid,
            rejects_path=rejects,
        )
        version = outcome.change.version
        loaded = outcome.loaded
        console.print(
            f"read {loaded.records} record(s) from {file.name} ({loaded.format}, {loaded.encoding}): "
            f"{len(loaded.samples)} valid, {len(loaded.problems)} problem(s)"
        )
        if outcome.rejects_path:
            console.print(f"[yellow]rejects written to {outcome.rejects_path}[/yellow]")
        if outcome.change.created:
            console.print(
                f"[green]{project}/{dataset} v{version.number}[/green]: {outcome.added} new sample(s), "
                f"{outcome.already_present} already present, {version.sample_count} in use"
            )
        else:
            console.print(f"nothing new: {project}/{dataset} v{version.number} already holds every sample")


@data_app.command("filter")
def data_filter(
    project: ProjectOption,
    dataset: DatasetOption = DEFAULT_DATASET,
    version: VersionOption = None,
    config: Annotated[Path | None, typer.Option(help="YAML file with filter settings.")] = None,
    near_dup_threshold: Annotated[float | None, typer.Option(help="Jaccard similarity, 0–1.")] = None,
    tokenizer: Annotated[str | None, typer.Option(help="Tokenizer folder or tokenizer.json for token lengths.")] = None,
) -> None:
    """Run the quality filter: length, duplicates, near-duplicates, sensitive content, degenerate answers."""
    settings = _load_yaml(config) if config else {}
    if near_dup_threshold is not None:
        settings["near_dup_threshold"] = near_dup_threshold
    if tokenizer is not None and not Path(tokenizer).exists():
        _fail(f"tokenizer {tokenizer} does not exist")
    filter_config = _validated(FilterConfig, settings, config)
    with _session() as session:
        change = filter_version(
            session, project, dataset_name=dataset, number=version, config=filter_config, tokenizer_path=tokenizer
        )
        _announce(change.version.number, change.created, change.version.summary, project, dataset)
        render_terminal(report_version(session, project, dataset_name=dataset, number=change.version.number), console)


@data_app.command("split")
def data_split(
    project: ProjectOption,
    dataset: DatasetOption = DEFAULT_DATASET,
    version: VersionOption = None,
    test_size: Annotated[float, typer.Option(help="A ratio (< 1) or a count of test samples.")] = 0.1,
    val_size: Annotated[float, typer.Option(help="A ratio (< 1) or a count of validation samples.")] = 0,
    seed: int = 42,
    stratify: Annotated[bool, typer.Option(help="Keep each tag's share in every split.")] = True,
) -> None:
    """Split into train/test (and validation), seeded; test near-duplicates of training samples are removed."""
    split_config = _validated(
        SplitConfig,
        {
            "test_size": _ratio_or_count(test_size),
            "val_size": _ratio_or_count(val_size),
            "seed": seed,
            "stratify_by_tag": stratify,
        },
        None,
    )
    with _session() as session:
        change = split_version(session, project, dataset_name=dataset, number=version, config=split_config)
        _announce(change.version.number, change.created, change.version.summary, project, dataset)


@data_app.command("export")
def data_export(
    project: ProjectOption,
    fmt: Annotated[str, typer.Option("--format", help=f"One of: {', '.join(EXPORT_FORMATS)}.")],
    out: Annotated[Path, typer.Option(help="Output folder.")],
    dataset: DatasetOption = DEFAULT_DATASET,
    version: VersionOption = None,
    split: Annotated[str | None, typer.Option(help="train, test or validation; all samples in use if unset.")] = None,
) -> None:
    """Export the samples in use to sharegpt, alpaca, OpenAI messages or a LLaMA-Factory dataset."""
    if fmt not in EXPORT_FORMATS:
        _fail(f"unknown export format '{fmt}'; choose one of: {', '.join(EXPORT_FORMATS)}")
    with _session() as session:
        for path in export_version(session, project, fmt, out, dataset_name=dataset, number=version, split=split):
            console.print(f"wrote {path}")


@data_app.command("report")
def data_report(
    project: ProjectOption,
    dataset: DatasetOption = DEFAULT_DATASET,
    version: VersionOption = None,
    markdown: Annotated[Path | None, typer.Option(help="Also write the report as Markdown here.")] = None,
    histogram: Annotated[Path | None, typer.Option(help="Also write the length histogram PNG here.")] = None,
) -> None:
    """Show what a dataset version holds and what was removed, by rule, with reasons."""
    with _session() as session:
        report = report_version(session, project, dataset_name=dataset, number=version)
    render_terminal(report, console)
    if markdown:
        write_atomic_text(markdown, render_markdown(report))
        console.print(f"wrote {markdown}")
    if histogram:
        console.print(f"wrote {write_length_histogram(report, histogram)}")


@data_app.command("versions")
def data_versions(project: ProjectOption, dataset: DatasetOption = DEFAULT_DATASET) -> None:
    """List a dataset's versions and what changed in each."""
    with _session() as session:
        versions = list_versions(session, get_dataset(session, project, dataset))
        numbers = {v.id: f"v{v.number}" for v in versions}
        table = Table("version", "kind", "in use", "total", "parent", "by", "when", "what changed")
        for v in versions:
            table.add_row(
                f"v{v.number}",
                v.kind,
                str(v.sample_count),
                str(v.total_count),
                numbers.get(v.parent_id, ""),
                v.created_by or "",
                f"{v.created_at:%Y-%m-%d %H:%M}",
                v.summary,
            )
    console.print(table)


@app.command()
def demo(
    data: Annotated[Path, typer.Option(help="The example dataset.")] = Path("examples/customer_service.jsonl"),
    out: Annotated[Path, typer.Option(help="Where exports and reports go.")] = Path("demo-out"),
    project: str = "customer_service",
) -> None:
    """Run the loop as far as it goes today on the bundled example: import, filter, split, export, report."""
    if not data.exists():
        _fail(f"{data} does not exist; build it with `python examples/build_customer_service.py`")
    console.rule(f"tuneloop demo: {project}")
    data_import(data, project)
    data_filter(project)
    data_split(project)
    for fmt in EXPORT_FORMATS:
        for split in ("train", "test"):
            data_export(project, fmt, out / fmt / split, split=split)
    data_report(project, markdown=out / "report.md", histogram=out / "lengths.png")


def _announce(number: int, created: bool, summary: str, project: str, dataset: str) -> None:
    if created:
        console.print(f"[green]{project}/{dataset} v{number}[/green]: {summary}")
    else:
        console.print(f"no change: {project}/{dataset} v{number} already is the result ({summary})")


def _ratio_or_count(value: float) -> float | int:
    return int(value) if value >= 1 else value


def _load_yaml(path: Path) -> dict:
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as error:
        _fail(f"{path}: cannot read the settings: {error}")
    if not isinstance(loaded, dict):
        _fail(f"{path}: expected a mapping of settings, got {type(loaded).__name__}")
    return loaded


def _validated(model: type[SettingsModel], values: dict, source: Path | None) -> SettingsModel:
    """The settings as `model`, or a plain error naming the file and setting, with a suggestion."""
    try:
        return model(**values)
    except ValidationError as error:
        where = f"{source}: " if source else ""
        for problem in error.errors():
            field = ".".join(str(part) for part in problem["loc"])
            hint = ""
            if problem["type"] == "extra_forbidden":
                close = difflib.get_close_matches(field, model.model_fields, n=1)
                hint = f" (did you mean '{close[0]}'?)" if close else ""
            errors.print(f"[red]error:[/red] {where}setting '{field}': {problem['msg']}{hint}")
        raise typer.Exit(EXIT_INVALID_DATA) from None


def _fail(message: str) -> None:
    errors.print(f"[red]error:[/red] {message}")
    raise typer.Exit(EXIT_INVALID_DATA)


def _redact(url: str) -> str:
    """Hide a password in a database URL before printing it."""
    return make_url(url).render_as_string(hide_password=True)


if __name__ == "__main__":
    sys.exit(app())
