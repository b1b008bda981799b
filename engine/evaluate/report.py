"""The evaluation report: what a reviewer reads before keeping, fixing or deploying a tuned model.

One content, two faces (the chat faces render the evaluation from its database row, bot/core/render.py):

    report.md     Markdown, for the artifact store and anything that renders Markdown
    report.html   one self-contained page: inline CSS, the charts as base64 PNGs, no external URL at all,
                  so it opens offline, from an attachment or from a mail

The report is built once as a list of plain-text blocks (`_blocks`), and each renderer escapes every text
as it writes it: questions, answers, tags, reasons and the project name are user data, often Chinese, and
may contain anything (`<script>`, pipes, backticks). In Markdown, short texts are backslash-escaped and
kept on one line, long texts go in a code fence longer than any backtick run inside them; in HTML every
text is HTML-escaped.
"""

import base64
import math
import os
import re
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from html import escape
from pathlib import Path
from typing import Literal

from engine.evaluate.agreement import JudgeAgreement
from engine.evaluate.charts import dimension_chart, score_distribution_chart
from engine.evaluate.gate import GateDecision
from engine.evaluate.judge import JudgeResult
from engine.evaluate.metric_judge import METRIC_JUDGE_TITLE
from engine.evaluate.results import ForgettingReport, Generation, PassStats, ReferenceMetrics, StabilityReport
from engine.evaluate.text import language_of
from engine.evaluate.trained_on import TrainedOn
from engine.evaluate.weakest import WeakestReport, shorten
from engine.loop.reviews import IterationComparison
from engine.train.charts import write_loss_curve
from storage.models import Metric

CHARTS_DIR = "charts"
CHART_CAPTIONS = {
    "scores": "Overall scores, base vs tuned",
    "dimensions": "Mean score per dimension, base vs tuned",
    "loss": "Training loss",
}
CELL_CHARS = 120  # a question or an answer shortened to a table cell
PERCENT_CHECKS = frozenset({"win_rate", "invalid_rate", "forgetting"})
# Reference metrics: key, label, how a value is shown.
REFERENCE_ROWS: tuple[tuple[str, str, str], ...] = (
    ("rouge_l", "ROUGE-L F1 (0–1)", "{:.3f}"),
    ("bleu", "BLEU (0–100)", "{:.1f}"),
    ("chrf", "chrF (0–100)", "{:.1f}"),
    ("exact_match", "Exact match", "{:.1%}"),
    ("perplexity", "Perplexity of the reference (lower is better)", "{:.2f}"),
)
NOT_AVAILABLE = "n/a"


@dataclass
class ReportInputs:
    project: str
    run_id: int
    iteration: int
    judge_kind: Literal["llm", "metric"]
    judge: JudgeResult
    generation: Generation  # latency and tokens/s per model
    metrics: ReferenceMetrics  # base and tuned means (+ perplexity when computed)
    gate: GateDecision
    weakest: WeakestReport
    stability: tuple[StabilityReport, StabilityReport] | None = None  # (base, tuned)
    forgetting: ForgettingReport | None = None
    agreement: JudgeAgreement | None = None
    loss_metrics: Sequence[Metric] = ()  # the run's training metrics
    created_at: datetime | None = None
    comparison: IterationComparison | None = None  # this evaluation beside the parent run's (iteration k-1)
    # The test questions the run trained on, left out of everything above, and their scores apart
    trained_on: TrainedOn | None = None
    trained_judge: JudgeResult | None = None


@dataclass
class ReportFiles:
    markdown: Path
    html: Path
    charts: dict[str, Path]  # "scores", "dimensions", and "loss" when there were training metrics


# --- blocks: the report's content as plain text ----------------------------------------------------


@dataclass
class _Heading:
    level: int
    text: str


@dataclass
class _Para:
    text: str
    tone: str | None = None  # "passed" | "failed": how the HTML colours it


@dataclass
class _Items:
    items: list[str]


@dataclass
class _Table:
    header: list[str]
    rows: list[list[str]]
    align: str  # one letter per column: "l" or "r"


@dataclass
class _Text:
    """A long user text (a question, an answer), shown whole and as written."""

    label: str
    text: str


@dataclass
class _Chart:
    name: str


_Block = _Heading | _Para | _Items | _Table | _Text | _Chart


def report_title(inputs: ReportInputs) -> str:
    title = f"Evaluation of {inputs.project} run {inputs.run_id} (iteration {inputs.iteration})"
    return f"{title}, scored by the metric judge" if inputs.judge_kind == "metric" else title


def _judge_line(inputs: ReportInputs) -> str:
    if inputs.judge_kind == "metric":
        return f"{METRIC_JUDGE_TITLE}."
    judge = inputs.judge
    return f"Judge: {judge.model}, prompt version {judge.prompt_version}, rubric: {', '.join(judge.rubric)}."


def _value(value: float | None, form: str = "{:.2f}") -> str:
    if value is None or not math.isfinite(value):  # a perplexity over no tokens is NaN
        return NOT_AVAILABLE
    return form.format(value)


def _share(value: float | None) -> str:
    return _value(value, "{:.1%}")


def _change(base: float | None, tuned: float | None, form: str = "{:+.2f}") -> str:
    if base is None or tuned is None:
        return NOT_AVAILABLE
    return _value(tuned - base, form)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _gate_blocks(gate: GateDecision) -> list[_Block]:
    rows = []
    for check in gate.checks:
        form = "{:.1%}" if check.name in PERCENT_CHECKS else "{:.2f}"
        rule = f"{check.op} {_value(check.threshold, form)}" if check.threshold is not None else "not checked"
        rows.append([check.name, _value(check.value, form), rule, check.status.replace("_", " "), check.message])
    blocks: list[_Block] = [
        _Heading(2, "Gate"),
        _Para(gate.headline, "passed" if gate.passed else "failed"),
        _Table(["Check", "Value", "Required", "Status", "Why"], rows, "lrrll"),
    ]
    if gate.reasons:
        blocks += [_Para("Why it failed:"), _Items(list(gate.reasons))]
    if gate.notes:
        blocks += [_Para("Notes:"), _Items(list(gate.notes))]
    return blocks


def _trained_blocks(inputs: ReportInputs) -> list[_Block]:
    """Which test questions the run trained on, said apart from the gate's numbers, with their own scores."""
    trained, judge = inputs.trained_on, inputs.trained_judge
    if trained is None or judge is None:
        return []
    unseen = len(inputs.judge.samples)
    head = (
        f"The gate, the judge's scores and the reference metrics of this report are over the "
        f"{_count(unseen, 'test question')} the run did not train on."
        if unseen
        else "The run trained on every one of its test questions: none is left unseen, so the gate cannot pass."
    )
    kinds = []
    if trained.preference:
        kinds.append(
            f"Trained on as preference pairs: {_count(len(trained.preference), 'test question')}, "
            "not used for the gate."
        )
    if trained.sft:
        kinds.append(
            f"Trained on as SFT samples (fixed test samples a review added to train): "
            f"{_count(len(trained.sft), 'test question')}, not used for the gate."
        )
    tuned, base = judge.means.get("tuned", {}).get("overall"), judge.means.get("base", {}).get("overall")
    scores = (
        f"On those questions (memorised, not a measure of skill): tuned overall {_value(tuned)}, base {_value(base)}"
    )
    scores += f", win rate {_share(judge.win_rate)}." if judge.pairs else "."
    return [_Heading(2, "Test questions the run trained on"), _Para(head), _Items(kinds), _Para(scores)]


def _comparison_blocks(comparison: IterationComparison | None) -> list[_Block]:
    if comparison is None:
        return []
    return [
        _Heading(2, f"Compared with iteration {comparison.parent_iteration}"),
        _Para(
            f"The tuned model of run {comparison.run_id} against run {comparison.parent_run_id}'s, "
            "each on its own run's test split (reviews may have improved the references in between)."
        ),
        _Items(comparison.lines),
    ]


def _judge_blocks(inputs: ReportInputs) -> list[_Block]:
    judge = inputs.judge
    base, tuned = judge.means.get("base", {}), judge.means.get("tuned", {})
    rows = [
        [d, _value(base.get(d)), _value(tuned.get(d)), _change(base.get(d), tuned.get(d))]
        for d in [*judge.rubric, "overall"]
    ]
    samples = len(judge.samples)
    blocks: list[_Block] = [
        _Heading(2, "Judge"),
        _Para("Mean scores (1–5) over the valid grades of each model's answers."),
        _Table(["Dimension", "Base", "Tuned", "Change"], rows, "lrrr"),
        _Para(
            f"Valid grades: base {judge.graded.get('base', 0)} of {samples}, "
            f"tuned {judge.graded.get('tuned', 0)} of {samples}."
        ),
    ]
    if inputs.judge_kind == "metric":
        return [
            *blocks,
            _Para(
                "Pairwise win/loss/tie rate and position consistency: not measured "
                "(the metric judge does not compare answers)."
            ),
            _Para("Invalid judgements: not measured (the metric judge makes no judgement that could be invalid)."),
            _Para("Judge requests: none (the scores are computed from the reference metrics)."),
        ]
    if judge.pairs:
        blocks.append(
            _Para(
                f"Pairwise, tuned vs base (a win or a loss only when both orders agree), over "
                f"{_count(judge.pairs, 'pair')}: won {judge.wins} ({_share(judge.win_rate)}), "
                f"lost {judge.losses} ({_share(judge.loss_rate)}), tied {judge.ties} ({_share(judge.tie_rate)}). "
                f"Position consistency: {_share(judge.position_consistency)} of pairs got the same verdict "
                "in both orders."
            )
        )
    elif any(s.pair is not None for s in judge.samples):
        blocks.append(_Para("Pairwise: no comparison could be judged in both orders (every pair had an invalid one)."))
    else:
        blocks.append(_Para("Pairwise: not run for this evaluation."))
    blocks.append(_Para(f"Invalid judgements: {judge.invalid} of {judge.judgements} ({_share(judge.invalid_rate)})."))
    if judge.invalid_reasons:
        blocks.append(_Items([f"{reason}: {n}" for reason, n in judge.invalid_reasons.items()]))
    usage = judge.usage
    cost = f"${judge.cost_usd:.4f}" if judge.cost_usd is not None else "unknown (no price configured for the model)"
    blocks.append(
        _Para(
            f"Judge requests: {usage.requests} ({_count(usage.retries, 'retry')}), {usage.tokens} tokens "
            f"({usage.prompt_tokens} prompt, {usage.completion_tokens} completion), cost {cost}, "
            f"{judge.seconds:.1f} s."
        )
    )
    return blocks


def _reference_blocks(metrics: ReferenceMetrics) -> list[_Block]:
    if not metrics.base and not metrics.tuned:
        return [_Heading(2, "Reference metrics"), _Para("No reference metrics: there were no samples.")]
    rows = []
    for key, label, form in REFERENCE_ROWS:
        base, tuned = metrics.base.get(key), metrics.tuned.get(key)
        if key == "perplexity" and base is None and tuned is None:
            rows.append([label, "not computed", "not computed", NOT_AVAILABLE])
            continue
        rows.append([label, _value(base, form), _value(tuned, form), _change(base, tuned, form.replace("{:", "{:+"))])
    return [
        _Heading(2, "Reference metrics"),
        _Para("Each answer against the sample's reference answer, mean over the samples."),
        _Table(["Metric", "Base", "Tuned", "Change"], rows, "lrrr"),
    ]


def _generation_blocks(generation: Generation) -> list[_Block]:
    settings = generation.settings

    def row(name: str, stats: PassStats) -> list[str]:
        latency = stats.seconds / stats.samples if stats.samples else None
        return [
            name,
            str(stats.samples),
            str(stats.tokens),
            _value(stats.tokens_per_second, "{:.1f}"),
            _value(latency, "{:.3f}"),
            f"{stats.stopped} of {stats.samples}",
        ]

    decoding = (
        f"Sampling at temperature {settings.temperature}, top_p {settings.top_p} (seed {settings.seed})"
        if settings.do_sample
        else "Greedy decoding"
    )
    return [
        _Heading(2, "Generation"),
        _Para(
            f"{decoding}, at most {settings.max_new_tokens} new tokens, batches of {settings.batch_size}. "
            "A sample's latency is its share of its batch's wall time."
        ),
        _Table(
            ["Model", "Samples", "Tokens", "Tokens/s", "Mean latency (s)", "Ended at end of turn"],
            [row("base", generation.base), row("tuned", generation.tuned)],
            "lrrrrr",
        ),
    ]


def _stability_blocks(stability: tuple[StabilityReport, StabilityReport] | None) -> list[_Block]:
    heading = _Heading(2, "Stability")
    if stability is None:
        return [heading, _Para("Stability was not measured.")]
    base, tuned = stability
    settings = tuned.settings
    blocks: list[_Block] = [
        heading,
        _Para(
            f"The same question asked {tuned.k} times (sampling at temperature {settings.temperature}, top_p "
            f"{settings.top_p}, seed {tuned.seed}) over {_count(len(tuned.prompts), 'prompt')}; agreement is "
            "the mean ROUGE-L between the answers (1.0: always the same answer)."
        ),
        _Table(
            ["Model", "Mean agreement", "Identical answer pairs"],
            [
                ["base", _value(base.mean_agreement, "{:.3f}"), _share(base.mean_exact_share)],
                ["tuned", _value(tuned.mean_agreement, "{:.3f}"), _share(tuned.mean_exact_share)],
            ],
            "lrr",
        ),
    ]
    if tuned.least_stable:
        base_by_index = {p.index: p for p in base.prompts}
        rows = []
        for prompt in tuned.least_stable:
            on_base = base_by_index.get(prompt.index)
            rows.append(
                [
                    shorten(prompt.question, CELL_CHARS),
                    _value(prompt.agreement, "{:.3f}"),
                    _value(on_base.agreement if on_base else None, "{:.3f}"),
                    f"{prompt.distinct} of {len(prompt.answers)}",
                ]
            )
        blocks += [
            _Para("The tuned model's least stable prompts:"),
            _Table(["Question", "Tuned agreement", "Base agreement", "Different answers (tuned)"], rows, "lrrr"),
        ]
    return blocks


def _forgetting_blocks(forgetting: ForgettingReport | None) -> list[_Block]:
    heading = _Heading(2, "Forgetting")
    if forgetting is None:
        return [heading, _Para("Forgetting was not measured (no general-ability probe ran).")]
    rows = [[language, _share(base), _share(tuned)] for language, (base, tuned) in forgetting.by_language.items()]
    rows.append(["all", _share(forgetting.base_score), _share(forgetting.tuned_score)])
    drop = (
        f"Drop: {_share(forgetting.drop)} of the base model's probe score."
        if forgetting.drop is not None
        else "Drop: cannot be computed (the base model passed no probe)."
    )
    blocks: list[_Block] = [
        heading,
        _Para(f"General-ability probes passed, over {_count(len(forgetting.probes), 'probe')}."),
        _Table(["Language", "Base", "Tuned"], rows, "lrr"),
        _Para(drop),
        _Para(forgetting.note),
    ]
    if forgetting.lost:
        blocks += [
            _Para(f"Probes the base model passed and the tuned model failed ({len(forgetting.lost)}):"),
            _Table(
                ["Probe", "Language", "Question", "Accepted", "Tuned answer", "Base answer"],
                [
                    [
                        p.id,
                        p.language,
                        shorten(p.question, CELL_CHARS),
                        shorten(" / ".join(p.accepted), CELL_CHARS),
                        shorten(p.tuned_answer, CELL_CHARS),
                        shorten(p.base_answer, CELL_CHARS),
                    ]
                    for p in forgetting.lost
                ],
                "llllll",
            ),
        ]
    else:
        blocks.append(_Para("No probe the base model passed was failed by the tuned model."))
    if forgetting.gained:
        blocks.append(_Para(f"Probes the tuned model passed and the base model failed: {len(forgetting.gained)}."))
    return blocks


def _agreement_blocks(agreement: JudgeAgreement | None) -> list[_Block]:
    heading = _Heading(2, "Judge trust")
    if agreement is None:
        return [
            heading,
            _Para("Reviews of the judge's scores are not recorded yet: its agreement with people is unknown."),
        ]
    blocks: list[_Block] = [heading, _Para(agreement.line)]
    if agreement.disagreements:
        blocks += [
            _Para("Where reviewers disagreed with the judge:"),
            _Table(
                ["Question", "Judge's score", "Reviewer's verdict", "Reviewer"],
                [
                    [shorten(d.question, CELL_CHARS), _value(d.overall, "{:.1f}"), d.verdict, d.reviewer]
                    for d in agreement.disagreements
                ],
                "lrll",
            ),
        ]
    return blocks


def _weakest_blocks(weakest: WeakestReport) -> list[_Block]:
    threshold = _value(weakest.threshold, "{:.1f}")
    blocks: list[_Block] = [
        _Heading(2, "Weakest samples"),
        _Para(f"The {len(weakest.weakest)} lowest-scoring of {weakest.scored} scored samples (threshold {threshold})."),
    ]
    if weakest.unscored:
        blocks.append(_Para(f"Not ranked, without a valid score: {_count(len(weakest.unscored), 'sample')}."))
    if weakest.summary:
        blocks += [_Para("Where the model is weak:"), _Items(list(weakest.summary))]
    elif weakest.tags:
        blocks.append(_Para(f"No sub-scenario averages below {threshold}."))
    for tag, group in weakest.groups.items():
        blocks.append(_Heading(3, tag))
        for sample in group:
            blocks.append(_Heading(4, f"#{sample.index}, score {_value(sample.score)}"))
            if len(sample.tags) > 1:
                blocks.append(_Para(f"Tags: {', '.join(sample.tags)}"))
            blocks.append(_Para(f"Judge's reason: {sample.reason}" if sample.reason else "The judge gave no reason."))
            blocks += [
                _Text("Question", sample.question),
                _Text("Reference", sample.reference),
                _Text("Base answer", sample.base_answer),
                _Text("Tuned answer", sample.tuned_answer),
            ]
    return blocks


def _blocks(inputs: ReportInputs, charts: Sequence[str]) -> list[_Block]:
    first = [_Heading(1, report_title(inputs)), _Para(_judge_line(inputs))]
    if inputs.created_at is not None:
        first.append(_Para(f"Created {inputs.created_at:%Y-%m-%d %H:%M} {inputs.created_at.tzname() or 'UTC'}."))
    shown = [name for name in CHART_CAPTIONS if name in charts]
    return [
        *first,
        *_gate_blocks(inputs.gate),
        *_trained_blocks(inputs),
        *_comparison_blocks(inputs.comparison),
        *_judge_blocks(inputs),
        *_reference_blocks(inputs.metrics),
        *_generation_blocks(inputs.generation),
        *_stability_blocks(inputs.stability),
        *_forgetting_blocks(inputs.forgetting),
        *_agreement_blocks(inputs.agreement),
        *_weakest_blocks(inputs.weakest),
        _Heading(2, "Charts"),
        *([_Chart(name) for name in shown] or [_Para("No charts were drawn.")]),
    ]


# --- Markdown --------------------------------------------------------------------------------------

# CommonMark lets any ASCII punctuation be backslash-escaped; these are the ones that can open markup in
# a line of running text or a table cell (an HTML tag, an entity, a link, a code span, emphasis, a cell).
_MD_SPECIAL = re.compile(r"([\\`*\[\]<>&|_~])")


def _md_inline(text: str) -> str:
    """One line of text that no Markdown renderer reads as markup."""
    return _MD_SPECIAL.sub(r"\\\1", " ".join(text.split()))


def _md_fence(text: str) -> str:
    """A code fence around `text`, longer than any backtick run inside it, so the text cannot close it."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}text\n{text.rstrip()}\n{fence}"


def _md_table(table: _Table) -> list[str]:
    def row(cells: Sequence[str]) -> str:
        return "| " + " | ".join(_md_inline(c) or " " for c in cells) + " |"

    rule = "| " + " | ".join("--:" if a == "r" else ":--" for a in table.align) + " |"
    return [row(table.header), rule, *(row(r) for r in table.rows)]


def render_markdown(inputs: ReportInputs, charts: Mapping[str, str] | None = None) -> str:
    """The report as Markdown; `charts` maps a chart's name to its link, relative to the Markdown file."""
    charts = charts or {}
    parts: list[str] = []
    for block in _blocks(inputs, list(charts)):
        match block:
            case _Heading(level, text):
                parts.append(f"{'#' * level} {_md_inline(text)}")
            case _Para(text):
                parts.append(_md_inline(text))
            case _Items(items):
                parts.append("\n".join(f"- {_md_inline(item)}" for item in items))
            case _Table():
                parts.append("\n".join(_md_table(block)))
            case _Text(label, text):
                parts.append(f"**{label}**\n\n{_md_fence(text)}" if text.strip() else f"**{label}**: (empty)")
            case _Chart(name):
                link = charts[name].replace(" ", "%20").replace(")", "%29")
                parts.append(f"![{CHART_CAPTIONS[name]}]({link})")
    return "\n\n".join(parts) + "\n"


# --- HTML ------------------------------------------------------------------------------------------

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", "Noto Sans", "PingFang SC", "Hiragino Sans GB",
  "Microsoft YaHei", "Noto Sans CJK SC", sans-serif; max-width: 60rem; margin: 2rem auto; padding: 0 1rem;
  line-height: 1.5; color: #222; }
h1 { font-size: 1.6rem; } h2 { border-bottom: 1px solid #ddd; padding-bottom: .2rem; margin-top: 2rem; }
table { border-collapse: collapse; margin: .5rem 0 1rem; }
th, td { border: 1px solid #ccc; padding: .25rem .5rem; vertical-align: top; overflow-wrap: anywhere; }
th { background: #f4f4f4; } td.r, th.r { text-align: right; }
p.passed { color: #1a7f37; font-weight: 600; } p.failed { color: #cf222e; font-weight: 600; }
.label { font-weight: 600; margin-top: .5rem; }
pre { white-space: pre-wrap; overflow-wrap: anywhere; background: #f6f8fa; padding: .5rem; margin: .2rem 0; }
figure { margin: 1rem 0; } img { max-width: 100%; } figcaption { color: #555; }
"""


def _lang(text: str) -> str:
    """Chinese text marked as such, so browsers pick Chinese glyphs for characters shared with Japanese."""
    return ' lang="zh"' if language_of(text) == "zh" else ""


def _html_table(table: _Table) -> str:
    def cells(tag: str, row: Sequence[str]) -> str:
        return "".join(
            f'<{tag} class="{a}"{_lang(c)}>{escape(c)}</{tag}>' for a, c in zip(table.align, row, strict=True)
        )

    body = "".join(f"<tr>{cells('td', row)}</tr>" for row in table.rows)
    return f"<table><thead><tr>{cells('th', table.header)}</tr></thead><tbody>{body}</tbody></table>"


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def render_html(inputs: ReportInputs, charts: Mapping[str, Path]) -> str:
    """The report as one self-contained HTML page, the chart PNGs (name -> file) embedded."""
    parts: list[str] = []
    for block in _blocks(inputs, list(charts)):
        match block:
            case _Heading(level, text):
                parts.append(f"<h{level}{_lang(text)}>{escape(text)}</h{level}>")
            case _Para(text, tone):
                css = f' class="{tone}"' if tone else ""
                parts.append(f"<p{css}{_lang(text)}>{escape(text)}</p>")
            case _Items(items):
                parts.append("<ul>" + "".join(f"<li{_lang(i)}>{escape(i)}</li>" for i in items) + "</ul>")
            case _Table():
                parts.append(_html_table(block))
            case _Text(label, text):
                parts.append(f'<div class="label">{escape(label)}</div><pre{_lang(text)}>{escape(text)}</pre>')
            case _Chart(name):
                caption = escape(CHART_CAPTIONS[name])
                parts.append(
                    f'<figure><img alt="{caption}" src="{_data_uri(charts[name])}">'
                    f"<figcaption>{caption}</figcaption></figure>"
                )
    body = "\n".join(parts)
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{escape(report_title(inputs))}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n{body}\n</body>\n</html>\n"
    )


# --- files -----------------------------------------------------------------------------------------


def _write_atomically(path: Path, write: Callable[[Path], object]) -> Path:
    """`write` into a temporary file beside `path`, then rename it over `path`: a reader never sees half a file."""
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        write(temporary)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return path


def write_report(inputs: ReportInputs, out_dir: Path) -> ReportFiles:
    """Write report.md, report.html and charts/*.png into `out_dir`, each atomically."""
    out_dir = Path(out_dir)
    chart_dir = out_dir / CHARTS_DIR
    chart_dir.mkdir(parents=True, exist_ok=True)
    drawers: dict[str, Callable[[Path], object]] = {
        "scores": partial(score_distribution_chart, inputs.judge),
        "dimensions": partial(dimension_chart, inputs.judge),
    }
    if inputs.loss_metrics:
        drawers["loss"] = lambda path: write_loss_curve(
            inputs.loss_metrics, path, f"Training loss, run {inputs.run_id}"
        )
    charts = {name: _write_atomically(chart_dir / f"{name}.png", draw) for name, draw in drawers.items()}
    links = {name: f"{CHARTS_DIR}/{path.name}" for name, path in charts.items()}
    markdown = _write_atomically(
        out_dir / "report.md", lambda path: path.write_text(render_markdown(inputs, links), encoding="utf-8")
    )
    html = _write_atomically(
        out_dir / "report.html", lambda path: path.write_text(render_html(inputs, charts), encoding="utf-8")
    )
    return ReportFiles(markdown=markdown, html=html, charts=charts)
