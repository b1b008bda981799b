"""`tuneloop deploy`, `rollback`, `deployments` and `serve sync`: a run's adapter onto the vLLM servers under its
project's stable name, and back."""

from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from bot.cli.act import act
from bot.cli.common import console, errors, fail, open_session, positional_or_old
from bot.core.actions import Approve, DeployUnapproved, Rollback
from engine.serve.deploy import DeployError, list_deployments, sync

ServerOption = Annotated[
    list[str] | None,
    typer.Option(
        "--server",
        help="A vLLM server's URL (repeat for replicas); TUNELOOP_VLLM_URLS if unset. "
        "Append #max-lora-rank=N when the server's is not 16.",
    ),
]


def deploy_command(
    run: Annotated[int | None, typer.Argument(help="The run whose adapter to deploy.")] = None,
    run_option: Annotated[int | None, typer.Option("--run", hidden=True, help="Old spelling of RUN.")] = None,
    by: Annotated[str | None, typer.Option("--by", help="Who approves the deployment; you, if unset.")] = None,
    approved_by: Annotated[str | None, typer.Option("--approved-by", hidden=True, help="Old spelling of --by.")] = None,
    override: Annotated[
        str | None, typer.Option("--override", help="An approver's reason to deploy a run that failed its gate.")
    ] = None,
    unapproved: Annotated[
        str | None,
        typer.Option(
            "--unapproved",
            help="Operators only: deploy without approval, for this reason (audited). Skips the gate, the run's "
            "state and the project's approvers.",
        ),
    ] = None,
    server: ServerOption = None,
) -> None:
    """Approve a run and deploy its adapter: the same approval as `tuneloop approve` (the gate passed, or an
    approver's override with a reason); then every server loads it, answers a test prompt, and the project's stable
    name points at it."""
    run = positional_or_old(run, run_option, "RUN", "--run")
    who = by or approved_by
    if approved_by is not None:
        errors.print("notice: --approved-by is now --by", highlight=False)
    if unapproved is not None:
        act(DeployUnapproved(run=run, reason=unapproved, servers=server), who)
    else:
        act(Approve(run=run, override=override, servers=server), who)


def rollback_command(
    project: Annotated[str | None, typer.Argument(help="The project to roll back.")] = None,
    project_option: Annotated[
        str | None, typer.Option("--project", "-p", hidden=True, help="Old spelling of PROJECT.")
    ] = None,
    by: Annotated[str | None, typer.Option("--by", help="Who is rolling back; you, if unset.")] = None,
    server: ServerOption = None,
) -> None:
    """Point the project's stable name back at the deployment before the active one."""
    act(Rollback(project=positional_or_old(project, project_option, "PROJECT", "--project"), servers=server), by)


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
