"""`tuneloop project`: a named assistant, its base model and tokenizer."""

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from bot.cli.common import console, fail, open_session
from engine.projects import configure_project, list_projects

app = typer.Typer(help="Projects: a named assistant, its base model and tokenizer.", no_args_is_help=True)


@app.command("set")
def project_set(
    name: Annotated[str, typer.Argument(help="Project name, e.g. customer_service.")],
    base_model: Annotated[str | None, typer.Option(help="Base model path or name.")] = None,
    tokenizer: Annotated[str | None, typer.Option(help="Tokenizer folder or tokenizer.json for token lengths.")] = None,
) -> None:
    """Create a project, or change its settings."""
    if tokenizer is not None and not Path(tokenizer).exists():
        fail(f"tokenizer {tokenizer} does not exist")
    with open_session() as session:
        project = configure_project(session, name, base_model=base_model, tokenizer_path=tokenizer)
        base, tokenizer_path = project.base_model or "-", project.tokenizer_path or "-"
        console.print(f"project {project.name}: base model {base}, tokenizer {tokenizer_path}", markup=False)


@app.command("list")
def project_list() -> None:
    """List the projects."""
    with open_session() as session:
        table = Table("project", "base model", "tokenizer", "created")
        for project in list_projects(session):
            table.add_row(
                escape(project.name),
                escape(project.base_model or ""),
                escape(project.tokenizer_path or ""),
                f"{project.created_at:%Y-%m-%d}",
            )
    console.print(table)
