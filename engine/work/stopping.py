"""Stopping a training whose worker is shutting down, after it saves a checkpoint to resume from.

Kept apart from the job functions: it needs transformers, which a worker loads only when it trains."""

import threading
from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from engine.loop.runs import StageStopped


class WorkerStopping(StageStopped):
    """The worker stopped the training; the job runs again and training resumes from its last checkpoint."""


class StopOnShutdown(TrainerCallback):
    """Once `stop` is set: save a checkpoint at the end of the current step, then raise WorkerStopping. Once `lost`
    is set (another worker resumes this training now): raise at once, saving nothing into its checkpoints."""

    def __init__(self, stop: threading.Event, lost: threading.Event | None = None) -> None:
        self.stop = stop
        self.lost = lost or threading.Event()

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **_: Any
    ) -> TrainerControl:
        if self.lost.is_set():
            raise WorkerStopping(f"the job was given to another worker; this one stopped at step {state.global_step}")
        if self.stop.is_set():
            control.should_save = True
        return control

    def on_save(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **_: Any) -> None:
        if self.stop.is_set():
            raise WorkerStopping(f"the worker stopped at step {state.global_step}; the job runs again from there")
