"""`tuneloop demo`: the loop as far as it goes today, on the bundled example."""

from pathlib import Path
from typing import Annotated

import typer

from bot.cli.common import console, fail
from bot.cli.data import data_export, data_filter, data_import, data_report, data_split
from engine.data.export import EXPORT_FORMATS


def demo(
    data: Annotated[Path, typer.Option(help="The example dataset.")] = Path("examples/customer_service.jsonl"),
    out: Annotated[Path, typer.Option(help="Where exports and reports go.")] = Path("demo-out"),
    project: str = "customer_service",
) -> None:
    """Run the loop as far as it goes today on the bundled example: import, filter, split, export, report."""
    if not data.exists():
        fail(f"{data} does not exist; build it with `python examples/build_customer_service.py`")
    console.rule(f"tuneloop demo: {project}")
    data_import(data, project)
    data_filter(project)
    data_split(project)
    for fmt in EXPORT_FORMATS:
        for split in ("train", "test"):
            data_export(project, fmt, out / fmt / split, split=split)
    data_report(project, markdown=out / "report.md", histogram=out / "lengths.png")
