import json
import random
from collections import Counter
from pathlib import Path

import pytest

from engine.data.dedup import jaccard
from engine.data.sample import Sample
from engine.data.split import SplitConfig, SplitError, resolve_size, split_samples

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "customer_service.jsonl"


@pytest.fixture(scope="module")
def clean() -> list[Sample]:
    """The example dataset's clean conversations: 600 distinct samples over 7 tags."""
    records = [json.loads(line) for line in EXAMPLE.read_text(encoding="utf-8").splitlines()]
    return [Sample(messages=r["messages"], tags=r["tags"]) for r in records if "flaw" not in r]


def qa(question: str, answer: str = "好的，马上为您处理这个问题。", tag: str = "x") -> Sample:
    return Sample(
        messages=[{"role": "user", "content": question}, {"role": "assistant", "content": answer}], tags=[tag]
    )


def test_default_config_and_sizes() -> None:
    assert SplitConfig().test_size == 0.1
    assert resolve_size(0.1, 600) == 60
    assert resolve_size(0.1, 605) == 61  # 60.5 rounds half up, not to even
    assert resolve_size(0.001, 50) == 1  # a positive ratio never means zero samples
    assert resolve_size(25, 600) == 25
    assert resolve_size(0, 600) == 0
    with pytest.raises(SplitError, match="whole number"):
        resolve_size(2.5, 600)


def test_same_seed_same_split_and_other_seed_differs(clean: list[Sample]) -> None:
    a = split_samples(clean, SplitConfig(test_size=0.1, seed=7))
    b = split_samples(clean, SplitConfig(test_size=0.1, seed=7))
    c = split_samples(clean, SplitConfig(test_size=0.1, seed=8))
    assert a.assignments == b.assignments
    assert a.assignments != c.assignments


def test_split_does_not_depend_on_input_order(clean: list[Sample]) -> None:
    config = SplitConfig(test_size=0.15, val_size=0.05, seed=3)
    shuffled = clean[:]
    random.Random(1).shuffle(shuffled)
    by_hash = dict(zip((s.content_hash for s in clean), split_samples(clean, config).assignments, strict=True))
    again = split_samples(shuffled, config).assignments
    assert [by_hash[s.content_hash] for s in shuffled] == again


def test_ratio_and_count_are_honoured(clean: list[Sample]) -> None:
    out = split_samples(clean, SplitConfig(test_size=0.1, val_size=0.05))
    assert out.counts == {"train": 510, "test": 60, "validation": 30, "leak": 0}
    assert out.requested == {"test": 60, "validation": 30}
    out = split_samples(clean, SplitConfig(test_size=50, stratify_by_tag=False))
    assert out.counts["test"] == 50 and out.counts["train"] == 550
    assert len(out.indices("test")) == 50


def test_stratification_preserves_tag_proportions(clean: list[Sample]) -> None:
    out = split_samples(clean, SplitConfig(test_size=0.2))
    per_tag = Counter(s.tags[0] for s in clean)
    in_test = Counter(clean[i].tags[0] for i in out.indices("test"))
    assert sum(in_test.values()) == 120
    for tag, n in per_tag.items():
        assert abs(in_test[tag] - 0.2 * n) <= 1, (tag, in_test[tag], n)


def test_single_sample_tag_goes_to_train(clean: list[Sample]) -> None:
    lonely = qa("我想咨询一下积分兑换礼品的规则，积分什么时候过期？", tag="积分")
    samples = [*clean[:99], lonely]
    for seed in range(5):
        out = split_samples(samples, SplitConfig(test_size=0.3, seed=seed))
        assert out.assignments[-1] == "train"
        assert out.counts["test"] == 30


def test_impossible_sizes_fail_clearly(clean: list[Sample]) -> None:
    with pytest.raises(SplitError, match="leave no training samples"):
        split_samples(clean[:10], SplitConfig(test_size=10))
    with pytest.raises(SplitError, match="leave no training samples"):
        split_samples(clean[:10], SplitConfig(test_size=0.6, val_size=0.4))
    with pytest.raises(SplitError, match="at least 2 samples"):
        split_samples(clean[:1], SplitConfig(test_size=0.5))
    unique_tags = [s.model_copy(update={"tags": [f"t{i}"]}) for i, s in enumerate(clean[:10])]
    with pytest.raises(SplitError, match="stratify_by_tag=False"):
        split_samples(unique_tags, SplitConfig(test_size=2))
    assert split_samples(unique_tags, SplitConfig(test_size=2, stratify_by_tag=False)).counts["test"] == 2
    with pytest.raises(ValueError):
        SplitConfig(test_size=0)


def test_near_duplicate_of_a_training_question_is_a_leak_never_test(clean: list[Sample]) -> None:
    # Plant a light rewording of 40 questions; whenever one copy lands in train, the other must
    # not be evaluated on.
    originals = clean[:40]
    planted = []
    for s in originals:
        messages = [m.model_copy() for m in s.messages]
        first_user = next(i for i, m in enumerate(messages) if m.role == "user")
        text = messages[first_user].content or ""
        messages[first_user] = messages[first_user].model_copy(update={"content": text.replace("，", ",", 1)})
        messages[-1] = messages[-1].model_copy(update={"content": "这是另一位客服写的完全不同的回答。"})
        planted.append(s.model_copy(update={"messages": messages}))
    assert all(jaccard(a.prompt_text(), b.prompt_text()) >= 0.9 for a, b in zip(originals, planted, strict=True))
    samples = [*clean, *planted]
    total_leaks = 0
    for seed in range(3):
        out = split_samples(samples, SplitConfig(test_size=0.25, val_size=0.1, seed=seed))
        pairs = [(i, len(clean) + i) for i in range(len(planted))]
        for a, b in pairs:
            for x, y in ((a, b), (b, a)):
                if out.assignments[x] == "train":
                    assert out.assignments[y] in ("train", "leak")
        for i, (j, similarity) in out.leaks.items():
            assert out.assignments[i] == "leak" and out.assignments[j] == "train"
            assert similarity >= 0.9
        total_leaks += len(out.leaks)
        assert out.counts["leak"] == len(out.leaks)
    assert total_leaks > 0


def test_leak_threshold_is_configurable() -> None:
    samples = [qa(f"第{i}个问题：请问订单TL2603{i:02d}-{i * 7919 % 1000000:06d}的物流到哪里了？") for i in range(30)]
    strict = split_samples(samples, SplitConfig(test_size=0.3, leak_threshold=1.0))
    loose = split_samples(samples, SplitConfig(test_size=0.3, leak_threshold=0.3))
    assert strict.counts["leak"] == 0
    assert loose.counts["leak"] > 0
