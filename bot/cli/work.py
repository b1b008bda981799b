"""`tuneloop worker`, `submit` and `reconcile`: runs on arq workers (engine/work/)."""

import logging
from pathlib import Path
from typing import Annotated

import typer

from bot.cli.act import act
from bot.cli.common import ProjectOption, fail
from bot.core.actions import Reconcile, StartRun
from engine.train.recipe import DEFAULT_RECIPE


def worker_command(
    queue: Annotated[
        str,
        typer.Option(
            "--queue", "-q", help="gpu (train, generate) or cpu (synthesize, prepare, judge, report, deploy)."
        ),
    ],
    burst: Annotated[bool, typer.Option("--burst", help="Stop once the queue is empty.")] = False,
) -> None:
    """Run stages from a queue until stopped (SIGTERM lets the running job finish first)."""
    from engine.work.worker import QUEUES, build_worker

    if queue not in QUEUES:
        raise typer.BadParameter(f"'{queue}': expected {' or '.join(QUEUES)}", param_hint="--queue")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    build_worker(queue, burst=burst).run()


def submit_command(
    project: ProjectOption,
    dataset: Annotated[
        str, typer.Option("--dataset", "-d", help="Dataset version to train on: N, latest, NAME or NAME:N.")
    ] = "latest",
    recipe: Annotated[Path, typer.Option(help="Recipe YAML (LLaMA-Factory key names).")] = DEFAULT_RECIPE,
    base_model: Annotated[
        str | None, typer.Option(help="Base model folder; overrides the recipe's model_name_or_path.")
    ] = None,
    by: Annotated[str | None, typer.Option("--by", help="Who asks for the run; you, if unset.")] = None,
    synthesize: Annotated[
        int | None, typer.Option(min=1, help="First synthesize this many samples (needs --task).")
    ] = None,
    task: Annotated[str | None, typer.Option(help="What the synthetic conversations are about.")] = None,
    filter_data: Annotated[bool, typer.Option("--filter", help="Run the quality filter before training.")] = False,
    split: Annotated[bool, typer.Option("--split", help="Split train/test before training.")] = False,
    test_size: Annotated[float, typer.Option(help="--split: the test share (below 1) or count.")] = 0.1,
) -> None:
    """Start a run on the workers: it prepares its data on the cpu queue when asked (synthesis, filter, split),
    trains on the gpu queue, is evaluated (generate on gpu, judge and report on cpu), then waits for review."""
    if (synthesize is None) != (task is None):
        fail("--synthesize N and --task TEXT go together")
    action = StartRun(
        project=project,
        data=dataset,
        recipe=str(recipe),
        options={"model_name_or_path": base_model} if base_model else {},
        synthesize=synthesize,
        task=task,
        filter=filter_data,
        split=split,
        test_size=test_size,
    )
    act(action, by)


def reconcile_command() -> None:
    """Make the queues match the database: re-queue stages whose worker went silent or whose queue entry is lost."""
    act(Reconcile())
