import pytest

from bot.core.render_data import data_report_message
from engine.data import report as report_module
from engine.data.report import (
    DataReport,
    build_report,
    length_stats,
    render_markdown,
    write_length_histogram,
)
from engine.data.sample import Sample

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def qa(question: str, answer: str, tag: str, *, turns: int = 1) -> Sample:
    messages = [{"role": "system", "content": "你是客服助手。"}]
    for k in range(turns):
        messages += [
            {"role": "user", "content": f"{question}（第{k + 1}问）"},
            {"role": "assistant", "content": answer},
        ]
    return Sample(messages=messages, tags=[tag])


@pytest.fixture()
def report() -> DataReport:
    samples = [
        qa(f"订单TL2603{i:02d}的退货怎么办理？" * (1 + i % 3), "请在订单页申请售后。" * (1 + i % 4), "退货")
        for i in range(8)
    ]
    samples += [qa(f"物流单号SF{i:06d}到哪了？", "已为您催件，预计明天送达。", "物流", turns=2) for i in range(4)]
    rules = [None] * len(samples)
    reasons: list[str | None] = [None] * len(samples)
    rules[1], reasons[1] = "pii_phone", "手机号 138****5678 出现在用户消息中"
    rules[2], reasons[2] = "exact_duplicate", "与第 1 条完全相同"
    rules[3], reasons[3] = "exact_duplicate", "与第 5 条完全相同"
    rules[9], reasons[9] = "test_leak", "test sample near-duplicates training sample #10 (similarity 0.95)"
    splits = [None if r else "train" for r in rules]
    splits[0], splits[11] = "test", "validation"
    return build_report(
        samples,
        filter_rules=rules,
        filter_reasons=reasons,
        splits=splits,
        title="customer_service v3",
        source_format="jsonl",
        source_encoding="utf-8",
        masked={"email": 2, "phone": 0},
    )


def test_counts_by_stage(report: DataReport) -> None:
    assert (report.count_in, report.count_filtered, report.count_out) == (12, 9, 8)
    assert report.headline == "质量过滤:12 → 9 条 (75.0%)"
    assert [(r.rule, r.count, r.stage) for r in report.removals] == [
        ("exact_duplicate", 2, "filter"),
        ("pii_phone", 1, "filter"),
        ("test_leak", 1, "split"),
    ]
    assert report.removals[0].examples == ["与第 1 条完全相同", "与第 5 条完全相同"]
    assert report.splits == {"train": 6, "validation": 1, "test": 1, "leak": 1}
    assert report.masked == {"email": 2}  # zero counts are noise
    assert {t.tag: (t.count_in, t.count_out) for t in report.tags} == {"退货": (8, 5), "物流": (4, 3)}
    assert report.turns == {1: 5, 2: 3}
    assert report.answer_chars.count == 8


def test_report_round_trips_through_json(report: DataReport) -> None:
    assert DataReport.model_validate_json(report.model_dump_json()) == report


def test_length_stats() -> None:
    s = length_stats(list(range(1, 101)))
    assert (s.min, s.median, s.p95, s.max) == (1, 50.5, 95, 100)
    assert length_stats([]).count == 0


def test_misaligned_inputs_are_rejected() -> None:
    with pytest.raises(ValueError, match="aligned"):
        build_report([qa("问", "答", "x")], filter_rules=[None, None])


def test_markdown_has_headline_rules_and_numbers(report: DataReport) -> None:
    md = render_markdown(report)
    assert "质量过滤:12 → 9 条 (75.0%)" in md
    for rule in ("exact_duplicate", "pii_phone"):
        assert f"`{rule}`" in md
    assert "与第 1 条完全相同" in md
    assert "train 6" in md and "泄漏移除 1" in md
    assert "`email` 2" in md
    assert "退货 8 → 5" in md
    assert "|" not in md  # no tables: Slack and Telegram do not render them
    assert md.count("```") == 2


@pytest.mark.parametrize(
    ("language", "headline", "split"),
    [("en", "Quality filter: 12 → 9 samples (75.0%).", "train 6"), ("zh", "质量过滤：12 → 9 条（75.0%）。", "训练 6")],
)
def test_the_report_as_a_message(report: DataReport, language: str, headline: str, split: str) -> None:
    message = data_report_message(report, language)
    text = message.text
    assert message.lines[0] == headline and split in text
    removed = {row[0]: row for row in message.tables[0].rows}
    assert set(removed) == {"exact_duplicate", "pii_phone"}
    assert "手机号 138****5678 出现在用户消息中" in removed["pii_phone"][2]
    assert "jsonl · utf-8" in text


def test_empty_dataset_renders() -> None:
    empty = build_report([], title="empty")
    assert "0 → 0" in render_markdown(empty)
    assert "0 → 0" in data_report_message(empty, "en").lines[0]


@pytest.mark.parametrize("font", ["detected", None])
def test_histogram_is_a_png(report: DataReport, tmp_path, monkeypatch, font) -> None:
    if font is None:  # the English fallback, as on a machine without a CJK font
        monkeypatch.setattr(report_module, "cjk_font", lambda: None)
    path = write_length_histogram(report, tmp_path / "charts" / "lengths.png")
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    assert len(data) > 5_000


def test_histogram_from_samples(tmp_path) -> None:
    samples = [qa("问题" * i, "回答" * (i + 1), "x") for i in range(1, 30)]
    data = write_length_histogram(samples, tmp_path / "h.png").read_bytes()
    assert data[:8] == PNG_MAGIC
