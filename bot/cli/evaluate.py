"""`tuneloop eval RUN`: the tuned model against its base, judged, gated and reported, here (the core's Evaluate)."""

from enum import StrEnum
from typing import Annotated

import typer

from bot.cli.act import act, print_event
from bot.cli.common import announcing, positional_or_old, quiet_training_libraries
from bot.core.actions import Evaluate


class Judge(StrEnum):
    AUTO = "auto"
    LLM = "llm"
    METRIC = "metric"


def eval_command(
    run_argument: Annotated[
        int | None, typer.Argument(metavar="RUN", help="The run whose adapter to evaluate.")
    ] = None,
    run_option: Annotated[int | None, typer.Option("--run", hidden=True, help="Old spelling of RUN.")] = None,
    judge: Annotated[
        Judge, typer.Option(help="auto (the LLM judge when an endpoint is configured), llm or metric.")
    ] = Judge.AUTO,
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
    action = Evaluate(
        run=positional_or_old(run_argument, run_option, "RUN", "--run"),
        judge=judge.value,
        max_samples=max_samples,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        stability_prompts=stability_prompts,
        stability_k=stability_k,
        forgetting=forgetting,
        pairwise=pairwise,
        weakest=weakest,
    )
    quiet_training_libraries()
    with announcing(print_event) as events:
        act(action, None, events)
