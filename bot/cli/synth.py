"""`tuneloop data synth`: have a model write training data for a task, as an unreviewed version.

Only the command function lives here; `bot/cli/data.py` registers it (importing its `app` here
would be circular)."""

import asyncio
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from bot.cli.common import EXIT_NOT_FOUND, DatasetOption, ProjectOption, console, errors, fail
from bot.core.errors import UserError
from bot.core.grammar import parse_weights
from engine.data.synth import Budget, SynthError, SynthOutcome, SynthRequest, default_job_name, synthesize
from engine.data.versions import DEFAULT_DATASET
from engine.database import DatabaseNotReadyError, get_engine
from engine.events import Event
from engine.files import write_atomic_text
from engine.loop.projects import NotFoundError, ProjectNameError
from engine.settings import get_settings

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
    request = SynthRequest(
        task=task,
        n=n,
        model=model,
        scenarios=parse_scenarios_option(scenarios) if scenarios else None,
        use_existing_tags=from_tags,
        **_mixes(("personas", personas), ("moods", moods), ("difficulties", difficulty)),
        multi_turn_ratio=multi_turn_ratio,
        per_request=per_request,
        seed_version=seed_version,
        few_shot=few_shot,
        system_prompt=system_prompt,
        temperature=temperature,
        seed=seed,
        dataset=dataset,
        job=job,
        concurrency=concurrency,
        budget=Budget(max_requests=max_requests, max_tokens=max_tokens, max_cost_usd=max_cost),
    )
    try:
        request.check()
        engine = get_engine()
        outcome = _run_with_progress(engine, project, request)
    except (SynthError, ProjectNameError) as error:
        fail(str(error))
    except (NotFoundError, DatabaseNotReadyError) as error:
        errors.print(f"[red]error:[/red] {escape(str(error))}")
        raise typer.Exit(EXIT_NOT_FOUND) from None
    except KeyboardInterrupt:
        name = job or default_job_name(project, model or get_settings().synth_model, request)
        errors.print(
            f"[yellow]interrupted[/yellow]: every batch that arrived is stored; run the same command again "
            f"(job {name}) to continue without paying for them twice"
        )
        raise typer.Exit(EXIT_INTERRUPTED) from None
    render_report(outcome, project, dataset)
    if markdown:
        write_atomic_text(markdown, outcome.markdown)
        console.print(f"wrote {markdown}")


def _mixes(*options: tuple[str, str | None]) -> dict[str, dict[str, float]]:
    """SynthRequest fields from the persona / mood / difficulty options that were given."""
    flags = {"difficulties": "difficulty"}
    return {name: weights_option(text, flags.get(name, name)) for name, text in options if text}


def parse_scenarios_option(text: str) -> dict[str, float]:
    return weights_option(text, "scenarios")


def weights_option(text: str, option: str) -> dict[str, float]:
    """ "退货:3,换货:2,物流:5" given to `--option`, or its mistake, naming the option."""
    try:
        return parse_weights(text)
    except UserError as error:
        fail(f"--{option}: {error}")


def _run_with_progress(engine: Any, project: str, request: SynthRequest) -> SynthOutcome:
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[detail]}"),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    ) as progress:
        bar = progress.add_task("planning", total=None, detail="")

        def on_event(event: Event) -> None:
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
                if payload.get("step") == "plan" and payload.get("resumed_batches"):
                    progress.console.print(
                        f"resuming job {payload['job']}: {payload['resumed_batches']} batch(es) already stored"
                    )
            elif event.type == "report":
                progress.update(bar, description="done")
            elif event.type == "warning":
                progress.console.print(f"[yellow]warning:[/yellow] {payload.get('message')}", highlight=False)

        return asyncio.run(synthesize(engine, project, request, events=on_event))


def render_report(outcome: SynthOutcome, project: str, dataset: str) -> None:
    report = outcome.report
    console.print(
        f"[bold]合成报告 · 任务 {outcome.job}[/bold] ({report['model']}, {report['response_format']})", highlight=False
    )
    console.print(
        f"[bold green]请求 {report['requested']} → 收到 {report['received']} → 有效 {report['valid']} → "
        f"保留 {report['kept']}[/bold green]",
        highlight=False,
    )
    table = Table("子场景", "请求", "收到", "保留", title="按子场景", title_justify="left")
    for name, row in report["per_scenario"].items():
        table.add_row(name, str(row["requested"]), str(row["received"]), str(row["kept"]))
    console.print(table)
    if report["invalid"]:
        console.print("无效: " + ", ".join(f"{k} {v}" for k, v in report["invalid"].items()), highlight=False)
    if report["filtered"]:
        console.print("过滤: " + ", ".join(f"{k} {v}" for k, v in report["filtered"].items()), highlight=False)
    batches = report["batches"]
    cost = f"${report['cost_usd']:.4f}" if report["cost_usd"] is not None else "unknown (no price for this model)"
    console.print(
        f"requests {report['requests']} (retries {report['retries']}) · batches {batches['ok']}/{batches['total']}"
        f" · tokens {report['tokens']['total']} · cost {cost} · {report['seconds']}s",
        highlight=False,
    )
    if report.get("stopped"):
        console.print(
            f"[yellow]budget reached ({report['stopped']}): {batches['not_sent']} batch(es) not requested; "
            f"raise the budget and run again with --job {outcome.job} to continue[/yellow]"
        )
    elif batches["failed"]:
        console.print(
            f"[yellow]{batches['failed']} batch(es) failed; run again with --job {outcome.job} to retry only those"
            "[/yellow]"
        )
    change = outcome.change
    if change is None:
        console.print("[yellow]no valid sample came back: no dataset version was made[/yellow]")
    elif change.created:
        console.print(
            f"[green]{escape(project)}/{escape(dataset)} v{change.version.number}[/green]: "
            f"{escape(change.version.summary)} (synthetic, not reviewed yet)"
        )
    else:
        console.print(
            f"no change: {project}/{dataset} v{change.version.number} already holds this job's result", markup=False
        )
