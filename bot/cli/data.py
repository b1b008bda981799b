"""`tuneloop data`: import → filter → split → export → report."""

import shutil
from pathlib import Path
from typing import Annotated

import typer

from bot.cli.act import act
from bot.cli.common import DatasetOption, ProjectOption, VersionOption, console, fail, load_yaml
from bot.core.actions import (
    ExportData,
    FilterData,
    ImportData,
    ListVersions,
    ShowDataReport,
    ShowSamples,
    SplitData,
)
from bot.core.messages import Message
from engine.data.export import EXPORT_FORMATS
from engine.data.formats import FORMATS
from engine.data.versions import DEFAULT_DATASET

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
    source = str(config) if config else None
    act(
        FilterData(
            project=project, dataset=dataset, version=version, settings=settings, source=source, tokenizer=tokenizer
        )
    )


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
    sizes = {"test_size": test_size, "val_size": val_size}
    act(SplitData(project=project, dataset=dataset, version=version, seed=seed, stratify=stratify, **sizes))


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
    act(ExportData(project=project, format=fmt, out=str(out), dataset=dataset, version=version, split=split))


@app.command("report")
def data_report(
    project: ProjectOption,
    dataset: DatasetOption = DEFAULT_DATASET,
    version: VersionOption = None,
    markdown: Annotated[Path | None, typer.Option(help="Also write the report as Markdown here.")] = None,
    histogram: Annotated[Path | None, typer.Option(help="Also write the length histogram PNG here.")] = None,
) -> None:
    """Show what a dataset version holds and what was removed, by rule, with reasons."""
    messages = act(ShowDataReport(project=project, dataset=dataset, version=version))
    if markdown:
        copy_out(messages, ".md", markdown)
    if histogram:
        copy_out(messages, ".png", histogram)


@app.command("versions")
def data_versions(project: ProjectOption, dataset: DatasetOption = DEFAULT_DATASET) -> None:
    """List a dataset's versions and what changed in each."""
    act(ListVersions(project=project, dataset=dataset))


@app.command("show")
def data_show(
    project: ProjectOption,
    dataset: DatasetOption = DEFAULT_DATASET,
    version: VersionOption = None,
    sample: Annotated[list[int] | None, typer.Option("--sample", "-s", help="Sample number(s), from 1.")] = None,
    rule: Annotated[str | None, typer.Option(help="Only samples removed by this rule ('any' for all removed).")] = None,
    split: Annotated[str | None, typer.Option(help="Only samples in this split.")] = None,
    limit: Annotated[int, typer.Option(min=1, help="Show at most this many.")] = 10,
) -> None:
    """Show samples of a version with their split, tags, and the rule and reason if removed."""
    chosen = {"samples": sample, "rule": rule, "split": split, "limit": limit}
    act(ShowSamples(project=project, dataset=dataset, version=version, **chosen))


def copy_out(messages: list[Message], suffix: str, target: Path) -> None:
    """Copy the file the core kept with `suffix` (a report's Markdown, its histogram) where the person asked."""
    kept = [path for message in messages for path in (*message.files, *message.images) if path.suffix == suffix]
    if not kept:
        fail(f"no {suffix} file came with the answer to write to {target}")
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(kept[0], target)
    console.print(f"wrote {target}", markup=False, highlight=False)
