"""The loss curve of a run, for its report."""

from collections.abc import Sequence
from pathlib import Path

from storage.models import Metric


def write_loss_curve(metrics: Sequence[Metric], path: Path, title: str = "loss") -> Path:
    """A PNG of training loss and, when there is one, validation loss against the step."""
    train = [(m.step, m.loss) for m in metrics if m.loss is not None]
    validation = [(m.step, m.eval_loss) for m in metrics if m.eval_loss is not None]
    import matplotlib  # a third of a second: loaded once there is a curve to draw, not before the first step

    matplotlib.use("Agg")  # no display on workers and in CI
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4), dpi=100)
    try:
        if train:
            axes.plot(*zip(*train, strict=True), label="train", color="tab:blue")
        if validation:
            axes.plot(*zip(*validation, strict=True), label="validation", color="tab:orange", marker="o")
        axes.set_xlabel("step")
        axes.set_ylabel("loss")
        axes.set_title(title)
        axes.grid(alpha=0.3)
        if train or validation:
            axes.legend()
        path.parent.mkdir(parents=True, exist_ok=True)
        figure.tight_layout()
        figure.savefig(path, format="png")
    finally:
        plt.close(figure)
    return path
