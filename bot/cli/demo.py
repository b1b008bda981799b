"""`tuneloop demo`: the loop as far as it goes today, on the bundled example."""

from pathlib import Path
from typing import Annotated

import typer
from sqlmodel import select

from bot.cli.common import console, fail, open_session
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
    then build a tiny model locally, train a LoRA adapter on the train split, evaluate it against its base, deploy it to
    `tuneloop serve` and ask it a question by the project's name."""
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
        console.rule("serving")
        test_file = next((out / "openai" / "test").glob("*.jsonl"))
        serve_and_ask(project, run, model, test_file, out)


def serve_and_ask(project: str, run: int, model: Path, questions: Path, out: Path) -> None:
    """Serve the tiny base with `tuneloop serve`, promote the run's adapter onto it, and ask the project's stable
    name a test question with the OpenAI client, through the gateway that resolves the name."""
    from openai import OpenAI

    from engine.data.formats import load_file
    from engine.database import get_engine
    from engine.serve.adapters import DeployError
    from engine.serve.deploy import deploy_run
    from engine.serve.local import start_local_gateway, start_local_server
    from storage.models import Adapter

    with open_session() as session:
        rank = session.exec(select(Adapter.rank).where(Adapter.run_id == run)).first() or 16
    rank_flag = ["--max-lora-rank", str(rank)]
    server = start_local_server(model, out / "serve.log", args=rank_flag)
    try:
        console.print(f"tuneloop serve is up at {server.url} with {model}")
        with open_session() as session:
            try:
                # The fragment tells the pre-check the server's --max-lora-rank, which vLLM does not report.
                outcome = deploy_run(session, run, "demo", servers=[f"{server.url}#max-lora-rank={rank}"])
            except DeployError as error:
                fail(str(error))
        if not outcome.ok:
            fail(outcome.message)
        console.print(outcome.message, highlight=False)
        gateway = start_local_gateway([server.url], get_engine())
        try:
            sample = next(sample for _, sample in load_file(questions).samples)
            prompt = [m.model_dump(exclude_none=True) for m in sample.messages[: sample.last_assistant_index()]]
            reply = OpenAI(base_url=gateway.base_url, api_key="demo").chat.completions.create(
                model=project, messages=prompt, max_tokens=64, temperature=0
            )
            console.print(f"asked {reply.model} through the gateway: {prompt[-1]['content']}", highlight=False)
            console.print(f"the deployed adapter answered: {reply.choices[0].message.content}", highlight=False)
            console.print(f"the reference answer:          {sample.answer_text()}", highlight=False)
        finally:
            gateway.stop()
    finally:
        server.stop()
