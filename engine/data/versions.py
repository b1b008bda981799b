"""Dataset versions in storage: each step of the data half of the loop (import, filter, split) turns
one immutable version into the next.

A version is a self-contained snapshot: every sample it holds, with its split and, if it was removed,
the rule and reason. Removed samples stay in later versions so that every report can say what was
removed and why. A version's content hash covers all of that, so repeating a step that changes nothing
(importing the same file twice, filtering twice) yields the version that already exists.
"""

import getpass
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field

from sqlalchemy import insert
from sqlmodel import Session, col, select

from engine.data.sample import Message, Sample, content_hash_of
from engine.loop.projects import NotFoundError, get_project
from storage.models import AuditEvent, Dataset, DatasetVersion, Project
from storage.models import Sample as SampleRow

DEFAULT_DATASET = "main"


@dataclass
class Entry:
    """A sample as it stands in one version."""

    sample: Sample
    split: str | None = None
    filter_rule: str | None = None
    filter_reason: str | None = None

    @property
    def in_use(self) -> bool:
        return self.filter_rule is None

    def hash_key(self, sample_hash: str) -> list:
        """What the version's hash covers of this entry; `sample_hash`: its sample's content hash."""
        return [sample_hash, sorted(self.sample.tags), self.sample.origin, self.split, self.filter_rule]


@dataclass
class VersionChange:
    """The outcome of a step: the resulting version and whether the step created it."""

    version: DatasetVersion
    created: bool
    detail: dict = field(default_factory=dict)


def current_actor() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def get_or_create_dataset(session: Session, project: Project, name: str = DEFAULT_DATASET) -> Dataset:
    dataset = session.exec(select(Dataset).where(Dataset.project_id == project.id, Dataset.name == name)).first()
    if dataset is None:
        dataset = Dataset(project_id=project.id, name=name)
        session.add(dataset)
        session.flush()
    return dataset


def get_dataset(session: Session, project_name: str, dataset_name: str = DEFAULT_DATASET) -> Dataset:
    project = get_project(session, project_name)
    dataset = session.exec(
        select(Dataset).where(Dataset.project_id == project.id, Dataset.name == dataset_name)
    ).first()
    if dataset is None:
        raise NotFoundError(f"project '{project_name}' has no dataset '{dataset_name}'; import data first")
    return dataset


def resolve_version(
    session: Session, project_name: str, dataset_name: str = DEFAULT_DATASET, number: int | None = None
) -> DatasetVersion:
    """The numbered version, or the latest one when `number` is None."""
    dataset = get_dataset(session, project_name, dataset_name)
    query = select(DatasetVersion).where(DatasetVersion.dataset_id == dataset.id)
    if number is None:
        version = session.exec(query.order_by(col(DatasetVersion.number).desc())).first()
    else:
        version = session.exec(query.where(DatasetVersion.number == number)).first()
    if version is None:
        which = "versions" if number is None else f"version {number}"
        raise NotFoundError(f"dataset '{project_name}/{dataset_name}' has no {which}")
    return version


def latest_version(session: Session, project_name: str, dataset_name: str = DEFAULT_DATASET) -> DatasetVersion | None:
    """The dataset's latest version, or None when the project or dataset has none yet."""
    try:
        return resolve_version(session, project_name, dataset_name)
    except NotFoundError:
        return None


def list_versions(session: Session, dataset: Dataset) -> list[DatasetVersion]:
    query = select(DatasetVersion).where(DatasetVersion.dataset_id == dataset.id)
    return list(session.exec(query.order_by(col(DatasetVersion.number))).all())


def load_entries(session: Session, version: DatasetVersion) -> list[Entry]:
    rows = session.exec(
        select(SampleRow).where(SampleRow.version_id == version.id).order_by(col(SampleRow.position))
    ).all()
    return [
        Entry(
            sample=Sample(
                messages=[Message.model_validate(m) for m in row.messages],
                rejected=Message.model_validate(row.rejected) if row.rejected else None,
                tools=row.tools,
                label=row.label,
                tags=row.tags or [],
                origin=row.origin,  # type: ignore[arg-type]
                original=row.original,
                original_format=row.original_format,
            ),
            split=row.split,
            filter_rule=row.filter_rule,
            filter_reason=row.filter_reason,
        )
        for row in rows
    ]


def known_hashes(session: Session, dataset: Dataset) -> set[str]:
    """Content hashes of every sample any version of the dataset has held, as imported or as changed
    (masked, corrected), so that importing a file again never brings back what a step replaced."""
    query = (
        select(SampleRow.content_hash)
        .join(DatasetVersion, col(SampleRow.version_id) == col(DatasetVersion.id))
        .where(DatasetVersion.dataset_id == dataset.id)
        .distinct()
    )
    return set(session.exec(query).all())


def version_hash(entries: Sequence[Entry], sample_hashes: Sequence[str]) -> str:
    digest = hashlib.sha256()
    for entry, sample_hash in zip(entries, sample_hashes, strict=True):
        digest.update(json.dumps(entry.hash_key(sample_hash), ensure_ascii=False).encode("utf-8"))
        digest.update(b"\n")
    return digest.hexdigest()


def save_version(
    session: Session,
    dataset: Dataset,
    entries: Sequence[Entry],
    *,
    kind: str,
    summary: str,
    parent: DatasetVersion | None,
    detail: dict | None = None,
    source_path: str | None = None,
    source_format: str | None = None,
    actor: str | None = None,
    platform: str = "cli",
    reviewed: bool = True,
) -> VersionChange:
    """Store `entries` as the dataset's next version, unless a version with the same content exists."""
    # Each sample's content key once: its hash and its stored messages come from it.
    keys = [entry.sample.content_key() for entry in entries]
    hashes = [content_hash_of(key) for key in keys]
    content_hash = version_hash(entries, hashes)
    existing = session.exec(
        select(DatasetVersion).where(
            DatasetVersion.dataset_id == dataset.id, DatasetVersion.content_hash == content_hash
        )
    ).first()
    if existing is not None:
        return VersionChange(existing, created=False, detail=detail or {})

    latest = session.exec(
        select(DatasetVersion.number)
        .where(DatasetVersion.dataset_id == dataset.id)
        .order_by(col(DatasetVersion.number).desc())
    ).first()
    version = DatasetVersion(
        dataset_id=dataset.id,  # type: ignore[arg-type]
        number=(latest or 0) + 1,
        content_hash=content_hash,
        parent_id=parent.id if parent else None,
        kind=kind,
        summary=summary,
        detail=detail,
        source_path=source_path,
        source_format=source_format,
        sample_count=sum(1 for e in entries if e.in_use),
        total_count=len(entries),
        reviewed=reviewed,
        created_by=actor or current_actor(),
    )
    session.add(version)
    session.flush()
    # One multi-row INSERT rather than an ORM object per sample: a version is often thousands of rows.
    rows = [
        {
            "version_id": version.id,
            "position": position,
            "content_hash": sample_hash,
            "messages": key["messages"],
            "rejected": key.get("rejected"),
            "tools": entry.sample.tools,
            "label": entry.sample.label,
            "tags": entry.sample.tags,
            "origin": entry.sample.origin,
            "split": entry.split,
            "filter_rule": entry.filter_rule,
            "filter_reason": entry.filter_reason,
            "original": entry.sample.original,
            "original_format": entry.sample.original_format,
        }
        for position, (entry, key, sample_hash) in enumerate(zip(entries, keys, hashes, strict=True))
    ]
    if rows:
        session.execute(insert(SampleRow), rows)
    session.add(
        AuditEvent(
            actor=version.created_by or "unknown",
            platform=platform,
            action=f"dataset.{kind}",
            project_id=dataset.project_id,
            subject_type="dataset_version",
            subject_id=version.id,
            detail={"dataset": dataset.name, "version": version.number, "summary": summary},
        )
    )
    session.flush()
    return VersionChange(version, created=True, detail=detail or {})


def version_label(session: Session, version: DatasetVersion) -> str:
    dataset = session.get(Dataset, version.dataset_id)
    project = session.get(Project, dataset.project_id) if dataset else None
    return f"{project.name if project else '?'}/{dataset.name if dataset else '?'} v{version.number}"
