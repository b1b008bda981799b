"""`tuneloop runs`, `run show`, `approve` and `cancel`: the runs, one run's whole history, the approver's decision
(approve, then deploy) and stopping a run."""

from typing import Annotated

import typer
from rich.table import Table

from bot.cli.common import console, fail, on_queues, open_session
from bot.cli.deploy import ServerOption, report
from engine.data.versions import current_actor
from engine.runs import RunError, RunHistory, approve_run, cancel_run, deploy_approved, list_runs, run_history
from engine.serve.deploy import DeployError
from engine.work.jobs import approve_and_enqueue, is_queued_run, retry_and_enqueue
from storage.models import RunEvent

app = typer.Typer(help="One run: its history.", no_args_is_help=True)

RunArgument = Annotated[int, typer.Argument(help="The run's id (see `tuneloop runs`).")]
ByOption = Annotated[str | None, typer.Option("--by", help="Who is doing it; you, if unset.")]
TIME = "%Y-%m-%d %H:%M"


def runs_command(
    project: Annotated[str | None, typer.Option("--project", "-p", help="Only this project's runs.")] = None,
    state: Annotated[str | None, typer.Option("--state", "-s", help="Only runs in this state.")] = None,
) -> None:
    """List runs, newest first."""
    with open_session() as session:
        try:
            rows = list_runs(session, project=project, state=state)
        except RunError as error:
            fail(str(error))
    if not rows:
        console.print("no runs" + (f" in state {state}" if state else "") + (f" for {project}" if project else ""))
        return
    table = Table()
    for heading in ("id", "project", "iteration", "state", "requested by", "updated"):
        table.add_column(heading, no_wrap=heading != "requested by")
    for run, name in rows:
        updated = run.updated_at or run.created_at
        table.add_row(str(run.id), name, str(run.iteration), run.state, run.requested_by or "", f"{updated:{TIME}}")
    console.print(table)


def show_command(run: RunArgument) -> None:
    """A run's whole history: its moves from state to state, jobs, training, evaluations, reviews, deployments."""
    with open_session() as session:
        history = run_history(session, run)
    for line in history_lines(history):
        console.print(line, markup=False, highlight=False, emoji=False)  # job ids such as 3:train:1


def approve_command(
    run: RunArgument,
    by: ByOption = None,
    override: Annotated[
        str | None, typer.Option("--override", help="Why to deploy a run that failed its gate anyway.")
    ] = None,
    server: ServerOption = None,
) -> None:
    """Approve a run and deploy its adapter (on the cpu queue's workers, for a run submitted to them)."""
    approver = by or current_actor()
    with open_session() as session:
        queued = is_queued_run(session, run)
    if queued:  # its other stages ran on workers, and a worker's reconciler would deploy it anyway
        with open_session() as session:
            try:
                job = on_queues(
                    lambda pool: approve_and_enqueue(
                        session, pool, run, approver, platform="cli", override_reason=override
                    )
                )
            except RunError as error:
                fail(str(error))
        console.print(f"run {run} approved by {approver}; deployment queued as job {job.arq_job_id}", emoji=False)
        return
    with open_session() as session:
        try:
            approve_run(session, run, approver, platform="cli", override_reason=override)
        except RunError as error:
            fail(str(error))
    console.print(f"run {run} approved by {approver}; deploying")
    problem = None
    with open_session() as session:  # the run's failure is kept even when the deployment could not start
        try:
            outcome = deploy_approved(session, run, approver, servers=server, platform="cli")
        except (DeployError, RunError) as error:
            problem = str(error)
    if problem is not None:
        fail(problem)
    report(outcome)


def retry_command(run: RunArgument, by: ByOption = None) -> None:
    """Retry a failed run once its cause is fixed: its workers go on from the stage that failed (a training resumes
    from its last checkpoint). A failed deployment is retried with `tuneloop approve`."""
    with open_session() as session:
        queued = is_queued_run(session, run)
    if not queued:
        fail(
            f"run {run} was not run by workers: retry it with `tuneloop train --resume {run}` "
            f"or `tuneloop eval --run {run}`"
        )
    with open_session() as session:
        try:
            job = on_queues(lambda pool: retry_and_enqueue(session, pool, run, by or current_actor(), platform="cli"))
        except RunError as error:
            fail(str(error))
    console.print(f"run {run} retried; {job.arq_job_id} queued" if job else f"run {run} retried", emoji=False)


def cancel_command(run: RunArgument, by: ByOption = None) -> None:
    """Cancel a run; a training run stops at its next step."""
    with open_session() as session:
        try:
            cancelled = cancel_run(session, run, by or current_actor(), platform="cli")
        except RunError as error:
            fail(str(error))
    console.print(f"run {cancelled.id} cancelled")


def history_lines(history: RunHistory) -> list[str]:
    run = history.run
    lines = [f"run {run.id}: {history.project} iteration {run.iteration}, {run.state}"]
    if run.parent_run_id:
        lines.append(f"  continues run {run.parent_run_id}")
    if run.requested_by:
        lines.append(f"  requested by {run.requested_by}" + (f" on {run.platform}" if run.platform else ""))
    if run.error:
        lines.append(f"  error: {run.error}")
    if run.gate_override_reason:
        lines.append(f"  gate overridden: {run.gate_override_reason}")
    lines.append(f"  created {run.created_at:{TIME}}")
    for event in history.transitions:
        detail = event.detail or {}
        move = f"{detail['from']} → {detail['to']}" if "from" in detail and "to" in detail else event.action
        where = f" on {event.platform}" if event.platform else ""
        why = f": {detail['reason']}" if detail.get("reason") else ""
        lines.append(f"  {event.created_at:{TIME}}  {move} by {event.actor}{where}{why}")
    if history.jobs:
        lines.append("jobs:")
        lines += [f"  {job.arq_job_id} {job.stage} {job.status} (attempt {job.attempt})" for job in history.jobs]
    if history.metric_count:
        loss = f", last loss {history.last_loss:.4f}" if history.last_loss is not None else ""
        lines.append(f"training: {history.metric_count} metric points{loss}")
    for evaluation in history.evaluations:
        gate = {True: "passed", False: "failed", None: "undecided"}[evaluation.gate_passed]
        reasons = f" ({'; '.join(map(str, evaluation.gate_reasons))})" if evaluation.gate_reasons else ""
        lines.append(f"evaluation {evaluation.id} ({evaluation.judge_kind} judge): gate {gate}{reasons}")
    if history.reviews:
        verdicts: dict[str, int] = {}
        for review in history.reviews:
            verdicts[review.verdict] = verdicts.get(review.verdict, 0) + 1
        counted = ", ".join(f"{verdict} {n}" for verdict, n in sorted(verdicts.items()))
        reviewers = ", ".join(sorted({review.reviewer for review in history.reviews}))
        lines.append(f"reviews: {len(history.reviews)} by {reviewers} ({counted})")
    for deployment in history.deployments:
        approved = f" approved by {deployment.approved_by}" if deployment.approved_by else ""
        lines.append(f"deployment {deployment.id}: {deployment.version_name} {deployment.status}{approved}")
    announced = [event for event in history.events if (event.payload or {}).get("stage") != "run"]  # moves: above
    if announced:
        lines.append("events:")
        lines += [f"  {event.created_at:{TIME}}  {event.type} {event_summary(event)}" for event in announced]
    return lines


def event_summary(event: RunEvent) -> str:
    """One line of a kept event: the stage and step, the report's headline, the warning or the error."""
    payload = event.payload or {}
    if event.type == "stage":
        step = f" {payload['step']}" if payload.get("step") else ""
        return f"{payload.get('stage', '')}{step}" + (f" ({payload['state']})" if payload.get("state") else "")
    text = payload.get("headline") or payload.get("message") or payload.get("error") or payload.get("summary")
    return f"{payload.get('stage', '')}: {text}" if text else str(payload.get("stage", ""))
