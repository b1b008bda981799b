"""The terminal face of tuneloop: the same command grammar the chat front ends speak.

Each command group lives in its own module; this one only assembles them. A command is one of two kinds, and
`bot/cli` holds only their argument parsing and terminal rendering:

- Actions of the core: what a person does, the same whichever face they use. The command builds a typed action
  (`bot.core.actions`) from its options and hands it to `act`, which performs it as the person at the keyboard
  (`--by`, else the OS user) and prints the core's messages; who may, the rules, the words (English and Chinese)
  and the refusals are the core's. These are: `project`, `data`, `submit`, `runs`, `run show`, `approve`,
  `cancel`, `retry`, `review`, `retrain`, `request-approval`, `chat`, `deploy`, `rollback`, `deployments`, and the
  ones that do their work here, in this process, which the core keeps to the terminal (a chat is told the
  command): `train`, `eval`, `export`, `serve sync`, `reconcile`. The first three show the engine's events as they
  come and announce them on the stream, as a worker would.
- Launchers, which start a process or a server, build files, or watch: `worker`, `serve`, `gateway`,
  `bot slack|telegram`, `db upgrade`, `model tiny`, `follow`, `demo`. Nobody does these in a chat: they are how
  the operator runs tuneloop, not a step of the loop, so they are not actions and have no permissions of their own
  (the machine's). Their options are checked here as arguments (a token's form, a key, a folder); their work is
  the engine's (the worker, the servers, the tiny model, the database's migrations) or the core's (the bots run
  a Core; `follow` words events with the core's renderer; `demo` plays its people through `act`)."""

import typer

from bot.cli import (
    chatbots,
    data,
    db,
    demo,
    deploy,
    evaluate,
    follow,
    gateway,
    model,
    project,
    runs,
    serve,
    synth,
    train,
    work,
)

app = typer.Typer(
    help="tuneloop: the fine-tuning loop as one conversation.", no_args_is_help=True, add_completion=False
)
app.add_typer(db.app, name="db")
app.add_typer(chatbots.app, name="bot")
app.add_typer(project.app, name="project")
data.app.command("synth")(synth.synth)
app.add_typer(data.app, name="data")
app.command("demo")(demo.demo)
app.add_typer(model.app, name="model")
app.command("train")(train.train_command)
app.command("export")(train.export_command)
app.command("eval")(evaluate.eval_command)
app.command("follow")(follow.follow_command)
app.command("gateway")(gateway.gateway_command)
app.command("deploy")(deploy.deploy_command)
app.command("rollback")(deploy.rollback_command)
app.command("deployments")(deploy.deployments_command)
app.command("runs")(runs.runs_command)
runs.app.command("show")(runs.show_command)
app.add_typer(runs.app, name="run")
app.command("approve")(runs.approve_command)
app.command("cancel")(runs.cancel_command)
app.command("retry")(runs.retry_command)
app.command("review")(runs.review_command)
app.command("retrain")(runs.retrain_command)
app.command("request-approval")(runs.request_approval_command)
app.command("chat")(runs.chat_command)
serve.app.command("sync")(deploy.sync_command)
app.add_typer(serve.app, name="serve")
app.command("worker")(work.worker_command)
app.command("submit")(work.submit_command)
app.command("reconcile")(work.reconcile_command)
