"""`tuneloop deploy`, `rollback`, `deployments` and `serve sync`: a run's adapter onto the vLLM servers under its
project's stable name, and back."""

from typing import Annotated

import typer

from bot.cli.act import act
from bot.cli.common import errors, positional_or_old
from bot.core.actions import Approve, DeployUnapproved, ListDeployments, Rollback, SyncServers

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
    act(ListDeployments(project=project))


def sync_command(
    project: Annotated[str | None, typer.Option("--project", "-p", help="Only this project's versions.")] = None,
    server: ServerOption = None,
) -> None:
    """Make the servers match the deployments: reload what a restart lost, unload what is no longer deployed."""
    act(SyncServers(project=project, servers=server))
