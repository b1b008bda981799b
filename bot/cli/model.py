"""`tuneloop model`: base models built locally (nothing is downloaded)."""

from pathlib import Path
from typing import Annotated

import typer

from bot.cli.common import console, fail, quiet_training_libraries
from engine.data.formats import load_file

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
    from transformers import AutoConfig

    from engine.train.tiny import EXAMPLE_DATASET, TinySpec, build_tiny_model, pretrain_tiny_model, sample_texts

    data = data or EXAMPLE_DATASET
    if not data.exists():
        fail(f"{data} does not exist")
    if hidden_size is not None and (hidden_size % 4 or hidden_size < 8):
        fail("--hidden-size must be a multiple of 4 (4 attention heads), at least 8")
    samples = [sample for _, sample in load_file(data).samples]
    texts = list(sample_texts(samples))
    if not texts:
        fail(f"{data} holds no text to train a tokenizer on")
    shape = {"vocab_size": vocab_size, "num_hidden_layers": layers, "seed": seed}
    if hidden_size is not None:
        shape |= {"hidden_size": hidden_size, "intermediate_size": 3 * hidden_size}
    spec = TinySpec(**{key: value for key, value in shape.items() if value is not None})
    build_tiny_model(out, texts, spec)
    if pretrain_epochs:
        pretrain_tiny_model(out, samples, pretrain_epochs)
    config = AutoConfig.from_pretrained(out)
    console.print(
        f"tiny model in {out}: qwen2, {config.num_hidden_layers} layers, width {config.hidden_size}, "
        f"vocabulary {config.vocab_size} (tokenizer trained on {data.name}), ChatML template"
        + (f", pretrained {pretrain_epochs:g} epoch(s) on {len(samples)} conversations" if pretrain_epochs else "")
    )
