"""`tuneloop follow RUN`: a run's progress as the engine announces it on the event stream."""

from typing import Annotated

import redis
import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeRemainingColumn

from bot.cli.act import print_event
from bot.cli.common import console, errors, fail
from engine.events import Event
from engine.events.stream import DEFAULT_STREAM, follow_run, is_final
from engine.settings import get_settings

EXIT_RUN_FAILED = 1
EXIT_TIMED_OUT = 124  # as timeout(1)


def follow_command(
    run: Annotated[int, typer.Argument(help="The run to follow.")],
    from_start: Annotated[
        bool, typer.Option("--from-start", help="Replay what the stream still holds of the run, then follow.")
    ] = False,
    timeout: Annotated[float | None, typer.Option(min=0, help="Give up after this many seconds.")] = None,
    stream: Annotated[str, typer.Option(help="The Redis stream the engine announces on.")] = DEFAULT_STREAM,
) -> None:
    """Show a run's progress live, with its stage changes, reports, warnings and failures, until it is deployed,
    failed or cancelled (exit 0 when deployed, 1 otherwise)."""
    client = redis.Redis.from_url(get_settings().redis_url)
    bars: dict[str, TaskID] = {}
    last: Event | None = None
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=not console.is_terminal,  # piped: a line per (already coalesced) progress event instead
    )
    try:
        with progress:
            for last in follow_run(client, run, stream=stream, from_start=from_start, timeout_s=timeout):
                if last.type == "progress" and not progress.disable:
                    show_progress(progress, bars, last)
                else:
                    print_event(last)
    except redis.RedisError as error:
        fail(f"cannot read the event stream: {error}")  # not the URL: it may hold a password
    except KeyboardInterrupt:
        raise typer.Exit(0) from None
    finally:
        client.close()
    if last is None or not is_final(last):
        errors.print(f"run {run} is still going after {timeout:g}s")
        raise typer.Exit(EXIT_TIMED_OUT)
    if last.payload.get("state") != "deployed":
        raise typer.Exit(EXIT_RUN_FAILED)


def show_progress(progress: Progress, bars: dict[str, TaskID], event: Event) -> None:
    """One bar per stage, its label carrying the latest loss where training reports one."""
    payload = event.payload
    stage = str(payload.get("stage", "progress"))
    label = f"run {event.run} {stage}"
    if payload.get("loss") is not None:
        label += f" loss {payload['loss']:.4f}"
    if stage not in bars:
        bars[stage] = progress.add_task(label, total=payload.get("total"))
    progress.update(bars[stage], description=label, completed=payload["done"], total=payload.get("total"))
