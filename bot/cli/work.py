"""`tuneloop worker`, `submit` and `reconcile`: runs on arq workers (engine/work/)."""

import logging
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError

from bot.cli.common import ProjectOption, console, fail, on_queues, open_session
from bot.cli.train import parse_dataset
from engine.data.versions import current_actor
from engine.runs import RunError
from engine.train.recipe import DEFAULT_RECIPE, RecipeError, load_recipe


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
    from engine.data.filters import FilterConfig
    from engine.data.split import SplitConfig
    from engine.prepare import PreparePlan, SynthPlan
    from engine.work.jobs import submit_run

    dataset_name, number = parse_dataset(dataset)
    if (synthesize is None) != (task is None):
        fail("--synthesize N and --task TEXT go together")
    try:
        loaded = load_recipe(recipe, **({"model_name_or_path": base_model} if base_model else {}))
        plan = PreparePlan(
            synthesize=SynthPlan(task=task, n=synthesize) if task and synthesize else None,
            filter=FilterConfig() if filter_data else None,
            split=SplitConfig(test_size=int(test_size) if test_size >= 1 else test_size) if split else None,
        )
    except RecipeError as error:
        fail(str(error))
    except ValidationError as error:
        fail(f"cannot prepare that run: {error.errors()[0]['msg']}")
    preparing = plan.synthesize or plan.filter or plan.split

    try:
        with open_session() as session:
            run = on_queues(
                lambda pool: submit_run(
                    session,
                    pool,
                    project,
                    number,
                    loaded,
                    by or current_actor(),
                    dataset_name=dataset_name,
                    plan=plan if preparing else None,
                )
            )
    except RunError as error:
        fail(str(error))
    console.print(f"run {run.id} queued for " + ("preparation" if preparing else "training"))


def reconcile_command() -> None:
    """Make the queues match the database: re-queue stages whose worker went silent or whose queue entry is lost."""
    from engine.work.worker import reconcile_once

    for line in on_queues(reconcile_once):
        console.print(line, highlight=False, markup=False, emoji=False)  # job ids such as 3:train:1
