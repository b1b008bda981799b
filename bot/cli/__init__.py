"""The terminal face of tuneloop: the same command grammar the chat front ends speak.

Each command group lives in its own module; this one only assembles them."""

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
