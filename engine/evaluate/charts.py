"""The evaluation report's charts: the judge's overall scores and per-dimension means, base vs tuned.

PNGs drawn with matplotlib's Agg backend (no display on workers and in CI). Rubric dimensions are the
project's own names and may be Chinese: the labels then use an installed CJK font (`cjk_font`), or are
numbered in the order of the report's table when there is none. The training loss curve is
`engine.train.charts.write_loss_curve`.
"""

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on workers and in CI

import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from engine.data.report import cjk_font
from engine.evaluate.judge import ANSWERS, JudgeResult
from engine.evaluate.judge_prompts import SCORE_MAX, SCORE_MIN
from engine.evaluate.text import cjk_share

COLORS = {"base": "#8C8C8C", "tuned": "#4C72B0"}
BAR_WIDTH = 0.38


def _drawable(labels: Sequence[str]) -> tuple[list[str], dict[str, object]]:
    """`labels` and the matplotlib settings that draw them: Chinese ones in an installed CJK font, or, without
    one, numbered in their order (boxes in place of the characters would say nothing)."""
    if not any(cjk_share(label) for label in labels):
        return list(labels), {}
    font = cjk_font()
    if font:
        return list(labels), {"font.family": "sans-serif", "font.sans-serif": [font, "DejaVu Sans"]}
    return [f"dimension {n}" if cjk_share(label) else label for n, label in enumerate(labels, 1)], {}


@contextmanager
def _figure(path: Path, size: tuple[float, float], rc: dict[str, object]) -> Iterator[tuple[Figure, Axes]]:
    """A figure drawn with `rc`, saved to `path` as a PNG and closed."""
    with plt.rc_context(rc):
        figure, axes = plt.subplots(figsize=size, dpi=100)
        try:
            yield figure, axes
            axes.grid(axis="y", alpha=0.3)
            axes.set_axisbelow(True)
            figure.tight_layout()
            path.parent.mkdir(parents=True, exist_ok=True)
            figure.savefig(path, format="png")
        finally:
            plt.close(figure)


def _nothing_to_show(axes: Axes, text: str) -> None:
    axes.text(0.5, 0.5, text, ha="center", va="center", transform=axes.transAxes)


def score_distribution_chart(judge: JudgeResult, path: Path) -> Path:
    """A histogram of the valid overall scores, base and tuned side by side, one bin per point of the 1–5
    scale (a metric judge's fractional scores fall into the nearest point)."""
    points = list(range(SCORE_MIN, SCORE_MAX + 1))
    counts = {name: [0] * len(points) for name in ANSWERS}
    for sample in judge.samples:
        for name in ANSWERS:
            grade = getattr(sample, name)
            if grade.valid and grade.overall is not None:
                point = min(max(round(grade.overall), SCORE_MIN), SCORE_MAX)
                counts[name][point - SCORE_MIN] += 1
    with _figure(path, (7, 4), {}) as (_, axes):
        for offset, name in zip((-BAR_WIDTH / 2, BAR_WIDTH / 2), ANSWERS, strict=True):
            graded = sum(counts[name])
            axes.bar(
                [p + offset for p in points],
                counts[name],
                BAR_WIDTH,
                label=f"{name} ({graded} graded)",
                color=COLORS[name],
            )
        axes.set_xticks(points)
        axes.set_xlabel("overall score")
        axes.set_ylabel("samples")
        axes.yaxis.set_major_locator(MaxNLocator(integer=True))  # counts of samples
        axes.set_title("Overall scores, base vs tuned")
        if any(sum(c) for c in counts.values()):
            axes.legend()
        else:
            _nothing_to_show(axes, "no valid scores")
    return path


def dimension_chart(judge: JudgeResult, path: Path) -> Path:
    """Grouped bars: the mean score on each rubric dimension and overall, base vs tuned, on the 1–5 scale."""
    dimensions = [*judge.rubric, "overall"]
    labels, rc = _drawable(dimensions)
    with _figure(path, (max(6.0, 1.3 * len(dimensions) + 2), 4), rc) as (_, axes):
        for offset, name in zip((-BAR_WIDTH / 2, BAR_WIDTH / 2), ANSWERS, strict=True):
            means = judge.means.get(name, {})
            values = [means.get(d) for d in dimensions]
            axes.bar(
                [i + offset for i in range(len(dimensions))],
                [float("nan") if v is None else v for v in values],  # no bar for a mean that could not be computed
                BAR_WIDTH,
                label=name,
                color=COLORS[name],
            )
        axes.set_xticks(range(len(dimensions)), labels)
        axes.set_ylim(0, SCORE_MAX + 0.3)
        axes.set_ylabel(f"mean score ({SCORE_MIN}–{SCORE_MAX})")
        axes.set_title("Mean score per dimension, base vs tuned")
        if any(judge.graded.get(name) for name in ANSWERS):
            axes.legend()
        else:
            _nothing_to_show(axes, "no valid scores")
    return path
