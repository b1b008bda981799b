"""Training in several processes through `accelerate launch` (DDP; on CPU over gloo).

The parent creates the run; every launched process runs `python -m engine.train.launch --run RUN`, which
continues that run. Rank 0 alone writes storage and saves the adapter, and its events come back to the parent
as JSON lines on stdout, so a front end follows a multi-process run like any other.
"""

import argparse
import json
import socket
import subprocess
import sys
from dataclasses import asdict
from datetime import datetime
from pathlib import Path

from sqlmodel import Session, col, select

from engine.data.versions import DEFAULT_DATASET, resolve_version
from engine.events import Event, EventSink, ignore_events
from engine.loop.projects import get_project
from engine.loop.runs import fail_run, worker_actor
from engine.train.distributed import DistributedError, check_distributed, deepspeed_config
from engine.train.eos import EosCheck
from engine.train.prepare import PrepareError, local_model
from engine.train.recipe import Recipe
from engine.train.sft import TrainingError, TrainOutcome, is_main_process, resume_run, start_run, train
from engine.train.start import StartRefused, start_samples
from storage.models import Adapter, Metric, Run

EVENT_PREFIX = "TUNELOOP_EVENT "


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def launch_command(run_id: int, num_processes: int, *, config_file: Path | None = None) -> list[str]:
    """The `accelerate launch` command line; `config_file` is an accelerate config (engine/train/accelerate:
    DDP, FSDP, DeepSpeed ZeRO-3), whose num_processes `--num_processes` overrides."""
    command = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(num_processes)]
    if config_file is not None:
        command += ["--config_file", str(config_file)]
    else:
        # accelerate's multi-process launcher is torchrun; on a machine without GPUs the trainer runs DDP on
        # CPU over gloo (`use_cpu`), which is how the launch path is tested.
        command += ["--multi_gpu", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    command += ["--main_process_port", str(free_port()), "-m", "engine.train.launch", "--run", str(run_id)]
    return command


def launch_training(
    session: Session,
    project: str,
    dataset_version: int | None,
    recipe: Recipe,
    *,
    num_processes: int,
    events: EventSink = ignore_events,
    dataset_name: str = DEFAULT_DATASET,
    config_file: Path | None = None,
    timeout: float | None = None,
    run_id: int | None = None,
    requested_by: str | None = None,
) -> TrainOutcome:
    """`train`, in `num_processes` processes launched by accelerate; returns rank 0's outcome from storage.

    The recipe's `distributed` (ddp, fsdp, zero3) chooses the accelerate config unless `config_file` is given.
    With `run_id`, the processes continue that run (its own recipe and dataset) from its last checkpoint."""
    project_row = get_project(session, project)
    previous = resume_run(session, run_id) if run_id is not None else None
    if previous is not None and previous.recipe:
        recipe = Recipe.model_validate(previous.recipe)  # a resumed run trains exactly what it started
    if not (recipe.model_name_or_path or project_row.base_model):
        raise TrainingError("no base model: set model_name_or_path in the recipe or the project's base model")
    try:  # before any run or process exists
        chosen = check_distributed(recipe, num_processes)
        base_model = recipe.model_name_or_path or project_row.base_model
        if previous is None:  # a resumed run goes on with the folder it started from
            base_model = local_model(base_model)  # type: ignore[arg-type]
        recipe = recipe.model_copy(update={"model_name_or_path": base_model})
        if recipe.distributed == "zero3":  # the processes read it from the run, whatever their directory
            recipe = recipe.model_copy(update={"deepspeed": str(deepspeed_config(recipe))})
    except (DistributedError, PrepareError) as error:
        raise TrainingError(str(error)) from None
    if previous is not None:
        run = previous
    else:
        version = resolve_version(session, project, dataset_name, dataset_version)
        try:
            start_samples(session, version, recipe)
        except StartRefused as error:
            raise TrainingError(str(error)) from None
        run = start_run(session, project_row, version.id, recipe, requested_by=requested_by)
        session.commit()
    assert run.id is not None
    process = subprocess.Popen(
        launch_command(run.id, num_processes, config_file=config_file or chosen),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    tail: list[str] = []
    assert process.stdout is not None
    for line in process.stdout:
        if line.startswith(EVENT_PREFIX):
            events(_event_from_json(line[len(EVENT_PREFIX) :]))
        else:
            tail = [*tail[-40:], line.rstrip()]
    code = process.wait(timeout=timeout)
    session.refresh(run)
    if code != 0 or run.state != "evaluating":  # a finished training moves on to evaluating
        detail = run.error or "\n".join(tail[-15:])
        if run.state != "failed":  # the processes died before rank 0 could say so
            fail_run(session, run.id, f"exit {code}: {detail}", actor=worker_actor())
            session.commit()
        raise TrainingError(f"the {num_processes}-process training of run {run.id} failed (exit {code}): {detail}")
    return _outcome_from_storage(session, run)


def _outcome_from_storage(session: Session, run: Run) -> TrainOutcome:
    adapter = session.exec(select(Adapter).where(Adapter.run_id == run.id)).one()
    metrics = list(session.exec(select(Metric).where(Metric.run_id == run.id).order_by(col(Metric.step))).all())
    folder = Path(adapter.path).parent
    report = json.loads((folder / "train_report.json").read_text(encoding="utf-8"))
    fields = ("what", "eot", "checked", "stopped", "problems")
    checks = [EosCheck(**{k: c[k] for k in fields}) for c in report["eos_checks"]]
    return TrainOutcome(
        run,
        adapter,
        Path(adapter.path),
        folder / "loss_curve.png",
        folder / "train_report.json",
        metrics,
        checks,
        report["warnings"],
    )


def _event_to_json(event: Event) -> str:
    data = asdict(event)
    data["time"] = event.time.isoformat()
    return json.dumps(data, ensure_ascii=False)


def _event_from_json(text: str) -> Event:
    data = json.loads(text)
    return Event(data["type"], data["project"], data["payload"], data["run"], datetime.fromisoformat(data["time"]))


def _print_event(event: Event) -> None:
    print(EVENT_PREFIX + _event_to_json(event), flush=True)


def main(argv: list[str] | None = None) -> int:
    """What each launched process runs: continue run `--run` (rank 0 records, the others only train)."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--run", type=int, required=True)
    args = parser.parse_args(argv)
    from engine.database import get_engine
    from storage.db import session_scope
    from storage.models import Project

    with session_scope(get_engine()) as session:
        run = session.get(Run, args.run)
        project = session.get(Project, run.project_id) if run else None
        if run is None or project is None:
            print(f"no run {args.run}", file=sys.stderr)
            return 2
        sink = _print_event if is_main_process() else ignore_events
        train(session, project.name, None, None, run_id=run.id, events=sink)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
