"""`tuneloop model`: base models built locally (nothing is downloaded)."""

from pathlib import Path
from typing import Annotated

import typer

from bot.cli.common import console, fail, quiet_training_libraries

app = typer.Typer(help="Base models built locally, for tests, the demo and trying the loop out.", no_args_is_help=True)


@app.command("tiny")
def model_tiny(
    out: Annotated[Path, typer.Option(help="Folder to write the model and tokenizer into.")],
    data: Annotated[
        Path | None, typer.Option(help="Dataset whose text trains the tokenizer (default: the example).")
    ] = None,
    vocab_size: Annotated[int | None, typer.Option(help="Tokenizer vocabulary size (default 4000).")] = None,
    hidden_size: Annotated[int | None, typer.Option(help="Model width (default 64).")] = None,
    layers: Annotated[int | None, typer.Option(help="Number of transformer layers (default 2).")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of the random initialisation (default 0).")] = None,
    pretrain_epochs: Annotated[
        float, typer.Option(min=0, help="Train all weights on the dataset's conversations first (a usable base).")
    ] = 0.0,
) -> None:
    """Build a small Qwen2-style model with a BPE tokenizer trained on a dataset's text and a ChatML template."""
    # torch and transformers load only here, so that every other command starts at once.
    quiet_training_libraries()
    from engine.train.tiny import TinyModelError, build_tiny_from_dataset, tiny_spec

    try:
        spec = tiny_spec(vocab_size=vocab_size, hidden_size=hidden_size, layers=layers, seed=seed)
    except TinyModelError as error:  # only the width can be wrong
        fail(f"--hidden-size: {error}")
    try:
        built = build_tiny_from_dataset(out, data, spec, pretrain_epochs=pretrain_epochs)
    except TinyModelError as error:
        fail(str(error))
    pretrained = f", pretrained {pretrain_epochs:g} epoch(s) on {built.conversations} conversations"
    console.print(
        f"tiny model in {built.path}: qwen2, {built.layers} layers, width {built.width}, "
        f"vocabulary {built.vocabulary} (tokenizer trained on {built.data.name}), ChatML template"
        + (pretrained if pretrain_epochs else "")
    )
