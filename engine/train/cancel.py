"""Stopping a training run that was cancelled (engine/loop/runs.py `cancel_run`) at its next step.

Kept apart from engine/loop/runs.py, which the terminal loads for every command: this one needs transformers."""

from typing import Any

import torch
from sqlalchemy.engine import Engine
from sqlmodel import Session, select
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from storage.models import Run


class CancelCallback(TrainerCallback):
    """Stops training once the run is cancelled, saving a checkpoint first.

    Reads the run's state every `every` optimizer steps on its own short connection (one primary-key read, small
    beside a training step). Under a multi-process launch every process reads and they agree (any process that saw
    the cancellation stops them all), so no process waits for the others forever."""

    def __init__(self, run_id: int, engine: Engine, every: int = 1) -> None:
        self.run_id, self.engine, self.every = run_id, engine, max(1, every)
        self.cancelled = False

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **_: Any
    ) -> TrainerControl:
        if state.global_step % self.every:
            return control
        with Session(self.engine) as session:
            seen = session.exec(select(Run.state).where(Run.id == self.run_id)).one() == "cancelled"
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            flag = torch.tensor([int(seen)], device=args.device)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
            seen = bool(flag.item())
        if seen:
            self.cancelled = True
            control.should_save = True
            control.should_training_stop = True
        return control
