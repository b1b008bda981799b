import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from engine.data.sample import Sample

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "examples" / "build_customer_service.py"
COMMITTED = ROOT / "examples" / "customer_service.jsonl"
TAGS = {"退货", "换货", "物流", "发票", "投诉", "优惠券", "支付"}
FLAWS = {
    "exact_duplicate",
    "near_duplicate",
    "phone",
    "id_card",
    "bank_card",
    "email",
    "api_key",
    "empty_answer",
    "answer_copies_prompt",
    "repetitive_answer",
    "too_long",
    "too_short",
}


def build(out: Path, *extra: str) -> bytes:
    subprocess.run([sys.executable, str(SCRIPT), "--out", str(out), *extra], check=True, capture_output=True)
    return out.read_bytes()


@pytest.fixture(scope="module")
def records() -> list[dict]:
    return [json.loads(line) for line in COMMITTED.read_text(encoding="utf-8").splitlines()]


def test_generator_is_deterministic_and_matches_the_committed_file(tmp_path: Path) -> None:
    first = build(tmp_path / "a.jsonl")
    assert first == build(tmp_path / "b.jsonl")
    assert first == COMMITTED.read_bytes(), "run `python examples/build_customer_service.py` to refresh"
    assert build(tmp_path / "c.jsonl", "--seed", "7") != first


def test_records_are_valid_samples_with_tags(records: list[dict]) -> None:
    assert len(records) >= 500
    for r in records:
        assert set(r) <= {"messages", "tags", "flaw"}
        Sample(messages=r["messages"], tags=r["tags"])  # validates roles and shape
        assert r["messages"][0]["role"] == "system"
    clean = Counter(r["tags"][0] for r in records if "flaw" not in r)
    assert set(clean) == TAGS
    assert min(clean.values()) >= 50
    assert any(len(r["messages"]) > 3 for r in records)  # multi-turn conversations too


def test_every_intended_flaw_is_planted_and_marked(records: list[dict]) -> None:
    flaws = Counter(r["flaw"] for r in records if "flaw" in r)
    assert set(flaws) == FLAWS
    by_flaw = {f: [r for r in records if r.get("flaw") == f] for f in flaws}
    answers = {f: [r["messages"][-1]["content"] for r in rs] for f, rs in by_flaw.items()}
    everything = {f: json.dumps(rs, ensure_ascii=False) for f, rs in by_flaw.items()}
    assert "13812345678" in everything["phone"]
    assert "@example.com" in everything["email"]
    assert "sk-" in everything["api_key"]
    assert any(not a.strip() for a in answers["empty_answer"])
    assert all(len(a) > 16_000 for a in answers["too_long"])
    assert all(len(a) < 2 for a in answers["too_short"])
    for r in by_flaw["answer_copies_prompt"]:
        assert r["messages"][-1]["content"] == r["messages"][-2]["content"]


def test_planted_id_card_and_bank_card_pass_their_checksums(records: list[dict]) -> None:
    import re

    text = json.dumps([r for r in records if r.get("flaw") in ("id_card", "bank_card")], ensure_ascii=False)
    (id_card,) = re.findall(r"(?<!\d)\d{17}[\dX](?!\d)", text)
    weights = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2]
    assert "10X98765432"[sum(int(d) * w for d, w in zip(id_card, weights, strict=False)) % 11] == id_card[-1]
    (card,) = re.findall(r"(?<!\d)622\d{16}(?!\d)", text)
    digits = [int(d) for d in reversed(card)]
    total = sum(d if i % 2 == 0 else (d * 2 - 9 if d * 2 > 9 else d * 2) for i, d in enumerate(digits))
    assert total % 10 == 0


def test_clean_part_has_no_personal_data_lookalikes(records: list[dict]) -> None:
    import re

    clean = json.dumps([r for r in records if "flaw" not in r], ensure_ascii=False)
    assert not re.search(r"\d{11,}", clean)  # no phone, ID card or bank card shaped digit runs
    assert "@" not in clean and "sk-" not in clean


def test_duplicates_are_duplicates_and_clean_part_is_not(records: list[dict]) -> None:
    from engine.data.dedup import jaccard, near_duplicate_pairs
    from engine.data.normalize import normalize_text

    def text(r: dict) -> str:
        return "\n".join(m["content"] for m in r["messages"])

    clean = [r for r in records if "flaw" not in r]
    clean_texts = {normalize_text(text(r)) for r in clean}
    for r in records:
        if r.get("flaw") == "exact_duplicate":
            assert normalize_text(text(r)) in clean_texts
        if r.get("flaw") == "near_duplicate":
            assert max(jaccard(text(r), text(c)) for c in clean) >= 0.9
    # The quality filter should keep the clean conversations intact.
    assert near_duplicate_pairs([text(r) for r in clean], 0.9) == []


def test_quality_filter_catches_each_flaw_by_its_rule_and_keeps_the_clean_part(records: list[dict]) -> None:
    from engine.data.filters import SENSITIVE_RULES, FilterConfig, apply_filters

    samples = [Sample(messages=r["messages"], tags=r["tags"]) for r in records]
    outcome = apply_filters(samples, FilterConfig())
    for i, r in enumerate(records):
        removal = outcome.removed.get(i)
        if "flaw" not in r:
            assert removal is None, (i, removal)
        elif r["flaw"] in SENSITIVE_RULES:  # masked by default, not dropped
            assert removal is None, (i, r["flaw"], removal)
            assert outcome.samples[i].full_text() != samples[i].full_text()
        else:
            assert removal is not None and removal.rule == r["flaw"], (i, r["flaw"], removal)
