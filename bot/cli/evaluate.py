"""`tuneloop eval RUN`: the tuned model against its base, judged, gated and reported."""

from typing import Annotated

import typer
from rich.table import Table

from bot.cli.act import print_event
from bot.cli.common import announcing, console, fail, open_session, positional_or_old, quiet_training_libraries

STATUS_STYLE = {
    "passed": "green",
    "failed": "red",
    "not_measured": "red",
    "waived": "yellow",
    "not_applicable": "dim",
    "disabled": "dim",
}


def eval_command(
    run_argument: Annotated[
        int | None, typer.Argument(metavar="RUN", help="The run whose adapter to evaluate.")
    ] = None,
    run_option: Annotated[int | None, typer.Option("--run", hidden=True, help="Old spelling of RUN.")] = None,
    judge: Annotated[
        str, typer.Option(help="auto (the LLM judge when an endpoint is configured), llm or metric.")
    ] = "auto",
    max_samples: Annotated[int | None, typer.Option(min=1, help="Evaluate the first N test samples only.")] = None,
    max_new_tokens: Annotated[int, typer.Option(min=1, help="Longest answer generated per sample.")] = 128,
    batch_size: Annotated[int, typer.Option(min=1, help="Prompts answered together.")] = 8,
    stability_prompts: Annotated[int, typer.Option(min=0, help="Prompts sampled for stability; 0 skips it.")] = 8,
    stability_k: Annotated[int, typer.Option(min=2, help="Sampled answers per stability prompt.")] = 3,
    forgetting: Annotated[bool, typer.Option(help="Run the general-ability probe.")] = True,
    pairwise: Annotated[bool, typer.Option(help="LLM judge: compare base and tuned answers in both orders.")] = True,
    weakest: Annotated[int, typer.Option(min=0, help="How many of the lowest-scoring samples to report.")] = 10,
) -> None:
    """Answer the run's test split with the base and the tuned model, judge both, apply the project's gate,
    and write the report (Markdown and HTML with charts) into the run's artifacts."""
    run = positional_or_old(run_argument, run_option, "RUN", "--run")
    if judge not in ("auto", "llm", "metric"):
        fail(f"--judge must be auto, llm or metric, not {judge!r}")
    quiet_training_libraries()
    from engine.evaluate.generate import GenerationSettings
    from engine.evaluate.run import EvaluationError, EvaluationOptions, evaluate_run

    options = EvaluationOptions(
        judge=judge,  # type: ignore[arg-type]
        generation=GenerationSettings(max_new_tokens=max_new_tokens, batch_size=batch_size),
        max_samples=max_samples,
        pairwise=pairwise,
        stability_prompts=stability_prompts,
        stability_k=stability_k,
        forgetting=forgetting,
        weakest_k=weakest,
    )
    with announcing(print_event) as events, open_session() as session:
        try:
            outcome = evaluate_run(session, run, options, events=events)
        except EvaluationError as error:
            fail(str(error))
        decision = outcome.decision
        table = Table(title=f"gate ({outcome.evaluation.judge_kind} judge)", show_lines=False)
        for column in ("check", "value", "threshold", "status", "why"):
            table.add_column(column)
        for check in decision.checks:
            value = "—" if check.value is None else f"{check.value:.3g}"
            threshold = "—" if check.threshold is None else f"{check.op} {check.threshold:g}"
            style = STATUS_STYLE[check.status]
            table.add_row(check.name, value, threshold, f"[{style}]{check.status}[/{style}]", check.message)
        console.print(table)
        console.print(f"[{'green' if decision.passed else 'red'}]{decision.headline}[/]", highlight=False)
        for line in outcome.weakest.summary:
            console.print(f"  weak: {line}", highlight=False)
        console.print(f"report: {outcome.report.markdown}")
        console.print(f"report (HTML): {outcome.report.html}")
