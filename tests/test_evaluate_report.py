"""The evaluation report: files written atomically, an HTML page that needs nothing from the network, user
text (Chinese, `<script>`, pipes, backticks) shown as text and intact, a failed gate's reasons in every
face, the metric judge named as such, and sections that were not measured saying so. Every input is built
without a model."""

import base64
import io
import re
import warnings
from dataclasses import replace
from datetime import UTC, datetime
from html import escape
from pathlib import Path

import pytest
from PIL import Image

from engine.evaluate import charts
from engine.evaluate.agreement import JudgeAgreement, ReviewedJudgement, judge_agreement
from engine.evaluate.charts import dimension_chart
from engine.evaluate.forgetting import Probe, forgetting_report
from engine.evaluate.gate import GateInputs, decide
from engine.evaluate.judge import Judgement, JudgeResult, SampleJudgement, aggregate
from engine.evaluate.judge_prompts import DEFAULT_RUBRIC, PROMPT_VERSION
from engine.evaluate.metric_judge import METRIC_JUDGE_TITLE, metric_judge
from engine.evaluate.reference import reference_metrics
from engine.evaluate.report import ReportInputs, render_html, render_markdown, write_report
from engine.evaluate.results import (
    ForgettingReport,
    Generation,
    GenerationSettings,
    PassStats,
    PromptStability,
    StabilityReport,
)
from engine.evaluate.stability import STABILITY_SETTINGS
from engine.evaluate.weakest import judge_scores, weakest_samples
from engine.llm import Usage
from engine.loop.reviews import IterationComparison
from storage.models import Metric
from tests.evaluation_data import generated_sample

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SCRIPT_QUESTION = "<script>alert('x')</script> 订单 `TL01` | 到哪了？"
SAMPLES = [
    generated_sample(
        0, "耳机坏了能退吗？", "签收七天内可以无理由退货。", "不能退。", "可以，七天内申请退货。", ["退货"]
    ),
    generated_sample(1, "退货运费谁出？", "质量问题由商家承担运费。", "你自己出。", "买家承担运费。", ["退货"]),
    generated_sample(2, SCRIPT_QUESTION, "已发货，预计明天送达。", "不知道。", "已发货。", ["物流"]),
    generated_sample(
        3, "How do I reset my password?", "Use the Forgot password link.", "Call us.", "Use the link.", []
    ),
]
TUNED_OVERALL = {0: 4, 1: 2, 2: 3, 3: 5}  # 退货 mean 3.0, 物流 3.0, untagged 5.0; tuned mean 3.5


def grade(subject: str, overall: int | None, reason: str = "没有说明退货期限") -> Judgement:
    valid = overall is not None
    return Judgement(
        kind="grade",
        subject=subject,
        model="judge-model",
        prompt_version=PROMPT_VERSION,
        valid=valid,
        invalid_reason=None if valid else "not_json",
        reason=reason if valid else None,
        scores=dict.fromkeys(DEFAULT_RUBRIC, overall) if valid else None,
        overall=overall,
    )


def pair(preferred: str) -> tuple[Judgement, Judgement]:
    return tuple(  # type: ignore[return-value]
        Judgement("pairwise", order, "judge-model", PROMPT_VERSION, valid=True, preferred=preferred)
        for order in ("base_first", "tuned_first")
    )


def llm_judge() -> JudgeResult:
    """Tuned grades TUNED_OVERALL, base grades 2 (one invalid), the tuned answer preferred 3 times of 4."""
    samples = [
        SampleJudgement(
            s.index,
            s.question,
            s.reference,
            s.tags,
            base=grade("base", None if s.index == 3 else 2),
            tuned=grade("tuned", TUNED_OVERALL[s.index]),
            pair=pair("base" if s.index == 1 else "tuned"),
        )
        for s in SAMPLES
    ]
    usage = Usage(requests=16, prompt_tokens=9000, completion_tokens=800, cost_usd=0.0123, priced=True, retries=1)
    return aggregate(
        JudgeResult("judge-model", PROMPT_VERSION, dict(DEFAULT_RUBRIC), samples, usage, "json_schema", 3.2)
    )


def stability_pair() -> tuple[StabilityReport, StabilityReport]:
    def report(agreement: float) -> StabilityReport:
        prompts = [
            PromptStability(0, "耳机坏了能退吗？", ["可以。", "可以退。", "不行。"], agreement, 0.0, 3),
            PromptStability(1, SCRIPT_QUESTION, ["已发货。"] * 3, 1.0, 1.0, 1),
        ]
        return StabilityReport(
            prompts,
            STABILITY_SETTINGS,
            k=3,
            seed=0,
            mean_agreement=(agreement + 1) / 2,
            mean_exact_share=0.5,
            least_stable=prompts,
        )

    return report(0.9), report(0.41)


def forgetting() -> ForgettingReport:
    probes = [
        Probe("zh-arith-1", "zh", "7加5等于多少？", ["12", "十二"]),
        Probe("en-capital-1", "en", "What is the capital of Italy?", ["Rome"]),
    ]
    return forgetting_report(probes, ["答案是十二。", "Rome."], ["答案是十三。", "It is Rome."])


def agreement() -> JudgeAgreement:
    reviews = [ReviewedJudgement(n, f"问题{n}", 4.5, "keep", "李医生") for n in range(1, 5)]
    reviews.append(ReviewedJudgement(7, "退货运费谁出？", 4.0, "fix", "王律师"))  # the judge was too kind
    return judge_agreement(reviews)


def llm_inputs(**changes: object) -> ReportInputs:
    judge = llm_judge()
    scores, reasons = judge_scores(judge)
    inputs = ReportInputs(
        project="customer_service",
        run_id=7,
        iteration=2,
        judge_kind="llm",
        judge=judge,
        generation=Generation(list(SAMPLES), GenerationSettings(), PassStats(4, 80, 2.0, 4), PassStats(4, 60, 1.5, 4)),
        metrics=reference_metrics(SAMPLES),
        gate=decide(GateInputs.from_judge(judge, forgetting_drop=0.0)),
        weakest=weakest_samples(SAMPLES, scores, reasons),
        loss_metrics=[
            Metric(run_id=7, step=s, loss=2.0 / s, eval_loss=2.2 / s if s % 5 == 0 else None) for s in range(1, 21)
        ],
        created_at=datetime(2025, 3, 1, 9, 30, tzinfo=UTC),
    )
    return replace(inputs, **changes)


def metric_inputs() -> ReportInputs:
    metrics = reference_metrics(SAMPLES)
    judge = metric_judge(SAMPLES, metrics)
    scores, reasons = judge_scores(judge)
    return replace(
        llm_inputs(),
        judge_kind="metric",
        judge=judge,
        metrics=metrics,
        gate=decide(GateInputs.from_judge(judge, judge_kind="metric")),
        weakest=weakest_samples(SAMPLES, scores, reasons),
    )


def is_png(data: bytes) -> bool:
    if not data.startswith(PNG_MAGIC):
        return False
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        return image.size[0] > 100 and image.size[1] > 100


def test_write_report_writes_markdown_html_and_charts(tmp_path: Path) -> None:
    files = write_report(llm_inputs(stability=stability_pair(), forgetting=forgetting()), tmp_path / "eval")
    assert files.markdown == tmp_path / "eval" / "report.md" and files.html == tmp_path / "eval" / "report.html"
    assert set(files.charts) == {"scores", "dimensions", "loss"}
    assert all(is_png(path.read_bytes()) for path in files.charts.values())
    markdown = files.markdown.read_text(encoding="utf-8")
    for name, path in files.charts.items():
        assert f"]({path.relative_to(files.markdown.parent).as_posix()})" in markdown, name
    # written through temporary files renamed into place: none is left behind
    assert sorted(p.name for p in (tmp_path / "eval").rglob("*") if p.is_file()) == [
        "dimensions.png",
        "loss.png",
        "report.html",
        "report.md",
        "scores.png",
    ]
    # without training metrics there is no loss chart, and the report still says what it shows
    again = write_report(llm_inputs(loss_metrics=()), tmp_path / "no-loss")
    assert set(again.charts) == {"scores", "dimensions"}


def test_html_is_self_contained_with_real_embedded_pngs(tmp_path: Path) -> None:
    files = write_report(llm_inputs(), tmp_path)
    html = files.html.read_text(encoding="utf-8")
    assert '<meta charset="utf-8">' in html
    assert "http://" not in html and "https://" not in html and "url(" not in html
    sources = re.findall(r'src="([^"]*)"', html)
    assert len(sources) == 3 and all(s.startswith("data:image/png;base64,") for s in sources)
    assert all(is_png(base64.b64decode(s.removeprefix("data:image/png;base64,"), validate=True)) for s in sources)
    assert "<link" not in html and "@import" not in html


def test_user_text_is_shown_as_text_never_as_markup() -> None:
    inputs = llm_inputs(stability=stability_pair())
    html = render_html(inputs, {})
    assert "<script" not in html
    assert escape(SCRIPT_QUESTION) in html  # the whole question, as text
    markdown = render_markdown(inputs)
    # outside code fences, no raw "<" and every table row has as many cells as its header
    outside = re.sub(r"^(`{3,})text\n.*?\n\1$", "", markdown, flags=re.S | re.M)
    assert not re.search(r"(?<!\\)<", outside) and "\\<script\\>" in outside
    for table in re.findall(r"(?:^\|.*\|$\n?)+", outside, flags=re.M):
        rows = table.strip().splitlines()
        cells = [len(re.findall(r"(?<!\\)\|", row)) for row in rows]
        assert len(set(cells)) == 1, rows
    # inside the weakest-sample section the question is fenced whole, backticks and all
    assert f"```text\n{SCRIPT_QUESTION}\n```" in markdown


def test_chinese_text_and_weak_sub_scenarios_appear_intact(tmp_path: Path) -> None:
    inputs = llm_inputs()
    files = write_report(inputs, tmp_path)
    markdown, html = files.markdown.read_text(encoding="utf-8"), files.html.read_text(encoding="utf-8")
    weak_line = "退货 questions: mean 3.0 over 2 samples, 1 below 4.0"
    for text in (markdown, html):
        assert weak_line in text
        assert "物流 questions: mean 3.0 over 1 sample, 1 below 4.0" in text
        assert "untagged questions" not in text  # 5.0: not weak
    for text in (markdown, html):
        assert "耳机坏了能退吗？" in text and "签收七天内可以无理由退货。" in text and "没有说明退货期限" in text
    assert '<pre lang="zh">耳机坏了能退吗？</pre>' in html
    # the weakest sample first: sample 1 (score 2) of 退货, with both answers
    section = markdown.split("## Weakest samples", 1)[1]
    assert section.index("#1, score 2.00") < section.index("#0, score 4.00") < section.index("#2, score 3.00")
    assert "```text\n你自己出。\n```" in section and "```text\n买家承担运费。\n```" in section


def test_a_failed_gate_gives_its_reasons_in_every_face() -> None:
    inputs = llm_inputs()
    assert not inputs.gate.passed and len(inputs.gate.reasons) == 2  # overall 3.5 < 4.0, invalid 6.2% > 5%
    markdown, html = render_markdown(inputs), render_html(inputs, {})
    for reason in inputs.gate.reasons:
        assert reason in markdown and escape(reason) in html
    assert "| overall | 3.50 | \\>= 4.00 | failed |" in markdown
    measured = {"base_overall_mean": 2.0, "forgetting_drop": 0.0}
    passed = llm_inputs(gate=decide(GateInputs(overall_mean=4.5, win_rate=0.75, invalid_rate=0.0, **measured)))
    assert "Why it failed" not in render_markdown(passed)


def test_llm_judge_numbers() -> None:
    markdown = render_markdown(llm_inputs())
    assert "Judge: judge-model, prompt version judge-v2" in markdown
    assert "| overall | 2.00 | 3.50 | +1.50 |" in markdown
    assert "won 3 (75.0%), lost 1 (25.0%), tied 0 (0.0%)" in markdown
    assert "Position consistency: 100.0%" in markdown
    assert "Invalid judgements: 1 of 16 (6.2%)" in markdown and "- not\\_json: 1" in markdown
    assert "Judge requests: 16 (1 retry), 9800 tokens (9000 prompt, 800 completion), cost $0.0123" in markdown
    assert "| base | 4 | 80 | 40.0 | 0.500 | 4 of 4 |" in markdown  # tokens/s and mean latency per model
    assert "| Perplexity of the reference (lower is better) | not computed | not computed |" in markdown
    with_perplexity = reference_metrics(SAMPLES)
    with_perplexity.base["perplexity"], with_perplexity.tuned["perplexity"] = 12.5, 8.25
    assert "| 12.50 | 8.25 | -4.25 |" in render_markdown(llm_inputs(metrics=with_perplexity))


def test_metric_judge_is_named_and_pairwise_not_measured() -> None:
    inputs = metric_inputs()
    markdown, html = render_markdown(inputs), render_html(inputs, {})
    title, first_line = markdown.splitlines()[0], markdown.splitlines()[2]
    assert title == "# Evaluation of customer\\_service run 7 (iteration 2), scored by the metric judge"
    assert first_line.startswith("Metric judge (no LLM judge configured)")
    assert escape(METRIC_JUDGE_TITLE) in html
    assert "scored by the metric judge</title>" in html
    assert "Pairwise win/loss/tie rate and position consistency: not measured" in markdown
    assert "judge-model" not in markdown
    assert "| rouge\\_l |" in markdown and "| chrf |" in markdown  # the metric judge's dimensions


def test_sections_not_measured_are_stated_and_measured_ones_shown() -> None:
    bare = render_markdown(llm_inputs())
    assert "Forgetting was not measured" in bare
    assert "Reviews of the judge's scores are not recorded yet" in bare
    assert "Stability was not measured" in bare

    inputs = llm_inputs(stability=stability_pair(), forgetting=forgetting(), agreement=agreement())
    full = render_markdown(inputs)
    assert "| base | 0.950 | 50.0% |" in full and "| tuned | 0.705 | 50.0% |" in full
    assert "| 耳机坏了能退吗？ | 0.410 | 0.900 | 3 of 3 |" in full  # least stable, tuned beside base
    assert "| zh | 100.0% | 0.0% |" in full and "| en | 100.0% | 100.0% |" in full
    assert "Drop: 50.0% of the base model's probe score." in full
    assert "| zh-arith-1 | zh | 7加5等于多少？ | 12 / 十二 | 答案是十三。 | 答案是十二。 |" in full
    line = "The judge agreed with reviewers on 4 of 5 reviewed samples (80%); it was too kind on 1."
    assert line in full and "| 退货运费谁出？ | 4.0 | fix | 王律师 |" in full


def test_a_judge_without_any_valid_grade_still_reports(tmp_path: Path) -> None:
    judge = llm_judge()
    for sample in judge.samples:
        sample.base, sample.tuned = grade("base", None), grade("tuned", None)
    judge = aggregate(judge)
    inputs = llm_inputs(judge=judge, gate=decide(GateInputs.from_judge(judge)), weakest=weakest_samples(SAMPLES, {}))
    files = write_report(inputs, tmp_path)
    markdown = files.markdown.read_text(encoding="utf-8")
    assert "| overall | n/a | n/a | n/a |" in markdown and "no overall score could be computed" in markdown
    assert "Not ranked, without a valid score: 4 samples." in markdown
    assert all(is_png(path.read_bytes()) for path in files.charts.values())


def test_chinese_rubric_dimensions_are_drawn_without_missing_glyphs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dimensions = {"准确性": "accuracy", "完整性": "completeness"}
    judge = llm_judge()
    for sample in judge.samples:
        for g in (sample.base, sample.tuned):
            if g.valid:
                g.scores = dict.fromkeys(dimensions, g.overall)
    judge = aggregate(replace(judge, rubric=dimensions))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # matplotlib warns of every glyph its font lacks
        assert is_png(dimension_chart(judge, tmp_path / "installed-fonts.png").read_bytes())
        monkeypatch.setattr(charts, "cjk_font", lambda: None)
        assert is_png(dimension_chart(judge, tmp_path / "no-cjk-font.png").read_bytes())
    assert "| 准确性 | 2.00 | 3.50 | +1.50 |" in render_markdown(llm_inputs(judge=judge))


def test_the_report_compares_iteration_k_with_k_minus_1(tmp_path: Path) -> None:
    comparison = IterationComparison(
        run_id=7,
        iteration=2,
        parent_run_id=5,
        parent_iteration=1,
        overall=(3.0, 3.5),
        win_rate=(0.5, 0.75),
        invalid_rate=(0.1, 0.0625),
        chrf=(30.0, 41.0),
        gate_passed=(False, False),
        tags={"退货": (2.5, 3.0), "物流": (3.0, 3.0)},
    )
    inputs = llm_inputs(comparison=comparison)
    files = write_report(inputs, tmp_path)
    markdown, html = files.markdown.read_text(encoding="utf-8"), files.html.read_text(encoding="utf-8")
    assert "## Compared with iteration 1" in markdown and "<h2>Compared with iteration 1</h2>" in html
    for line in ("overall 3.0 → 3.5 (+0.5)", "win rate 50% → 75% (+25 pts)", "退货: 2.5 → 3.0 (+0.5)"):
        assert f"- {line}" in markdown and f">{escape(line)}</li>" in html
    # the first iteration has nothing to compare with, and says nothing about it
    first = llm_inputs()
    assert "Compared with iteration" not in render_markdown(first)
