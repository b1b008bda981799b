"""Stability on the tiny model: near-greedy sampling agrees with itself, hot sampling of an untrained model does
not, the measurement repeats from its seed, and a tuned adapter that memorised its answers is steadier than the
base it was trained on. The similarity itself is checked on Chinese text, where whitespace tokens would fail."""

from pathlib import Path

import pytest

from engine.evaluate.generate import LoadedModels, load_models
from engine.evaluate.results import GenerationSettings
from engine.evaluate.stability import (
    STABILITY_SETTINGS,
    agreement_of,
    base_and_tuned_stability,
    lcs_length,
    sample_indices,
    similarity,
    stability,
)
from engine.train.tiny import build_tiny_model
from tests.test_evaluate_generate import VARIED, prompts_of, trained_adapter
from tests.training_data import SHOP_QA

HOT = GenerationSettings(max_new_tokens=16, batch_size=4, do_sample=True, temperature=1.5, top_p=1.0)


@pytest.fixture(scope="module")
def untrained(tmp_path_factory: pytest.TempPathFactory) -> LoadedModels:
    return load_models(build_tiny_model(tmp_path_factory.mktemp("stability") / "model"), device="cpu")


def test_similarity_is_rouge_l_on_characters_for_chinese() -> None:
    assert lcs_length(list("abcde"), list("ace")) == 3 and lcs_length([], list("a")) == 0
    assert similarity("请提供订单号", "请提供订单号") == 1.0
    assert similarity("请提供订单号。", " 请提供订单号 ") == 1.0  # punctuation and spacing do not count
    # "请提供订单号" vs "请提供手机号": 4 of 6 characters in common, though they share no whitespace token.
    assert similarity("请提供订单号", "请提供手机号") == pytest.approx(4 / 6)
    assert similarity("请提供订单号", "Please wait") == 0.0
    assert similarity("Refund in 3 days", "refund in 3 days") == 1.0
    assert similarity("", "") == 1.0 and similarity("", "好的") == 0.0
    assert similarity("你好", "你好吗") == similarity("你好吗", "你好")


def test_agreement_of_answers() -> None:
    assert agreement_of(["好的", "好的 ", " 好的"]) == (1.0, 1.0, 1)
    # Punctuation does not change what an answer says, but it does make the texts differ.
    assert agreement_of(["好的", "好的！"]) == (1.0, 0.0, 2)
    mean, exact, distinct = agreement_of(["好的", "好的", "不行"])
    assert exact == pytest.approx(1 / 3) and distinct == 2 and mean == pytest.approx(1 / 3)
    assert agreement_of(["甲", "乙", "丙", "丁"]) == (0.0, 0.0, 4)


def test_sample_indices_are_seeded() -> None:
    assert sample_indices(5, None, 0) == sample_indices(5, 9, 0) == [0, 1, 2, 3, 4]
    chosen = sample_indices(100, 10, 3)
    assert len(chosen) == 10 and chosen == sorted(chosen) and chosen == sample_indices(100, 10, 3)
    assert chosen != sample_indices(100, 10, 4)


@pytest.mark.parametrize(
    "settings",
    [
        GenerationSettings(max_new_tokens=16, batch_size=4, do_sample=True, temperature=1e-5),
        GenerationSettings(max_new_tokens=16, batch_size=4, do_sample=False),
    ],
    ids=["temperature-1e-5", "greedy"],
)
def test_near_greedy_answers_agree_completely(untrained: LoadedModels, settings: GenerationSettings) -> None:
    report = stability(untrained.model, untrained.tokenizer, prompts_of(VARIED), k=3, sample_size=5, settings=settings)
    assert len(report.prompts) == 5 and report.k == 3
    assert report.mean_agreement == 1.0 and report.mean_exact_share == 1.0
    assert all(p.distinct == 1 and len(p.answers) == 3 and p.answers[0] for p in report.prompts)
    assert len({p.answers[0] for p in report.prompts}) > 1  # the prompts themselves get different answers
    assert report.tokens > 0 and report.seconds > 0


def test_hot_sampling_of_an_untrained_model_disagrees(untrained: LoadedModels) -> None:
    prompts = prompts_of(VARIED)
    report = stability(untrained.model, untrained.tokenizer, prompts, k=4, sample_size=None, settings=HOT, worst=3)
    assert [p.index for p in report.prompts] == list(range(len(VARIED)))
    assert [p.question for p in report.prompts] == VARIED
    assert report.mean_agreement < 0.5 and report.mean_exact_share < 0.2
    assert all(p.distinct >= 2 for p in report.prompts)
    agreements = [p.agreement for p in report.least_stable]
    assert len(agreements) == 3 and agreements == sorted(agreements)
    assert agreements[0] == min(p.agreement for p in report.prompts)
    assert report.mean_agreement == pytest.approx(sum(p.agreement for p in report.prompts) / len(VARIED))


def test_the_same_seed_repeats_and_another_differs(untrained: LoadedModels) -> None:
    prompts = prompts_of(VARIED)

    def run(seed: int):
        return stability(untrained.model, untrained.tokenizer, prompts, k=3, sample_size=4, settings=HOT, seed=seed)

    first, again, other = run(7), run(7), run(8)
    assert first.as_dict() | {"seconds": 0} == again.as_dict() | {"seconds": 0}
    assert first.settings.seed == HOT.seed  # the report keeps the settings as given
    assert [p.answers for p in first.prompts] != [p.answers for p in other.prompts]


def test_arguments_are_checked(untrained: LoadedModels) -> None:
    with pytest.raises(ValueError, match="k must"):
        stability(untrained.model, untrained.tokenizer, prompts_of(["你好"]), k=1)
    with pytest.raises(ValueError, match="sample_size"):
        stability(untrained.model, untrained.tokenizer, prompts_of(["你好"]), sample_size=0)
    assert STABILITY_SETTINGS.do_sample


def test_a_tuned_adapter_is_steadier_than_its_base(tmp_path: Path) -> None:
    loaded = load_models(*trained_adapter(tmp_path), device="cpu")
    settings = GenerationSettings(max_new_tokens=40, batch_size=6, do_sample=True, temperature=0.7, top_p=0.9)
    base, tuned = base_and_tuned_stability(
        loaded, prompts_of([q for q, _ in SHOP_QA]), k=3, sample_size=None, settings=settings, seed=1
    )
    assert tuned.mean_agreement > base.mean_agreement + 0.3, (base.mean_agreement, tuned.mean_agreement)
    assert tuned.mean_agreement > 0.6
    # The base report really is the base model's: the adapter was off for it and is back on afterwards.
    alone, _ = base_and_tuned_stability(
        loaded, prompts_of([q for q, _ in SHOP_QA]), k=3, sample_size=None, settings=settings, seed=1
    )
    assert [p.answers for p in alone.prompts] == [p.answers for p in base.prompts]


def test_without_an_adapter_both_reports_are_the_base(untrained: LoadedModels) -> None:
    base, tuned = base_and_tuned_stability(untrained, prompts_of(VARIED[:2]), k=2, settings=HOT)
    assert base is tuned
