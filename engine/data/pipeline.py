"""The data half of the loop as engine functions: import → filter → split → export → report.

The CLI and the chat front ends call these; each takes an open session and returns what changed.
"""

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlmodel import Session

from engine.data.errors import DataError, RecordProblem
from engine.data.export import export_samples
from engine.data.filters import FilterConfig, apply_filters, load_tokenizer
from engine.data.formats import LoadResult, load_file
from engine.data.readers import ReadLimits
from engine.data.report import DataReport, build_report, render_markdown, write_length_histogram
from engine.data.split import SplitConfig, split_samples
from engine.data.versions import (
    DEFAULT_DATASET,
    Entry,
    VersionChange,
    get_or_create_dataset,
    known_hashes,
    latest_version,
    load_entries,
    resolve_version,
    save_version,
    version_label,
)
from engine.files import write_atomic_text
from engine.loop.projects import get_or_create_project
from engine.settings import get_settings
from storage.artifacts import ArtifactStore, StoredArtifact, project_key, record_artifact
from storage.db import commit_retrying
from storage.models import Dataset, DatasetVersion, Project


@dataclass
class ImportOutcome:
    change: VersionChange
    loaded: LoadResult
    added: int
    already_present: int
    rejects_path: Path | None


def import_file(
    session: Session,
    project_name: str,
    path: Path,
    *,
    dataset_name: str = DEFAULT_DATASET,
    fmt: str = "auto",
    encoding: str | None = None,
    entry: str | None = None,
    limits: ReadLimits | None = None,
    skip_invalid: bool = False,
    rejects_path: Path | None = None,
    actor: str | None = None,
    platform: str = "cli",
) -> ImportOutcome:
    """Check the whole file, then add its new samples to the dataset as a new version.

    Any invalid record stops the import before anything is stored, unless `skip_invalid`, in which
    case the valid records are stored and the rejects are written, with reasons, to `rejects_path`.
    Commits the session (storage.db.commit_retrying).
    """
    loaded = load_file(path, fmt=fmt, encoding=encoding, entry=entry, limits=limits or get_settings().read_limits())
    if loaded.records == 0:
        raise DataError(loaded.problems, f"{path.name}: the file is empty (no records); nothing was imported")
    if loaded.problems and not skip_invalid:
        raise DataError(loaded.problems, f"{path.name}: {_problem_headline(loaded)}; nothing was imported")
    written_rejects = None
    if loaded.problems:
        written_rejects = rejects_path or path.with_name(f"{path.name}.rejects.jsonl")
        write_rejects(written_rejects, loaded.problems)
    if not loaded.samples:
        raise DataError(
            loaded.problems or [RecordProblem(str(path), "the file holds no records", kind="empty")],
            f"{path.name}: no valid records; nothing was imported",
        )

    def add_version() -> ImportOutcome:
        project = get_or_create_project(session, project_name)
        dataset = get_or_create_dataset(session, project, dataset_name)
        parent = latest_version(session, project.name, dataset.name)
        entries = load_entries(session, parent) if parent else []
        # Only samples the dataset has held are skipped, so importing a file again changes nothing;
        # duplicates inside the file are kept for the filter to remove and report.
        present = known_hashes(session, dataset)
        new = [Entry(sample) for _, sample in loaded.samples if sample.content_hash not in present]
        entries.extend(new)
        added = len(new)
        detail = {
            "file": str(path),
            "format": loaded.format,
            "encoding": loaded.encoding,
            "records": loaded.records,
            "valid": len(loaded.samples),
            "invalid": len(loaded.problems),
            "added": added,
            "already_present": len(loaded.samples) - added,
        }
        change = save_version(
            session,
            dataset,
            entries,
            kind="upload",
            summary=f"imported {added} new sample(s) from {path.name}",
            parent=parent,
            detail=detail,
            source_path=str(path),
            source_format=loaded.format,
            actor=actor,
            platform=platform,
        )
        return ImportOutcome(change, loaded, added, len(loaded.samples) - added, written_rejects)

    # Committed here, so that an import racing another into the same dataset is redone on top of the other's version.
    return commit_retrying(session, add_version, f"importing {path.name} into {project_name}/{dataset_name}")


def filter_version(
    session: Session,
    project_name: str,
    *,
    dataset_name: str = DEFAULT_DATASET,
    number: int | None = None,
    config: FilterConfig | None = None,
    tokenizer_path: str | None = None,
    actor: str | None = None,
    platform: str = "cli",
) -> VersionChange:
    """Run the quality filter over the samples in use; the removed ones keep their rule and reason.

    Token lengths use `tokenizer_path`, else the project's tokenizer, else an estimate."""
    parent = resolve_version(session, project_name, dataset_name, number)
    config = config or FilterConfig()
    tokenizer_path = tokenizer_path or _project_of(session, parent).tokenizer_path
    tokenizer = load_tokenizer(tokenizer_path) if tokenizer_path else None
    entries = load_entries(session, parent)
    active = [i for i, e in enumerate(entries) if e.in_use]
    outcome = apply_filters(
        [entries[i].sample for i in active], config, tokenizer=tokenizer, numbers=[i + 1 for i in active]
    )
    for position, index in enumerate(active):
        entries[index].sample = outcome.samples[position]
        removal = outcome.removed.get(position)
        if removal is not None:
            entries[index].filter_rule = removal.rule
            entries[index].filter_reason = removal.reason
    counts = dict(outcome.counts_by_rule())
    kept = len(active) - len(outcome.removed)
    detail = {
        "in": len(active),
        "out": kept,
        "removed_by_rule": counts,
        "masked_by_rule": dict(outcome.masked_counts),
        "config": config.model_dump(mode="json"),
        "tokenizer": tokenizer_path,
    }
    return save_version(
        session,
        _dataset_of(session, parent),
        entries,
        kind="filter",
        summary=f"quality filter: {len(active)} → {kept}",
        parent=parent,
        detail=detail,
        actor=actor,
        platform=platform,
    )


def split_version(
    session: Session,
    project_name: str,
    *,
    dataset_name: str = DEFAULT_DATASET,
    number: int | None = None,
    config: SplitConfig | None = None,
    actor: str | None = None,
    platform: str = "cli",
) -> VersionChange:
    """Assign train/test(/validation) to the samples in use; test samples that near-duplicate a
    training sample are removed as leaks so the evaluation never measures memorisation."""
    parent = resolve_version(session, project_name, dataset_name, number)
    config = config or SplitConfig()
    entries = load_entries(session, parent)
    active = [i for i, e in enumerate(entries) if e.in_use]
    outcome = split_samples([entries[i].sample for i in active], config)
    for position, index in enumerate(active):
        assignment = outcome.assignments[position]
        entry = entries[index]
        if assignment == "leak":
            train_position, similarity = outcome.leaks[position]
            entry.split = None
            entry.filter_rule = "test_leak"
            entry.filter_reason = (
                f"test sample near-duplicates training sample #{active[train_position] + 1} "
                f"(similarity {similarity:.2f})"
            )
        else:
            entry.split = assignment
    counts = {name: outcome.assignments.count(name) for name in ("train", "test", "validation", "leak")}
    return save_version(
        session,
        _dataset_of(session, parent),
        entries,
        kind="split",
        summary="split: " + ", ".join(f"{k} {v}" for k, v in counts.items() if v),
        parent=parent,
        detail={"counts": counts, "config": config.model_dump(mode="json")},
        actor=actor,
        platform=platform,
    )


def export_version(
    session: Session,
    project_name: str,
    fmt: str,
    out: Path,
    *,
    dataset_name: str = DEFAULT_DATASET,
    number: int | None = None,
    split: str | None = None,
) -> list[Path]:
    """Write the samples in use (optionally one split) in `fmt`; removed samples are never exported."""
    version = resolve_version(session, project_name, dataset_name, number)
    entries = [e for e in load_entries(session, version) if e.in_use and (split is None or e.split == split)]
    if not entries:
        which = f" in split '{split}'" if split else ""
        raise DataError([], f"{version_label(session, version)} has no samples{which} to export")
    name = f"{project_name}_{dataset_name}_v{version.number}" + (f"_{split}" if split else "")
    if all(e.sample.rejected is not None for e in entries):
        name += "_preference"  # chosen and rejected answers: for preference training, not SFT
    return export_samples([e.sample for e in entries], fmt, out, name=name)


def report_version(
    session: Session,
    project_name: str,
    *,
    dataset_name: str = DEFAULT_DATASET,
    number: int | None = None,
) -> DataReport:
    return _report_of(session, resolve_version(session, project_name, dataset_name, number))


def _report_of(session: Session, version: DatasetVersion) -> DataReport:
    entries = load_entries(session, version)
    source = _ancestor_detail(session, version, "upload")
    return build_report(
        [e.sample for e in entries],
        filter_rules=[e.filter_rule for e in entries],
        filter_reasons=[e.filter_reason for e in entries],
        splits=[e.split for e in entries],
        title=version_label(session, version),
        source_format=source.get("format"),
        source_encoding=source.get("encoding"),
        masked=_ancestor_detail(session, version, "filter").get("masked_by_rule", {}),
    )


def publish_report(
    session: Session,
    store: ArtifactStore,
    project_name: str,
    *,
    dataset_name: str = DEFAULT_DATASET,
    number: int | None = None,
) -> tuple[DataReport, list[StoredArtifact]]:
    """Build the version's report and keep its Markdown and length histogram in the artifact store
    (`projects/<project>/datasets/<dataset>/v<n>/`), with their hashes recorded, for the chat threads."""
    version = resolve_version(session, project_name, dataset_name, number)
    report = _report_of(session, version)
    prefix = ("datasets", dataset_name, f"v{version.number}")
    project_id = _dataset_of(session, version).project_id
    stored = [store.put_bytes(project_key(project_name, *prefix, "report.md"), render_markdown(report).encode())]
    with tempfile.TemporaryDirectory() as tmp:
        png = write_length_histogram(report, Path(tmp) / "lengths.png")
        stored.append(store.put_file(project_key(project_name, *prefix, "lengths.png"), png))
    for artifact in stored:
        record_artifact(session, artifact, project_id=project_id, kind="report")
    return report, stored


def write_rejects(path: Path, problems: list[RecordProblem]) -> None:
    lines = [
        json.dumps(
            {
                "file": p.file,
                "record": p.record,
                "line": p.line,
                "field": p.field,
                "kind": p.kind,
                "problem": p.problem,
            },
            ensure_ascii=False,
        )
        for p in problems
    ]
    write_atomic_text(path, "\n".join(lines) + "\n")


def _problem_headline(loaded: LoadResult) -> str:
    bad = len({p.record for p in loaded.problems})
    hint = f" as {loaded.format}; they look like {loaded.detected}: try --format {loaded.detected}"
    return f"{bad} of {loaded.records} record(s) are invalid" + (hint if loaded.detected else "")


def _dataset_of(session: Session, version: DatasetVersion) -> Dataset:
    dataset = session.get(Dataset, version.dataset_id)
    assert dataset is not None
    return dataset


def _project_of(session: Session, version: DatasetVersion) -> Project:
    project = session.get(Project, _dataset_of(session, version).project_id)
    assert project is not None
    return project


def _ancestor_detail(session: Session, version: DatasetVersion, kind: str) -> dict[str, Any]:
    """The detail of the nearest step of `kind` that `version` descends from (itself included):
    the import's format and encoding, the filter's masked counts."""
    current: DatasetVersion | None = version
    while current is not None:
        if current.kind == kind and current.detail:
            return current.detail
        current = session.get(DatasetVersion, current.parent_id) if current.parent_id else None
    return {}
