"""Training observability: every logging step becomes a `Metric` row and a progress event.

Rows are keyed by (run, step) and updated in place, so the steps a resumed run repeats after a crash
overwrite what the killed process wrote instead of duplicating it.
"""

import itertools
import time
from collections.abc import Sequence
from typing import Any

from sqlmodel import Session, col, select
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from engine.events import Event, EventSink, progress_event
from storage.models import Metric

# Trainer log keys → Metric columns.
_COLUMNS = {
    "loss": "loss",
    "eval_loss": "eval_loss",
    "learning_rate": "learning_rate",
    "grad_norm": "grad_norm",
    "epoch": "epoch",
}


def record_metric(session: Session, run_id: int, step: int, values: dict[str, Any]) -> Metric:
    """Insert or update the run's row for `step` with the given columns (None values leave a column as is)."""
    row = session.exec(select(Metric).where(Metric.run_id == run_id, Metric.step == step)).first()
    if row is None:
        row = Metric(run_id=run_id, step=step)
    for key, value in values.items():
        if value is not None:
            setattr(row, key, float(value))
    session.add(row)
    session.commit()  # visible at once to whoever follows the run, and kept if the process dies
    return row


def run_metrics(session: Session, run_id: int) -> list[Metric]:
    return list(session.exec(select(Metric).where(Metric.run_id == run_id).order_by(col(Metric.step))).all())


def overfitting_warning(metrics: Sequence[Metric], window: int = 2) -> str | None:
    """A warning when validation loss rose over its last `window` evaluations while training loss fell."""
    evals = [m for m in metrics if m.eval_loss is not None]
    if len(evals) < window + 1:
        return None
    recent = evals[-(window + 1) :]
    rising = all(b.eval_loss > a.eval_loss for a, b in itertools.pairwise(recent))  # type: ignore[operator]
    first, last = recent[0].step, recent[-1].step
    train = [m.loss for m in metrics if m.loss is not None and first <= m.step <= last]
    falling = len(train) >= 2 and train[-1] < train[0]
    if not (rising and falling):
        return None
    return (
        f"possible overfitting: validation loss rose from {recent[0].eval_loss:.4f} (step {first}) to "
        f"{recent[-1].eval_loss:.4f} (step {last}) while training loss fell from {train[0]:.4f} to {train[-1]:.4f}"
    )


class MetricsCallback(TrainerCallback):
    """Writes the trainer's logs to storage and announces them; only the main process writes. A second phase of
    a run (DPO after SFT) counts its steps on from `step_offset`, the first phase's last step."""

    def __init__(self, session: Session, run_id: int, project: str, events: EventSink, step_offset: int = 0) -> None:
        self.step_offset = step_offset
        self.session = session
        self.run_id = run_id
        self.project = project
        self.events = events
        self._last: tuple[float, int] | None = None  # (time, tokens seen) at the previous training log
        self._started: tuple[float, int] | None = None  # (time, step) when this process started training

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **_: Any) -> None:
        now = time.monotonic()
        self._started = (now, state.global_step)
        self._last = (now, state.num_input_tokens_seen or 0)

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, Any] | None = None,
        **_: Any,
    ) -> None:
        if not state.is_world_process_zero or not logs:
            return
        values = {column: logs.get(key) for key, column in _COLUMNS.items()}
        if not any(values[k] is not None for k in ("loss", "eval_loss")):
            return  # the end-of-training summary; its figures are averages, not a step's
        now = time.monotonic()
        if "loss" in logs and self._last is not None:
            # Real (non-padding) tokens since the previous log, over the wall time since then.
            seen = state.num_input_tokens_seen or 0
            elapsed = now - self._last[0]
            if elapsed > 0 and seen > self._last[1]:
                values["tokens_per_second"] = (seen - self._last[1]) / elapsed
            self._last = (now, seen)
        if self._started is not None and state.global_step > self._started[1]:
            per_step = (now - self._started[0]) / (state.global_step - self._started[1])
            values["eta_seconds"] = per_step * max(0, state.max_steps - state.global_step)
        step, total = self.step_offset + state.global_step, self.step_offset + state.max_steps
        record_metric(self.session, self.run_id, step, values)
        shown = {k: round(v, 6) for k, v in values.items() if v is not None}
        self.events(progress_event(self.project, "train", step, total, run=self.run_id, **shown))


def warning_event(project: str, run_id: int, message: str) -> Event:
    return Event("warning", project, {"stage": "train", "message": message}, run=run_id)
