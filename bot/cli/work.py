"""`tuneloop worker`, `submit` and `reconcile`: runs on arq workers (engine/work/)."""

import asyncio
import logging
from pathlib import Path
from typing import Annotated

import typer
from arq.connections import RedisSettings, create_pool

from bot.cli.common import ProjectOption, console, fail, open_session
from bot.cli.train import parse_dataset
from engine.data.versions import current_actor
from engine.runs import RunError
from engine.settings import get_settings
from engine.train.recipe import DEFAULT_RECIPE, RecipeError, load_recipe


def worker_command(
    queue: Annotated[str, typer.Option("--queue", "-q", help="gpu (train, evaluate) or cpu (deploy).")],
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
) -> None:
    """Start a run on the workers: it trains on the gpu queue, is evaluated, then waits for review."""
    from engine.work.jobs import submit_run

    dataset_name, number = parse_dataset(dataset)
    try:
        loaded = load_recipe(recipe, **({"model_name_or_path": base_model} if base_model else {}))
    except RecipeError as error:
        fail(str(error))

    async def submit() -> int:
        pool = await create_pool(RedisSettings.from_dsn(get_settings().redis_url))
        try:
            with open_session() as session:
                run = await submit_run(
                    session, pool, project, number, loaded, by or current_actor(), dataset_name=dataset_name
                )
                assert run.id is not None
                return run.id
        finally:
            await pool.aclose()

    try:
        run_id = asyncio.run(submit())
    except RunError as error:
        fail(str(error))
    console.print(f"run {run_id} queued for training")


def reconcile_command() -> None:
    """Make the queues match the database: re-queue stages whose worker went silent or whose queue entry is lost."""
    from engine.work.worker import reconcile_once

    for line in asyncio.run(reconcile_once()):
        console.print(line, highlight=False, markup=False, emoji=False)  # job ids such as 3:train:1
