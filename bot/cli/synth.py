"""`tuneloop data synth`: have a model write training data for a task, as an unreviewed version.

Only the command function lives here; `bot/cli/data.py` registers it (importing its `app` here
would be circular)."""

from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.text import Text

from bot.cli.act import act
from bot.cli.common import DatasetOption, ProjectOption, console, errors, fail
from bot.cli.data import copy_out
from bot.core.actions import Synthesize
from bot.core.errors import UserError
from bot.core.grammar import parse_weights
from engine.data.versions import DEFAULT_DATASET
from engine.events import Event, EventSink

EXIT_INTERRUPTED = 130


def synth(
    project: ProjectOption,
    task: Annotated[str, typer.Option("--task", "-t", help="What the assistant does, in the users' language.")],
    n: Annotated[int, typer.Option("-n", "--n", help="Samples to request.")] = 100,
    model: Annotated[str | None, typer.Option(help="Model name; TUNELOOP_SYNTH_MODEL if unset.")] = None,
    scenarios: Annotated[
        str | None,
        typer.Option(help='Sub-scenarios and their weights, e.g. "退货:3,换货:2,物流:5"; asked of the model if unset.'),
    ] = None,
    personas: Annotated[
        str | None,
        typer.Option(help='User personas and weights, e.g. "新手:2,老客户:1,商家:1"; a generic mix if unset.'),
    ] = None,
    moods: Annotated[str | None, typer.Option(help='Moods and weights, e.g. "平静:4,着急:2,生气:1".')] = None,
    difficulty: Annotated[str | None, typer.Option(help='Difficulty and weights, e.g. "简单:4,中等:4,困难:2".')] = None,
    from_tags: Annotated[
        bool, typer.Option(help="Without --scenarios, use the dataset's existing tags and their shares.")
    ] = True,
    multi_turn_ratio: Annotated[float, typer.Option(help="Share of multi-turn conversations, 0–1.")] = 0.3,
    per_request: Annotated[int, typer.Option(help="Samples asked for in one request.")] = 10,
    seed_version: Annotated[
        int | None, typer.Option(help="Take few-shot examples from this version of the dataset.")
    ] = None,
    few_shot: Annotated[int, typer.Option(help="Examples per request with --seed-version.")] = 3,
    system_prompt: Annotated[str | None, typer.Option(help="System prompt put before every conversation.")] = None,
    concurrency: Annotated[int | None, typer.Option(help="Requests in flight at once; 8 if unset.")] = None,
    max_requests: Annotated[int | None, typer.Option(help="Budget: requests, retries included.")] = None,
    max_tokens: Annotated[int | None, typer.Option(help="Budget: prompt + completion tokens.")] = None,
    max_cost: Annotated[float | None, typer.Option(help="Budget: estimated USD.")] = None,
    job: Annotated[str | None, typer.Option(help="Job name; the same command resumes its job without one.")] = None,
    seed: Annotated[int, typer.Option(help="Seed for spreading personas, moods and difficulty.")] = 0,
    temperature: float = 0.9,
    dataset: DatasetOption = DEFAULT_DATASET,
    markdown: Annotated[Path | None, typer.Option(help="Also write the report as Markdown here.")] = None,
) -> None:
    """Synthesize training data with any OpenAI-compatible model; the result is a new, unreviewed version."""
    action = Synthesize(
        project=project,
        task=task,
        n=n,
        model=model,
        scenarios=weights_option(scenarios, "scenarios") if scenarios else None,
        personas=weights_option(personas, "personas") if personas else None,
        moods=weights_option(moods, "moods") if moods else None,
        difficulties=weights_option(difficulty, "difficulty") if difficulty else None,
        use_existing_tags=from_tags,
        multi_turn_ratio=multi_turn_ratio,
        per_request=per_request,
        seed_version=seed_version,
        few_shot=few_shot,
        system_prompt=system_prompt,
        concurrency=concurrency,
        max_requests=max_requests,
        max_tokens=max_tokens,
        max_cost=max_cost,
        job=job,
        seed=seed,
        temperature=temperature,
        dataset=dataset,
    )
    started: dict[str, str] = {}  # the job's name, once the synthesis says it
    try:
        with progress_display() as progress:
            messages = act(action, events=progress_sink(progress, started))
    except KeyboardInterrupt:
        name = f" (job {started['job']})" if "job" in started else ""
        errors.print(
            f"[yellow]interrupted[/yellow]: every batch that arrived is stored; run the same command again{name} "
            "to continue without paying for them twice",
            highlight=False,
        )
        raise typer.Exit(EXIT_INTERRUPTED) from None
    if markdown:
        copy_out(messages, ".md", markdown)


def weights_option(text: str, option: str) -> dict[str, float]:
    """ "退货:3,换货:2,物流:5" given to `--option`, or its mistake, naming the option."""
    try:
        return parse_weights(text)
    except UserError as error:
        fail(f"--{option}: {error}")


def progress_display() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[detail]}"),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    )


def progress_sink(progress: Progress, started: dict[str, str]) -> EventSink:
    """The synthesis's events as a progress bar: its stage, the batches done, requests, tokens and cost; the bar
    stops at the report, so that the report is printed under it."""
    bar = progress.add_task("planning", total=None, detail="")

    def show(event: Event) -> None:
        payload = event.payload
        if event.type == "progress":
            cost = payload.get("cost_usd")
            detail = f"{payload.get('requests', 0)} req · {payload.get('tokens', 0)} tok" + (
                f" · ${cost:.4f}" if cost else ""
            )
            progress.update(
                bar, description="batches", completed=payload["done"], total=payload["total"], detail=detail
            )
        elif event.type == "stage":
            progress.update(bar, description=str(payload.get("step", "")))
            if payload.get("job"):
                started["job"] = str(payload["job"])
            if payload.get("step") == "plan" and payload.get("resumed_batches"):
                progress.console.print(
                    f"resuming job {payload['job']}: {payload['resumed_batches']} batch(es) already stored",
                    highlight=False,
                    markup=False,
                )
        elif event.type == "report":
            progress.update(bar, description="done")
            progress.stop()
        elif event.type == "warning":
            progress.console.print(Text("warning: ", style="yellow") + Text(str(payload.get("message"))))

    return show
