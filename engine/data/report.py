"""The data report: what went in, what came out and why, from plain inputs (no database access).

`build_report` takes the samples of a dataset version and, aligned with them, each sample's filter
rule (None = in use), reason and split. The report renders as Markdown for the chat front ends (no
tables, which Slack and Telegram do not render; a code block for the aligned numbers) and as a PNG
histogram of prompt/answer lengths; `bot.core.render_data` makes a message of it.
"""

import math
import shutil
import statistics
import subprocess
from collections import Counter
from collections.abc import Mapping, Sequence
from functools import lru_cache
from pathlib import Path

from pydantic import BaseModel, Field

from engine.data.sample import Sample

# Removals made by the split (not by the quality filter); reported with the split, not the filter.
SPLIT_RULES = frozenset({"test_leak"})
SPLIT_NAMES = ("train", "validation", "test")
MAX_EXAMPLES = 3  # reason examples kept per rule
EXAMPLE_CHARS = 80


class LengthStats(BaseModel):
    count: int = 0
    min: int = 0
    median: float = 0
    p95: int = 0
    max: int = 0
    mean: float = 0


class RuleRemovals(BaseModel):
    rule: str
    count: int
    stage: str = "filter"  # "filter" (quality rules) or "split" (test leaks)
    examples: list[str] = Field(default_factory=list)  # a few reasons, as the filter wrote them


class TagCounts(BaseModel):
    tag: str
    count_in: int
    count_out: int
    splits: dict[str, int] = Field(default_factory=dict)


class DataReport(BaseModel):
    title: str
    dataset: str | None = None
    version: str | None = None
    source_format: str | None = None
    source_encoding: str | None = None
    count_in: int
    count_filtered: int  # after the quality filter
    count_out: int  # in use: after the filter and after test-leak removal
    removals: list[RuleRemovals] = Field(default_factory=list)
    masked: dict[str, int] = Field(default_factory=dict)
    splits: dict[str, int] = Field(default_factory=dict)  # train/validation/test/leak/unassigned
    tags: list[TagCounts] = Field(default_factory=list)
    prompt_chars: LengthStats = Field(default_factory=LengthStats)
    answer_chars: LengthStats = Field(default_factory=LengthStats)
    turns: dict[int, int] = Field(default_factory=dict)  # user turns per sample → samples
    # Raw lengths of the samples in use, so the histogram can be drawn from the report alone.
    prompt_lengths: list[int] = Field(default_factory=list, repr=False)
    answer_lengths: list[int] = Field(default_factory=list, repr=False)

    @property
    def kept_ratio(self) -> float:
        return self.count_filtered / self.count_in if self.count_in else 0.0

    @property
    def headline(self) -> str:
        return f"质量过滤:{self.count_in} → {self.count_filtered} 条 ({self.kept_ratio:.1%})"

    @property
    def filter_removals(self) -> list[RuleRemovals]:
        return [r for r in self.removals if r.stage == "filter"]


def build_report(
    samples: Sequence[Sample],
    *,
    filter_rules: Sequence[str | None] | None = None,
    filter_reasons: Sequence[str | None] | None = None,
    splits: Sequence[str | None] | None = None,
    title: str = "dataset",
    dataset: str | None = None,
    version: str | None = None,
    source_format: str | None = None,
    source_encoding: str | None = None,
    masked: Mapping[str, int] | None = None,
) -> DataReport:
    """Summarise a dataset version. `filter_rules`, `filter_reasons` and `splits` are aligned with
    `samples` (one entry per sample; a rule of None means the sample is in use)."""
    n = len(samples)
    rules = list(filter_rules) if filter_rules is not None else [None] * n
    reasons = list(filter_reasons) if filter_reasons is not None else [None] * n
    assigned = list(splits) if splits is not None else [None] * n
    for name, seq in (("filter_rules", rules), ("filter_reasons", reasons), ("splits", assigned)):
        if len(seq) != n:
            raise ValueError(f"{name} has {len(seq)} entries for {n} samples; they must be aligned")

    by_rule: dict[str, RuleRemovals] = {}
    for rule, reason in zip(rules, reasons, strict=True):
        if rule is None:
            continue
        entry = by_rule.setdefault(
            rule, RuleRemovals(rule=rule, count=0, stage="split" if rule in SPLIT_RULES else "filter")
        )
        entry.count += 1
        if reason and len(entry.examples) < MAX_EXAMPLES and _one_line(reason) not in entry.examples:
            entry.examples.append(_one_line(reason))
    removals = sorted(by_rule.values(), key=lambda r: (r.stage != "filter", -r.count, r.rule))

    kept = [i for i in range(n) if rules[i] is None]
    quality_removed = sum(r.count for r in removals if r.stage == "filter")
    split_counts = Counter(assigned[i] or "unassigned" for i in kept)
    split_counts["leak"] = sum(1 for r in rules if r in SPLIT_RULES)
    split_summary = {k: split_counts[k] for k in (*SPLIT_NAMES, "leak", "unassigned") if split_counts[k]}

    tag_in: Counter[str] = Counter()
    tag_out: Counter[str] = Counter()
    tag_splits: dict[str, Counter[str]] = {}
    for i, sample in enumerate(samples):
        for tag in sample.tags or ["(无标签)"]:
            tag_in[tag] += 1
            if rules[i] is None:
                tag_out[tag] += 1
                if assigned[i]:
                    tag_splits.setdefault(tag, Counter())[assigned[i]] += 1
    tags = [
        TagCounts(
            tag=tag,
            count_in=tag_in[tag],
            count_out=tag_out[tag],
            splits={k: v for k, v in sorted(tag_splits.get(tag, Counter()).items())},
        )
        for tag in sorted(tag_in, key=lambda t: (-tag_in[t], t))
    ]

    prompt_lengths = [len(samples[i].prompt_text()) for i in kept]
    answer_lengths = [len(samples[i].answer_text()) for i in kept]
    turns = Counter(sum(1 for m in samples[i].messages if m.role == "user") for i in kept)
    return DataReport(
        title=title,
        dataset=dataset,
        version=version,
        source_format=source_format,
        source_encoding=source_encoding,
        count_in=n,
        count_filtered=n - quality_removed,
        count_out=len(kept),
        removals=removals,
        masked={k: v for k, v in sorted((masked or {}).items()) if v},
        splits=split_summary,
        tags=tags,
        prompt_chars=length_stats(prompt_lengths),
        answer_chars=length_stats(answer_lengths),
        turns=dict(sorted(turns.items())),
        prompt_lengths=prompt_lengths,
        answer_lengths=answer_lengths,
    )


def length_stats(values: Sequence[int]) -> LengthStats:
    if not values:
        return LengthStats()
    ordered = sorted(values)
    # Nearest-rank percentile: always an observed length, which reads better than 341.35 chars.
    p95 = ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]
    return LengthStats(
        count=len(ordered),
        min=ordered[0],
        median=statistics.median(ordered),
        p95=p95,
        max=ordered[-1],
        mean=round(statistics.fmean(ordered), 1),
    )


def _one_line(text: str, limit: int = EXAMPLE_CHARS) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _num(x: float) -> str:
    return f"{x:g}" if isinstance(x, float) else str(x)


SPLIT_LABELS = {
    "train": "train",
    "validation": "validation",
    "test": "test",
    "leak": "泄漏移除",
    "unassigned": "未划分",
}


def _split_line(report: DataReport) -> str:
    return " · ".join(f"{SPLIT_LABELS.get(k, k)} {v}" for k, v in report.splits.items())


def _turns_line(report: DataReport) -> str:
    return " · ".join(f"{t} 轮 {c}" for t, c in report.turns.items())


def _source_line(report: DataReport) -> str | None:
    parts = [p for p in (report.source_format, report.source_encoding) if p]
    return " · ".join(parts) if parts else None


def _length_rows(report: DataReport) -> list[tuple[str, LengthStats]]:
    return [("问题 prompt", report.prompt_chars), ("回答 answer", report.answer_chars)]


# ---- Markdown -------------------------------------------------------------------------------------


def md_escape(text: str) -> str:
    # Reasons are free text; keep them from opening code spans or bold in chat renderers. No
    # backslash escapes: Slack shows them literally. Intraword "_" is not emphasis anywhere.
    return text.replace("`", "'").replace("*", "＊")


def render_markdown(report: DataReport) -> str:
    lines = [f"**数据报告 · {md_escape(report.title)}**", "", f"**{report.headline}**"]
    if report.filter_removals:
        lines += ["", "**按规则移除**"]
        for r in report.filter_removals:
            example = f" — 例:{md_escape(r.examples[0])}" if r.examples else ""
            lines.append(f"• `{r.rule}` {r.count} 条{example}")
    if report.masked:
        lines += ["", "**脱敏** " + " · ".join(f"`{k}` {v}" for k, v in report.masked.items())]
    if report.splits:
        lines += ["", f"**划分** {_split_line(report)}"]
    lines.append(f"**可用样本** {report.count_out} 条")
    if report.tags:
        lines += ["", "**标签**"]
        for t in report.tags:
            split = " / ".join(f"{s} {t.splits[s]}" for s in SPLIT_NAMES if t.splits.get(s))
            lines.append(f"• {md_escape(t.tag)} {t.count_in} → {t.count_out}" + (f" ({split})" if split else ""))
    # Aligned numbers in a code block: monospace in Slack, Telegram and the terminal alike.
    lines += ["", "**长度(字符)**", "```", f"{'':8}{'min':>6}{'median':>8}{'p95':>6}{'max':>7}"]
    for label, s in (("prompt", report.prompt_chars), ("answer", report.answer_chars)):
        lines.append(f"{label:8}{s.min:>6}{_num(s.median):>8}{s.p95:>6}{s.max:>7}")
    lines.append("```")
    if report.turns:
        lines.append(f"**轮次** {_turns_line(report)}")
    if source := _source_line(report):
        lines.append(f"**来源** {source}")
    return "\n".join(lines) + "\n"


# ---- histogram ------------------------------------------------------------------------------------

# Families that carry Chinese glyphs, most preferred first; checked against the installed fonts.
CJK_FAMILIES = (
    "Noto Sans CJK SC",
    "Noto Sans SC",
    "Source Han Sans SC",
    "WenQuanYi Zen Hei",
    "WenQuanYi Micro Hei",
    "Microsoft YaHei",
    "PingFang SC",
    "SimHei",
    "Heiti SC",
    "Noto Serif CJK SC",
    "AR PL UMing CN",
    "Droid Sans Fallback",
)


@lru_cache(maxsize=1)
def cjk_font() -> str | None:
    """The family name of an installed font that can draw Chinese, or None (then labels are in
    English: tofu boxes are worse than a language the reader may not prefer)."""
    from matplotlib import font_manager

    installed = {f.name: f.fname for f in font_manager.fontManager.ttflist}
    for family in CJK_FAMILIES:
        if family in installed and _draws_chinese(installed[family]):
            return family
    # Matplotlib's font cache predates fonts installed later; ask fontconfig and register them.
    for path in _fontconfig_chinese_fonts():
        if not _draws_chinese(path):
            continue
        try:
            font_manager.fontManager.addfont(path)
            return font_manager.FontProperties(fname=path).get_name()
        except (OSError, RuntimeError, ValueError):
            continue
    return None


def _draws_chinese(path: str) -> bool:
    from matplotlib.ft2font import FT2Font

    try:
        return bool(FT2Font(path).get_char_index(ord("中")))
    except (OSError, RuntimeError, ValueError):  # unreadable or unsupported font file
        return False


def _fontconfig_chinese_fonts() -> list[str]:
    fc_list = shutil.which("fc-list")
    if fc_list is None:
        return []
    try:
        out = subprocess.run(
            [fc_list, ":lang=zh", "file"], capture_output=True, text=True, timeout=10, check=False
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    paths = sorted({line.split(":")[0].strip() for line in out.splitlines() if line.strip()})
    # Regular weights and sans faces first: they read best at chart sizes.
    return sorted(paths, key=lambda p: ("Regular" not in p, "Sans" not in p, p))


LABELS = {
    "zh": {
        "title": "样本长度分布(字符数)",
        "prompt": "问题",
        "answer": "回答",
        "x": "字符数",
        "y": "样本数",
        "median": "中位数",
        "empty": "无样本",
    },
    "en": {
        "title": "Sample lengths (characters)",
        "prompt": "Prompt",
        "answer": "Answer",
        "x": "characters",
        "y": "samples",
        "median": "median",
        "empty": "no samples",
    },
}


def write_length_histogram(source: DataReport | Sequence[Sample], path: str | Path) -> Path:
    """Draw prompt and answer character-length histograms side by side into a PNG at `path`."""
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and workers
    import matplotlib.pyplot as plt

    if isinstance(source, DataReport):
        prompts, answers, title = source.prompt_lengths, source.answer_lengths, source.title
    else:
        prompts = [len(s.prompt_text()) for s in source]
        answers = [len(s.answer_text()) for s in source]
        title = None
    font = cjk_font()
    labels = LABELS["zh" if font else "en"]
    rc = {"font.family": "sans-serif", "font.sans-serif": [font, "DejaVu Sans"]} if font else {}
    if title and not font and not title.isascii():
        title = None  # a Chinese title would be tofu without a CJK font

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with plt.rc_context(rc):
        fig, axes = plt.subplots(1, 2, figsize=(10, 4), dpi=100)
        try:
            for ax, values, key, color in (
                (axes[0], prompts, "prompt", "#4C72B0"),
                (axes[1], answers, "answer", "#DD8452"),
            ):
                ax.set_title(labels[key])
                ax.set_xlabel(labels["x"])
                ax.set_ylabel(labels["y"])
                if not values:
                    ax.text(0.5, 0.5, labels["empty"], ha="center", va="center", transform=ax.transAxes)
                    continue
                ax.hist(values, bins=min(40, max(5, len(set(values)))), color=color, alpha=0.85)
                stats = length_stats(values)
                ax.axvline(
                    stats.median,
                    color="black",
                    linestyle="--",
                    linewidth=1,
                    label=f"{labels['median']} {_num(stats.median)}",
                )
                ax.axvline(stats.p95, color="grey", linestyle=":", linewidth=1, label=f"p95 {stats.p95}")
                ax.legend(fontsize=8)
            fig.suptitle(f"{labels['title']} · {title}" if title else labels["title"])
            fig.tight_layout()
            fig.savefig(path, format="png")
        finally:
            plt.close(fig)
    return path
