"""`tuneloop data`: import → filter → split → export → report."""

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table

from bot.cli.act import act
from bot.cli.common import (
    DatasetOption,
    ProjectOption,
    VersionOption,
    console,
    fail,
    load_yaml,
    open_session,
    validated,
)
from bot.core.actions import ImportData
from engine.artifacts import get_artifact_store
from engine.data.export import EXPORT_FORMATS
from engine.data.filters import FilterConfig
from engine.data.formats import FORMATS
from engine.data.pipeline import (
    export_version,
    filter_version,
    publish_report,
    report_version,
    split_version,
)
from engine.data.report import render_markdown, render_terminal, write_length_histogram
from engine.data.split import SplitConfig
from engine.data.versions import (
    DEFAULT_DATASET,
    get_dataset,
    list_versions,
    load_entries,
    resolve_version,
    version_label,
)
from engine.files import write_atomic_text

app = typer.Typer(help="Datasets: import → filter → split → export → report.", no_args_is_help=True)


@app.command("import")
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
        fail(f"unknown format '{fmt}'; choose one of: auto, {', '.join(FORMATS)}")
    upload = ImportData(
        upload=str(file),
        project=project,
        create=True,
        dataset=dataset,
        format=fmt,
        encoding=encoding,
        entry=entry,
        skip_invalid=skip_invalid,
        rejects=str(rejects) if rejects else None,
        max_bytes=max_bytes,
    )
    act(upload)


@app.command("filter")
def data_filter(
    project: ProjectOption,
    dataset: DatasetOption = DEFAULT_DATASET,
    version: VersionOption = None,
    config: Annotated[Path | None, typer.Option(help="YAML file with filter settings.")] = None,
    near_dup_threshold: Annotated[float | None, typer.Option(help="Jaccard similarity, 0–1.")] = None,
    tokenizer: Annotated[str | None, typer.Option(help="Tokenizer folder or tokenizer.json for token lengths.")] = None,
) -> None:
    """Run the quality filter: length, duplicates, near-duplicates, sensitive content, degenerate answers."""
    settings = load_yaml(config) if config else {}
    if near_dup_threshold is not None:
        settings["near_dup_threshold"] = near_dup_threshold
    if tokenizer is not None and not Path(tokenizer).exists():
        fail(f"tokenizer {tokenizer} does not exist")
    filter_config = validated(FilterConfig, settings, config)
    with open_session() as session:
        change = filter_version(
            session, project, dataset_name=dataset, number=version, config=filter_config, tokenizer_path=tokenizer
        )
        _announce(change.version.number, change.created, change.version.summary, project, dataset)
        render_terminal(report_version(session, project, dataset_name=dataset, number=change.version.number), console)


@app.command("split")
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
    split_config = validated(
        SplitConfig,
        {
            "test_size": _ratio_or_count(test_size),
            "val_size": _ratio_or_count(val_size),
            "seed": seed,
            "stratify_by_tag": stratify,
        },
        None,
    )
    with open_session() as session:
        change = split_version(session, project, dataset_name=dataset, number=version, config=split_config)
        _announce(change.version.number, change.created, change.version.summary, project, dataset)


@app.command("export")
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
        fail(f"unknown export format '{fmt}'; choose one of: {', '.join(EXPORT_FORMATS)}")
    with open_session() as session:
        for path in export_version(session, project, fmt, out, dataset_name=dataset, number=version, split=split):
            console.print(f"wrote {path}")


@app.command("report")
def data_report(
    project: ProjectOption,
    dataset: DatasetOption = DEFAULT_DATASET,
    version: VersionOption = None,
    markdown: Annotated[Path | None, typer.Option(help="Also write the report as Markdown here.")] = None,
    histogram: Annotated[Path | None, typer.Option(help="Also write the length histogram PNG here.")] = None,
) -> None:
    """Show what a dataset version holds and what was removed, by rule, with reasons."""
    store = get_artifact_store()
    with open_session() as session:
        report, stored = publish_report(session, store, project, dataset_name=dataset, number=version)
    render_terminal(report, console)
    console.print("kept in the artifact store: " + ", ".join(str(store.get_path(a.key)) for a in stored))
    if markdown:
        write_atomic_text(markdown, render_markdown(report))
        console.print(f"wrote {markdown}")
    if histogram:
        console.print(f"wrote {write_length_histogram(report, histogram)}")


@app.command("versions")
def data_versions(project: ProjectOption, dataset: DatasetOption = DEFAULT_DATASET) -> None:
    """List a dataset's versions and what changed in each."""
    with open_session() as session:
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


def _announce(number: int, created: bool, summary: str, project: str, dataset: str) -> None:
    if created:
        console.print(f"[green]{escape(project)}/{escape(dataset)} v{number}[/green]: {escape(summary)}")
    else:
        console.print(f"no change: {project}/{dataset} v{number} already is the result ({summary})", markup=False)


def _ratio_or_count(value: float) -> float | int:
    return int(value) if value >= 1 else value


@app.command("show")
def data_show(
    project: ProjectOption,
    dataset: DatasetOption = DEFAULT_DATASET,
    version: VersionOption = None,
    sample: Annotated[list[int] | None, typer.Option("--sample", "-s", help="Sample number(s), from 1.")] = None,
    rule: Annotated[str | None, typer.Option(help="Only samples removed by this rule ('any' for all removed).")] = None,
    split: Annotated[str | None, typer.Option(help="Only samples in this split.")] = None,
    limit: Annotated[int, typer.Option(help="Show at most this many.")] = 10,
) -> None:
    """Show samples of a version with their split, tags, and the rule and reason if removed."""
    with open_session() as session:
        chosen = resolve_version(session, project, dataset, version)
        entries = load_entries(session, chosen)
        label = version_label(session, chosen)
    if sample and (bad := [n for n in sample if not 1 <= n <= len(entries)]):
        fail(f"{label} has samples 1 to {len(entries)}; no sample {', '.join(map(str, bad))}")
    numbers = sample or range(1, len(entries) + 1)
    shown = [
        (n, entries[n - 1])
        for n in numbers
        if (rule is None or entries[n - 1].filter_rule == rule or (rule == "any" and not entries[n - 1].in_use))
        and (split is None or entries[n - 1].split == split)
    ]
    console.print(f"{label}: {len(shown)} sample(s) match" + (f", showing {limit}" if len(shown) > limit else ""))
    for number, entry in shown[:limit]:
        status = f"removed by {entry.filter_rule}: {entry.filter_reason}" if not entry.in_use else entry.split or ""
        turns = [f"[bold]{m.role}[/bold]: {escape(m.content or '')}" for m in entry.sample.messages]
        body = "\n".join([f"[italic]{escape(status)}[/italic]", *turns] if status else turns)
        title = f"#{number}  {' '.join(entry.sample.tags)}  {entry.sample.origin}"
        # Wrapped, not cropped: a reviewer needs the whole conversation.
        console.print(Panel(body, title=title, title_align="left"), soft_wrap=False)
