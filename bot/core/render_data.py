"""A project's data as neutral messages: a new version (or none), a version's report with its tables, the versions
of a dataset, samples, a synthesis job's report, the projects."""

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bot.core.catalogue import say
from bot.core.messages import Message, Table
from engine.data.report import SPLIT_NAMES, DataReport, LengthStats
from engine.data.versions import Entry, VersionChange
from storage.models import DatasetVersion, Project

TIME = "%Y-%m-%d %H:%M"


def change_message(label: str, change: VersionChange, language: str) -> Message:
    """What a filter or split made: the new version, or that the version asked about already is the result."""
    entry = "data.changed" if change.created else "data.no_change"
    return Message(say(language, entry, label=label, summary=change.version.summary))


def data_report_message(
    report: DataReport, language: str, *, files: Sequence[Path] = (), images: Sequence[Path] = ()
) -> Message:
    """A version's report: what the filter removed by rule (with example reasons), the split, the tags and the
    lengths as tables; its Markdown as a file and its length histogram as an image when they were kept."""
    share = f"{report.kept_ratio:.1%}"
    lines = [
        say(language, "data.report_filtered", count_in=report.count_in, count_out=report.count_filtered, share=share)
    ]
    if report.masked:
        lines.append(say(language, "data.report_masked", counts=_counts(report.masked)))
    if report.splits:
        splits = {say(language, f"data.split.{name}"): n for name, n in report.splits.items()}
        lines.append(say(language, "data.report_splits", counts=_counts(splits)))
        lines += [f"{r.rule}: {r.examples[0]}" for r in report.removals if r.stage == "split" and r.examples]
    lines.append(say(language, "data.report_in_use", n=report.count_out))
    if report.turns:
        turns = " · ".join(say(language, "data.report_turn", turns=t, n=n) for t, n in report.turns.items())
        lines.append(say(language, "data.report_turns", counts=turns))
    source = " · ".join(part for part in (report.source_format, report.source_encoding) if part)
    if source:
        lines.append(say(language, "data.report_source", source=source))
    tables = []
    if report.filter_removals:
        columns = [say(language, f"data.column.{name}") for name in ("rule", "removed", "examples")]
        rows = [[r.rule, str(r.count), "; ".join(r.examples) or "-"] for r in report.filter_removals]
        tables.append(Table(columns, rows))
    if report.tags:
        columns = [say(language, f"data.column.{name}") for name in ("tag", "in", "kept")]
        columns += [say(language, f"data.split.{name}") for name in SPLIT_NAMES]
        rows = [
            [t.tag, str(t.count_in), str(t.count_out), *(str(t.splits.get(s, 0)) for s in SPLIT_NAMES)]
            for t in report.tags
        ]
        tables.append(Table(columns, rows))
    tables.append(
        Table(
            [say(language, "data.column.lengths"), "min", "median", "p95", "max"],
            [
                _length_row(say(language, "data.column.prompt"), report.prompt_chars),
                _length_row(say(language, "data.column.answer"), report.answer_chars),
            ],
        )
    )
    return Message(
        say(language, "data.report_title", label=report.title),
        lines=lines,
        tables=tables,
        files=list(files),
        images=list(images),
    )


def versions_message(label: str, versions: Sequence[DatasetVersion], language: str) -> Message:
    """A dataset's versions and what changed in each, oldest first."""
    numbers = {v.id: f"v{v.number}" for v in versions}
    names = ("version", "kind", "in_use", "total", "parent", "by", "when", "summary")
    rows = [
        [
            f"v{v.number}",
            v.kind,
            str(v.sample_count),
            str(v.total_count),
            numbers.get(v.parent_id, ""),
            v.created_by or "",
            f"{v.created_at:{TIME}}",
            v.summary,
        ]
        for v in versions
    ]
    columns = [say(language, f"data.column.{name}") for name in names]
    return Message(say(language, "data.versions_title", dataset=label, n=len(versions)), tables=[Table(columns, rows)])


def samples_messages(label: str, shown: Sequence[tuple[int, Entry]], limit: int, language: str) -> list[Message]:
    """The samples that matched (at most `limit` of them), one card each: its number, tags and origin; why it was
    removed, or its split; then every turn, whole (a reviewer needs the whole conversation)."""
    if len(shown) > limit:
        header = say(language, "data.samples_shown", label=label, n=len(shown), limit=limit)
    else:
        header = say(language, "data.samples_title", label=label, n=len(shown))
    cards = [Message(header)]
    for number, entry in shown[:limit]:
        sample = entry.sample
        removed = say(language, "data.removed_by", rule=entry.filter_rule, reason=entry.filter_reason)
        status = removed if not entry.in_use else entry.split or ""
        turns = [f"{message.role}: {message.content or ''}" for message in sample.messages]
        title = "  ".join(part for part in (f"#{number}", " ".join(sample.tags), sample.origin) if part)
        cards.append(Message(title, lines=[status, *turns] if status else turns, kind="card"))
    return cards


def synth_message(report: dict[str, Any], label: str | None, created: bool, summary: str, language: str) -> Message:
    """A synthesis job's report: what was asked, received, valid and kept, per sub-scenario as a table, what it
    cost, what is left to do, and the version it made (`label`: None when nothing valid came back)."""
    job = report["job"]
    lines = [
        say(
            language,
            "synth.counts",
            requested=report["requested"],
            received=report["received"],
            valid=report["valid"],
            kept=report["kept"],
        )
    ]
    if report["invalid"]:
        lines.append(say(language, "synth.invalid", counts=_counts(report["invalid"], ", ")))
    if report["filtered"]:
        lines.append(say(language, "synth.filtered", counts=_counts(report["filtered"], ", ")))
    batches = report["batches"]
    cost = f"${report['cost_usd']:.4f}" if report["cost_usd"] is not None else say(language, "synth.no_price")
    usage = {"requests": report["requests"], "retries": report["retries"], "ok": batches["ok"]}
    usage |= {"total": batches["total"], "tokens": report["tokens"]["total"], "seconds": report["seconds"]}
    lines.append(say(language, "synth.usage", cost=cost, **usage))
    if report.get("stopped"):
        lines.append(say(language, "synth.budget", stopped=report["stopped"], not_sent=batches["not_sent"], job=job))
    elif batches["failed"]:
        lines.append(say(language, "synth.failed", failed=batches["failed"], job=job))
    if label is None:
        lines.append(say(language, "synth.nothing"))
    elif created:
        lines.append(say(language, "synth.version", label=label, summary=summary))
    else:
        lines.append(say(language, "synth.no_change", label=label))
    columns = [say(language, f"synth.column.{name}") for name in ("scenario", "requested", "received", "kept")]
    rows = [
        [name, str(row["requested"]), str(row["received"]), str(row["kept"])]
        for name, row in report["per_scenario"].items()
    ]
    title = say(language, "synth.title", job=job, model=report["model"], format=report["response_format"])
    return Message(title, lines=lines, tables=[Table(columns, rows)], kind="report")


def projects_message(projects: Sequence[Project], language: str) -> Message:
    if not projects:
        return Message(say(language, "projects.none"))
    columns = [
        say(language, "projects.column.project"),
        say(language, "project.base_model"),
        say(language, "projects.column.tokenizer"),
        say(language, "projects.column.created"),
    ]
    rows = [[p.name, p.base_model or "", p.tokenizer_path or "", f"{p.created_at:%Y-%m-%d}"] for p in projects]
    return Message(say(language, "projects.title"), tables=[Table(columns, rows)])


def _counts(counts: dict[str, int], separator: str = " · ") -> str:
    return separator.join(f"{name} {n}" for name, n in counts.items())


def _length_row(label: str, stats: LengthStats) -> list[str]:
    median = f"{stats.median:g}" if isinstance(stats.median, float) else str(stats.median)
    return [label, str(stats.min), median, str(stats.p95), str(stats.max)]
