"""`tuneloop train` and `tuneloop export`: a dataset version and a recipe → a checked adapter → a merged model, done
here, in this process (the core's Train and ExportModel)."""

from contextlib import suppress
from pathlib import Path
from typing import Annotated

import typer

from bot.cli.act import act, print_event
from bot.cli.common import ProjectOption, announcing, positional_or_old, quiet_training_libraries
from bot.core.actions import ExportModel, Train
from engine.train.recipe import DEFAULT_RECIPE, RecipeError, read_recipe
from engine.train.stack import leave_out_unneeded


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
) -> None:
    """Fine-tune on a dataset version with a recipe, here; prints where the adapter and the loss curve are."""
    action = Train(
        project=project,
        data=dataset,
        recipe=str(recipe),
        options={"model_name_or_path": base_model} if base_model else {},
        out=str(out) if out else None,
        resume=resume,
        processes=processes,
    )
    if resume is None:  # this process trains this recipe only (a resumed run's recipe is its own)
        with suppress(RecipeError):  # the core says what is wrong with it
            leave_out_unneeded(read_recipe(recipe, **action.options).recipe)
    quiet_training_libraries()  # before the training stack loads: its own bars would bury the progress lines
    with announcing(print_event) as events:
        act(action, by, events)


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
    act(ExportModel(run=run, merge=merge, out=str(out) if out else None))
