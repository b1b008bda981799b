"""`tuneloop train` and `tuneloop export`: a dataset version and a recipe → a checked adapter → a merged model."""

from pathlib import Path
from typing import Annotated

import typer

from bot.cli.act import print_event, terminal_actor
from bot.cli.common import (
    ProjectOption,
    announcing,
    console,
    fail,
    open_session,
    positional_or_old,
    quiet_training_libraries,
)
from bot.core.errors import UserError
from bot.core.grammar import parse_dataset
from engine.artifacts import get_artifact_store
from engine.train.recipe import DEFAULT_RECIPE, RecipeError, read_recipe
from engine.train.stack import leave_out_unneeded
from storage.models import Run


def dataset_option(value: str) -> tuple[str, int | None]:
    """`--dataset`: a version number (`3`), `latest`, or another dataset of the project (`faq`, `faq:3`)."""
    try:
        return parse_dataset(value)
    except UserError as error:
        raise typer.BadParameter(str(error), param_hint="--dataset") from None


def train_command(
    project: ProjectOption,
    dataset: Annotated[
        str, typer.Option("--dataset", "-d", help="Dataset version to train on: N, latest, NAME or NAME:N.")
    ] = "latest",
    recipe: Annotated[
        Path, typer.Option(help="Recipe YAML (LLaMA-Factory key names); a resumed run keeps its own.")
    ] = DEFAULT_RECIPE,
    base_model: Annotated[
        str | None, typer.Option(help="Base model folder; overrides the recipe's model_name_or_path.")
    ] = None,
    out: Annotated[Path | None, typer.Option(help="Write the run here instead of the artifact store.")] = None,
    resume: Annotated[int | None, typer.Option(help="Continue this run from its last checkpoint.")] = None,
    processes: Annotated[
        int,
        typer.Option(
            min=1, help="Processes (GPUs) to train with, launched by `accelerate launch` (the recipe's `distributed`)."
        ),
    ] = 1,
    by: Annotated[str | None, typer.Option("--by", help="Who asks for the run; you, if unset.")] = None,
) -> int:
    """Fine-tune on a dataset version with a recipe; prints where the adapter and the loss curve are."""
    dataset_name, number = dataset_option(dataset)
    try:
        read = read_recipe(recipe, **({"model_name_or_path": base_model} if base_model else {}))
    except RecipeError as error:
        fail(str(error))
    for note in read.notes:
        console.print(f"{recipe.name}: {note}")
    loaded = read.recipe
    # The training stack (torch, transformers, peft) loads only when training, so that every other command starts
    # at once; and only what this run needs (a resumed run's recipe is its own, so nothing is left out there).
    if resume is None:
        leave_out_unneeded(loaded)
    quiet_training_libraries()
    from engine.train.launch import launch_training
    from engine.train.prepare import PrepareError
    from engine.train.sft import TrainingError, train

    with announcing(print_event) as events, open_session() as session:
        try:
            if processes > 1:
                if out is not None:
                    fail("--processes cannot be combined with --out yet: a multi-process run writes to the store")
                outcome = launch_training(
                    session,
                    project,
                    number,
                    loaded,
                    num_processes=processes,
                    events=events,
                    dataset_name=dataset_name,
                    run_id=resume,
                    requested_by=terminal_actor(by).identity,
                )
            else:
                outcome = train(
                    session,
                    project,
                    number,
                    loaded,
                    out_dir=out,
                    events=events,
                    dataset_name=dataset_name,
                    run_id=resume,
                    requested_by=terminal_actor(by).identity,
                )
                assert outcome is not None  # a single process is rank 0
        except (PrepareError, TrainingError) as error:
            fail(str(error))
        for check in outcome.eos_checks:
            console.print(f"run {outcome.run.id}: {check.message()}")
        console.print(f"adapter: {outcome.adapter_dir} (sha256 {outcome.adapter.sha256[:12]}…)")
        console.print(f"loss curve: {outcome.loss_curve}")
        return outcome.run.id  # type: ignore[return-value]


def export_command(
    run_argument: Annotated[int | None, typer.Argument(metavar="RUN", help="The run whose result to export.")] = None,
    run_option: Annotated[int | None, typer.Option("--run", hidden=True, help="Old spelling of RUN.")] = None,
    merge: Annotated[bool, typer.Option(help="Fold the adapter into the base model (merge_and_unload).")] = False,
    out: Annotated[Path | None, typer.Option(help="Folder to write; the run's own folder if unset.")] = None,
) -> None:
    """Export a run's adapter, or with --merge a merged model with its tokenizer and an EOS that matches the
    template (checked by generating from what was written)."""
    run = positional_or_old(run_argument, run_option, "RUN", "--run")
    quiet_training_libraries()
    from engine.train.merge import ExportError, export_run  # the training stack, only when exporting

    with open_session() as session:
        row = session.get(Run, run)
        if row is None:
            fail(f"no run {run}")
        if out is None:
            if not row.artifact_prefix:
                fail(f"run {run} has no folder; pass --out")
            folder = get_artifact_store().path(row.artifact_prefix)
            out = folder / ("merged" if merge else "export")
        try:
            outcome = export_run(session, run, out, merge=merge)
        except ExportError as error:
            fail(str(error))
        if outcome.eos_check is not None:
            console.print(outcome.eos_check.message())
        console.print(f"{'merged model' if outcome.merged else 'adapter'}: {outcome.path}")
