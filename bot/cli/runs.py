"""`tuneloop runs`, `run show`, `approve`, `cancel`, `retry`, `review`, `retrain`, `request-approval` and `chat`:
each is one action of the core (bot/core), printed in the terminal."""

import shlex
from typing import Annotated

import typer

from bot.cli.act import act, fail_plain, terminal_actor
from bot.cli.common import fail
from bot.cli.deploy import ServerOption
from bot.core.actions import (
    Approve,
    Cancel,
    ListRuns,
    RequestApproval,
    Retrain,
    Retry,
    Review,
    ShowHistory,
    ShowReview,
    ShowReviewSummary,
)
from bot.core.errors import UserError
from bot.core.perform import Core

app = typer.Typer(help="One run: its history.", no_args_is_help=True)

RunArgument = Annotated[int, typer.Argument(help="The run's id (see `tuneloop runs`).")]
ByOption = Annotated[str | None, typer.Option("--by", help="Who is doing it; you, if unset.")]


def runs_command(
    project: Annotated[str | None, typer.Option("--project", "-p", help="Only this project's runs.")] = None,
    state: Annotated[str | None, typer.Option("--state", "-s", help="Only runs in this state.")] = None,
) -> None:
    """List runs, newest first."""
    act(ListRuns(project=project, state=state))


def show_command(run: RunArgument) -> None:
    """A run's whole history: its moves from state to state, jobs, training, evaluations, reviews, deployments."""
    act(ShowHistory(run=run))


def approve_command(
    run: RunArgument,
    by: ByOption = None,
    override: Annotated[
        str | None, typer.Option("--override", help="Why to deploy a run that failed its gate anyway.")
    ] = None,
    server: ServerOption = None,
) -> None:
    """Approve a run and deploy its adapter (on the cpu queue's workers, for a run submitted to them)."""
    act(Approve(run=run, override=override, servers=server), by)


def request_approval_command(run: RunArgument, by: ByOption = None) -> None:
    """Reviewing is done: send the run to its approvers (refused while its gate failed)."""
    act(RequestApproval(run=run), by)


def retry_command(run: RunArgument, by: ByOption = None) -> None:
    """Retry a failed run once its cause is fixed: its workers go on from the stage that failed (a training resumes
    from its last checkpoint). A failed deployment is retried with `tuneloop approve`."""
    act(Retry(run=run), by)


def cancel_command(run: RunArgument, by: ByOption = None) -> None:
    """Cancel a run; a training run stops at its next step."""
    act(Cancel(run=run), by)


def review_command(
    run: RunArgument,
    keep: Annotated[int | None, typer.Option("--keep", help="Keep this sample (its # on the list).")] = None,
    fix: Annotated[int | None, typer.Option("--fix", help="Fix this sample; --answer gives the answer.")] = None,
    drop: Annotated[int | None, typer.Option("--drop", help="Drop this sample.")] = None,
    answer: Annotated[str | None, typer.Option("--answer", help="The corrected answer of --fix.")] = None,
    comment: Annotated[str | None, typer.Option("--comment", help="Why, for the record.")] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=50, help="How many samples to list.")] = 5,
    summary: Annotated[bool, typer.Option("--summary", help="What the reviews so far would change.")] = False,
    by: ByOption = None,
) -> None:
    """List the run's weakest judged samples, or keep, fix or drop one of them."""
    chosen = [(verdict, sample) for verdict, sample in (("keep", keep), ("fix", fix), ("drop", drop)) if sample]
    if len(chosen) > 1:
        fail("give one of --keep, --fix and --drop at a time")
    if answer is not None and [verdict for verdict, _ in chosen] != ["fix"]:
        fail("--answer goes with --fix")
    if chosen:
        verdict, sample = chosen[0]
        act(Review(run=run, judgement=sample, verdict=verdict, answer=answer, comment=comment), by)  # type: ignore[arg-type]
    elif summary:
        act(ShowReviewSummary(run=run), by)
    else:
        act(ShowReview(run=run, limit=limit), by)


def retrain_command(
    run: RunArgument,
    dpo: Annotated[
        bool, typer.Option("--dpo", help="Train SFT, then DPO on the project's preference pairs from reviews.")
    ] = False,
    by: ByOption = None,
) -> None:
    """Start the next iteration: the reviews become a new dataset version, and its run is queued for training."""
    act(Retrain(run=run, dpo=dpo), by)


def chat_command(
    text: Annotated[list[str], typer.Argument(help='Chat text, as in Slack or Telegram, e.g. "review 3 keep 17".')],
    by: ByOption = None,
) -> None:
    """Say anything the chat faces understand (`tuneloop chat help` lists it): the same grammar, in the terminal."""
    core, actor = Core.from_settings(), terminal_actor(by)
    said = text[0] if len(text) == 1 else shlex.join(text)  # one quoted argument is the chat text as typed
    try:
        action = core.parse(said, actor)
    except UserError as error:
        fail_plain(str(error))
    act(action, by)
