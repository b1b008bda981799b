"""Generation for evaluation on the tiny model: batched greedy answers equal one-at-a-time answers (the proof
that left padding is right), answers stop at <|im_end|> without showing it, the adapter is toggled on one
loaded model, and base and tuned answers differ after training."""

from collections.abc import Iterator
from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM

from engine.data.sample import Sample
from engine.data.versions import Entry
from engine.database import get_engine
from engine.evaluate.generate import (
    LoadedModels,
    generate_answers,
    generate_pairs,
    load_models,
    prompt_messages,
)
from engine.evaluate.results import GenerationSettings
from engine.evaluate.run import held_out_samples
from engine.events import Event
from engine.settings import get_settings
from engine.train.recipe import Recipe
from engine.train.sft import train
from engine.train.tiny import IM_END, build_tiny_model
from storage.db import session_scope
from tests.training_data import SHOP_QA, SHOP_SYSTEM, add_dataset, qa_entries

# Prompts of very different lengths, so a batch pads some of them a lot.
VARIED = [
    "你好",
    "我上周买的羊毛大衣尺码偏小，吊牌还在，没有洗过，可以换一件大一号的吗？运费怎么算？",
    "Can I return it?",
    "发票",
    "订单号 20240611-8842 一直显示待发货，已经三天了，请帮我催一下仓库，谢谢！",
    "多久到货？",
    "What is your refund policy for items bought during the sale?",
]


def qa_samples(pairs: list[tuple[str, str]], split: str = "test") -> list[Sample]:
    return [e.sample for e in qa_entries(pairs, split, system=SHOP_SYSTEM)]


def trained_adapter(root: Path) -> tuple[Path, Path]:
    """A tiny base model and a LoRA adapter that memorised SHOP_QA, trained in a throwaway home."""
    base = build_tiny_model(root / "model")
    recipe = Recipe.model_validate(
        {
            "model_name_or_path": str(base),
            "num_train_epochs": 30,
            "per_device_train_batch_size": 2,
            "gradient_accumulation_steps": 1,
            "learning_rate": 5e-3,
            "lora_dropout": 0.0,
            "logging_steps": 50,
            "cutoff_len": 128,
        }
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TUNELOOP_HOME", str(root / "home"))
        patch.delenv("TUNELOOP_DATABASE_URL", raising=False)
        patch.delenv("TUNELOOP_ARTIFACT_ROOT", raising=False)
        get_settings.cache_clear()
        try:
            engine = get_engine()
            number = add_dataset(qa_entries(SHOP_QA, "train", system=SHOP_SYSTEM), engine=engine)
            with session_scope(engine) as session:
                outcome = train(session, "shop", number, recipe, out_dir=root / "run")
        finally:
            get_settings.cache_clear()
    assert outcome is not None
    return base, outcome.adapter_dir


@pytest.fixture(scope="module")
def adapter(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return trained_adapter(tmp_path_factory.mktemp("evaluate-generate"))


@pytest.fixture(scope="module")
def tuned(adapter: tuple[Path, Path]) -> Iterator[LoadedModels]:
    yield load_models(*adapter, device="cpu")


@pytest.fixture(scope="module")
def untrained(tmp_path_factory: pytest.TempPathFactory) -> LoadedModels:
    return load_models(build_tiny_model(tmp_path_factory.mktemp("untrained") / "model"), device="cpu")


def prompts_of(questions: list[str]) -> list[list[dict]]:
    return [[{"role": "system", "content": SHOP_SYSTEM}, {"role": "user", "content": q}] for q in questions]


@pytest.mark.parametrize("batch_size", [2, 3, 8])
def test_batched_greedy_answers_equal_one_at_a_time(untrained: LoadedModels, batch_size: int) -> None:
    prompts = prompts_of(VARIED)
    settings = GenerationSettings(max_new_tokens=24, batch_size=1)
    alone, _ = generate_answers(untrained.model, untrained.tokenizer, prompts, settings)
    batched, stats = generate_answers(
        untrained.model, untrained.tokenizer, prompts, GenerationSettings(max_new_tokens=24, batch_size=batch_size)
    )
    assert [a.text for a in batched] == [a.text for a in alone]
    assert [a.tokens for a in batched] == [a.tokens for a in alone]
    assert len({a.text for a in alone}) > 1  # the prompts really lead to different answers
    assert stats.samples == len(VARIED) and stats.tokens == sum(a.tokens for a in batched)
    assert stats.tokens_per_second > 0 and stats.seconds == pytest.approx(sum(a.seconds for a in batched))


def test_batched_equals_one_at_a_time_on_the_trained_adapter(tuned: LoadedModels) -> None:
    prompts = prompts_of([q for q, _ in SHOP_QA] + VARIED)
    alone, _ = generate_answers(tuned.model, tuned.tokenizer, prompts, GenerationSettings(64, batch_size=1))
    batched, _ = generate_answers(tuned.model, tuned.tokenizer, prompts, GenerationSettings(64, batch_size=5))
    assert [a.text for a in batched] == [a.text for a in alone]


def test_generation_stops_at_the_end_of_turn_token_and_hides_it(tuned: LoadedModels) -> None:
    answers, stats = generate_answers(
        tuned.model, tuned.tokenizer, prompts_of([q for q, _ in SHOP_QA]), GenerationSettings(max_new_tokens=64)
    )
    assert all(a.stopped and a.tokens < 64 for a in answers)
    assert stats.stopped == len(SHOP_QA)
    assert all(IM_END not in a.text and "<|" not in a.text for a in answers)
    exact = [a.text for a in answers] == [answer for _, answer in SHOP_QA]
    assert sum(a.text == answer for a, (_, answer) in zip(answers, SHOP_QA, strict=True)) >= 4 or exact, answers
    # The answer's token count includes the end token, so it is one more than the answer's own tokens.
    first = tuned.tokenizer(answers[1].text, add_special_tokens=False)["input_ids"]
    assert answers[1].tokens == len(first) + 1


def test_max_new_tokens_cuts_an_answer_that_does_not_stop(untrained: LoadedModels) -> None:
    answers, stats = generate_answers(
        untrained.model, untrained.tokenizer, prompts_of(["你好", "多久到货？"]), GenerationSettings(max_new_tokens=5)
    )
    assert all(a.tokens <= 5 for a in answers) and stats.tokens <= 10
    assert not all(a.stopped for a in answers)  # the random model rambles


def test_base_and_tuned_answers_from_one_loaded_model(adapter: tuple[Path, Path], tuned: LoadedModels) -> None:
    samples = qa_samples(SHOP_QA)
    events: list[Event] = []
    generation = generate_pairs(
        tuned, samples, GenerationSettings(max_new_tokens=40, batch_size=4), events=events.append, project="shop"
    )
    rows = generation.samples
    assert [r.question for r in rows] == [q for q, _ in SHOP_QA]
    assert [r.reference for r in rows] == [a for _, a in SHOP_QA]
    assert rows[0].prompt == prompt_messages(samples[0]) and rows[0].prompt[-1]["role"] == "user"
    assert sum(r.tuned_answer == r.reference for r in rows) >= 4
    assert sum(r.base_answer != r.tuned_answer for r in rows) >= 4
    assert all(r.tuned_stopped and r.tuned_tokens > 0 and r.tuned_seconds > 0 for r in rows)
    assert generation.base.samples == generation.tuned.samples == len(SHOP_QA)
    assert generation.tuned.tokens == sum(r.tuned_tokens for r in rows)
    assert generation.tuned.tokens_per_second > 0 and generation.base.tokens_per_second > 0
    stages = [(e.payload["stage"], e.payload["done"]) for e in events if e.type == "progress"]
    assert stages == [("generate_base", 4), ("generate_base", 6), ("generate_tuned", 4), ("generate_tuned", 6)]

    # The base answers are the bare base model's: the adapter really was switched off, and back on after.
    bare = AutoModelForCausalLM.from_pretrained(adapter[0]).eval()
    alone, _ = generate_answers(bare, tuned.tokenizer, [r.prompt for r in rows], GenerationSettings(40))
    assert [r.base_answer for r in rows] == [a.text for a in alone]
    again = generate_pairs(tuned, samples[:2], GenerationSettings(max_new_tokens=40))
    assert [r.tuned_answer for r in again.samples] == [r.tuned_answer for r in rows[:2]]


def test_without_an_adapter_tuned_is_base(untrained: LoadedModels) -> None:
    generation = generate_pairs(untrained, qa_samples(SHOP_QA[:3]), GenerationSettings(max_new_tokens=8))
    assert all(r.base_answer == r.tuned_answer for r in generation.samples)


def test_sampling_is_seeded(untrained: LoadedModels) -> None:
    prompts = prompts_of(VARIED[:3])

    def run(seed: int) -> list[str]:
        settings = GenerationSettings(max_new_tokens=12, do_sample=True, temperature=1.0, seed=seed)
        return [a.text for a in generate_answers(untrained.model, untrained.tokenizer, prompts, settings)[0]]

    assert run(1) == run(1)
    assert run(1) != run(2)


def test_held_out_samples_and_prompts() -> None:
    entries = [
        *qa_entries(SHOP_QA[:2], "train"),
        *qa_entries(SHOP_QA[2:4], "test"),
        Entry(qa_samples(SHOP_QA[4:5])[0], split="test", filter_rule="dedup", filter_reason="duplicate"),
        *qa_entries(SHOP_QA[5:], "validation"),
    ]
    assert [s.answer_text() for s in held_out_samples(entries)] == [SHOP_QA[2][1], SHOP_QA[3][1]]
    two_turns = Sample(
        messages=[
            {"role": "user", "content": "a"},
            {"role": "assistant", "content": "b"},
            {"role": "user", "content": "c"},
            {"role": "assistant", "content": "d"},
        ]
    )
    assert [m["content"] for m in prompt_messages(two_turns)] == ["a", "b", "c"]


def test_settings_are_checked(untrained: LoadedModels) -> None:
    with pytest.raises(ValueError, match="batch_size"):
        generate_answers(untrained.model, untrained.tokenizer, prompts_of(["你好"]), GenerationSettings(batch_size=0))
