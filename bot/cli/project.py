"""`tuneloop project`: a named assistant, its base model, tokenizer and the people around it."""

from typing import Annotated

import typer

from bot.cli.act import act
from bot.cli.common import fail
from bot.core.actions import ConfigureProject, ListProjects
from bot.core.grammar import parse_names

app = typer.Typer(help="Projects: a named assistant, its base model, tokenizer and people.", no_args_is_help=True)

PeopleOption = Annotated[
    str | None,
    typer.Option(
        help="Comma-separated: slack:U123, telegram:42, a group (slack:S0ABC, telegram:-100…) or a terminal "
        "user's name; '-' lets anyone."
    ),
]


@app.command("set")
def project_set(
    name: Annotated[str, typer.Argument(help="Project name, e.g. customer_service.")],
    base_model: Annotated[str | None, typer.Option(help="Base model path or name.")] = None,
    tokenizer: Annotated[str | None, typer.Option(help="Tokenizer folder or tokenizer.json for token lengths.")] = None,
    template: Annotated[str | None, typer.Option(help="Chat template for its runs (a recipe's `template`).")] = None,
    reviewers: PeopleOption = None,
    approvers: PeopleOption = None,
    requesters: Annotated[str | None, typer.Option(help="Who may start runs; as --reviewers.")] = None,
    channels: Annotated[str | None, typer.Option(help="Its chat channels: slack:C123, telegram:-100….")] = None,
    language: Annotated[str | None, typer.Option(help="en or zh: the language its messages are in.")] = None,
    four_eyes: Annotated[
        bool | None, typer.Option("--four-eyes/--no-four-eyes", help="Whoever requested a run may not approve it.")
    ] = None,
    by: Annotated[str | None, typer.Option("--by", help="Who is changing it; you, if unset.")] = None,
) -> None:
    """Create a project, or change its settings and who may start, review and approve its runs."""
    if language is not None and language not in ("en", "zh"):
        fail(f"--language is en or zh, not '{language}'")

    def people(value: str | None) -> list[str] | None:
        return parse_names(value) if value is not None else None

    act(
        ConfigureProject(
            project=name,
            create=True,
            base_model=base_model,
            tokenizer=tokenizer,
            template=template,
            reviewers=people(reviewers),
            approvers=people(approvers),
            requesters=people(requesters),
            channels=people(channels),
            language=language,
            four_eyes=four_eyes,
        ),
        by,
    )


@app.command("list")
def project_list() -> None:
    """List the projects."""
    act(ListProjects())
