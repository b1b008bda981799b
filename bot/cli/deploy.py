"""`tuneloop deploy`, `rollback`, `deployments` and `serve sync`: a run's adapter onto the vLLM servers under its
project's stable name, and back."""

import getpass
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from bot.cli.common import ProjectOption, console, errors, fail, open_session
from engine.serve.deploy import DeployError, DeployOutcome, deploy_run, list_deployments, rollback, sync

ServerOption = Annotated[
    list[str] | None,
    typer.Option(
        "--server",
        help="A vLLM server's URL (repeat for replicas); TUNELOOP_VLLM_URLS if unset. "
        "Append #max-lora-rank=N when the server's is not 16.",
    ),
]


def deploy_command(
    run: Annotated[int, typer.Option("--run", help="The run whose adapter to deploy.")],
    approved_by: Annotated[
        str | None, typer.Option("--approved-by", help="Who approved the deployment; you, if unset.")
    ] = None,
    server: ServerOption = None,
) -> None:
    """Load a run's adapter on every server, check it answers, then point the project's stable name at it."""
    with open_session() as session:
        try:
            outcome = deploy_run(session, run, approved_by or getpass.getuser(), servers=server, platform="cli")
        except DeployError as error:
            fail(str(error))
    # Reported after the session is committed: a failed attempt is kept as a "failed" deployment.
    report(outcome)


def rollback_command(
    project: ProjectOption,
    by: Annotated[str | None, typer.Option("--by", help="Who is rolling back; you, if unset.")] = None,
    server: ServerOption = None,
) -> None:
    """Point the project's stable name back at the deployment before the active one."""
    with open_session() as session:
        try:
            outcome = rollback(session, project, by or getpass.getuser(), servers=server, platform="cli")
        except DeployError as error:
            fail(str(error))
    report(outcome)


def deployments_command(
    project: Annotated[str | None, typer.Option("--project", "-p", help="Only this project's.")] = None,
) -> None:
    """List deployments, newest first."""
    with open_session() as session:
        rows = list_deployments(session, project)
    if not rows:
        console.print("no deployments yet")
        return
    table = Table("id")
    for heading in ("version", "status", "run", "approved by", "approved at"):
        table.add_column(heading, no_wrap=heading != "approved by")
    for deployment, adapter in rows:
        approved_at = f"{deployment.approved_at:%Y-%m-%d %H:%M}" if deployment.approved_at else ""
        table.add_row(
            str(deployment.id),
            deployment.version_name,
            deployment.status,
            str(adapter.run_id or ""),
            deployment.approved_by or "",
            approved_at,
        )
    console.print(table)
    for deployment, _ in rows:
        if deployment.error:  # below the table, whole: the reason is the point
            line = f"deployment {deployment.id} ({deployment.version_name}) failed: {deployment.error}"
            console.print(line, markup=False, highlight=False)


def sync_command(
    project: Annotated[str | None, typer.Option("--project", "-p", help="Only this project's versions.")] = None,
    server: ServerOption = None,
) -> None:
    """Make the servers match the deployments: reload what a restart lost, unload what is no longer deployed."""
    with open_session() as session:
        try:
            outcome = sync(session, servers=server, project=project)
        except DeployError as error:
            fail(str(error))
    for url, version in outcome.loaded:
        console.print(f"loaded {version} on {url}")
    for url, version in outcome.unloaded:
        console.print(f"unloaded {version} from {url}")
    for sentence in outcome.replaced:
        errors.print(f"[yellow]warning:[/yellow] {escape(sentence)}")
    if not outcome.changed and not outcome.problems:
        console.print("the servers already match the deployments; nothing changed")
    if outcome.problems:
        fail("\n".join(outcome.problems))


def report(outcome: DeployOutcome) -> None:
    if not outcome.ok:
        fail(outcome.message)
    console.print(outcome.message)
    for url, answer in outcome.answers.items():
        console.print(f"  {url} answered the test prompt: {answer!r}", markup=False, highlight=False)
    for warning in outcome.warnings:
        errors.print(f"[yellow]warning:[/yellow] {escape(warning)}")
