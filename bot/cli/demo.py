"""`tuneloop demo`: the loop as far as it goes today, on the bundled example."""

from pathlib import Path
from typing import Annotated

import typer

from bot.cli.common import console, fail
from bot.cli.data import data_export, data_filter, data_import, data_report, data_split
from bot.cli.evaluate import eval_command
from bot.cli.model import model_tiny
from bot.cli.train import train_command
from engine.data.export import EXPORT_FORMATS

DEMO_RECIPE = Path(__file__).resolve().parents[2] / "examples" / "recipes" / "tiny_demo.yaml"


def demo(
    data: Annotated[Path, typer.Option(help="The example dataset.")] = Path("examples/customer_service.jsonl"),
    out: Annotated[Path, typer.Option(help="Where exports and reports go.")] = Path("demo-out"),
    project: str = "customer_service",
    train: Annotated[bool, typer.Option(help="Build the tiny model and train a LoRA adapter on it.")] = True,
    recipe: Annotated[Path, typer.Option(help="The training recipe.")] = DEMO_RECIPE,
) -> None:
    """Run the loop as far as it goes today on the bundled example: import, filter, split, export, report,
    then build a tiny model locally, train a LoRA adapter on the train split and evaluate it against its base."""
    if not data.exists():
        fail(f"{data} does not exist; build it with `python examples/build_customer_service.py`")
    console.rule(f"tuneloop demo: {project}")
    data_import(data, project)
    data_filter(project)
    data_split(project)
    for fmt in EXPORT_FORMATS:
        for split in ("train", "test"):
            data_export(project, fmt, out / fmt / split, split=split)
    data_report(project, markdown=out / "report.md", histogram=out / "lengths.png")
    if train:
        console.rule("training")
        model = out / "tiny-model"
        # A small base trained briefly on the train split (never the test split) in every weight, then the
        # adapter: a random model is no base, and cannot learn to answer and stop within a demo's minute.
        train_file = next((out / "openai" / "train").glob("*.jsonl"))
        model_tiny(out=model, data=train_file, hidden_size=128, pretrain_epochs=2)
        run = train_command(
            project=project, dataset="latest", recipe=recipe, base_model=str(model), out=None, resume=None
        )
        console.rule("evaluation")
        # The metric judge unless an LLM judge endpoint is configured; the report says which judged.
        eval_command(run=run, max_new_tokens=64, stability_prompts=4, weakest=5)
