"""Stopping a training whose worker is shutting down, after it saves a checkpoint to resume from.

Kept apart from the job functions: it needs transformers, which a worker loads only when it trains."""

import threading
from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments


class WorkerStopping(RuntimeError):
    """The worker stopped the stage; the job runs again and training resumes from its last checkpoint."""


class StopOnShutdown(TrainerCallback):
    """Once `stop` is set: save a checkpoint at the end of the current step, then raise WorkerStopping."""

    def __init__(self, stop: threading.Event) -> None:
        self.stop = stop

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **_: Any
    ) -> TrainerControl:
        if self.stop.is_set():
            control.should_save = True
        return control

    def on_save(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **_: Any) -> None:
        if self.stop.is_set():
            raise WorkerStopping(f"the worker stopped at step {state.global_step}; the job runs again from there")
