"""Data preparation on real token ids: the assistant-only loss mask and packing without cross-sample attention."""

import itertools
from pathlib import Path

import pytest
import torch

from engine.data.sample import Sample
from engine.data.versions import Entry
from engine.train.prepare import (
    IGNORE_INDEX,
    PrepareError,
    end_of_turn_token,
    load_tokenizer,
    prepare_data,
    tokenize_sample,
)
from engine.train.recipe import Recipe
from engine.train.sft import build_trainer
from engine.train.start import split_entries
from engine.train.tiny import IM_END, build_tiny_model

SYSTEM = "你是优选生活官方旗舰店的在线客服助手“小优”。请用简体中文礼貌、准确地回答。"
SINGLE = Sample(
    messages=[
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": "订单号TL260329-302614，空气炸锅有异响，怎么退？"},
        {"role": "assistant", "content": "您好，异响属于质量问题，请在“申请售后”中选择“质量问题”，运费由本店承担。"},
    ]
)
MULTI = Sample(
    messages=[
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": "你好"},
        {"role": "assistant", "content": "您好，很高兴为您服务！"},
        {"role": "user", "content": "发票怎么开？\n要专票。"},
        {"role": "assistant", "content": "请在订单页点击“申请发票”，选择增值税专用发票并填写税号。\n\n感谢您的耐心。"},
        {"role": "user", "content": "好的 thanks"},
        {"role": "assistant", "content": "不客气，祝您生活愉快 😀"},
    ]
)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


def label_spans(input_ids: list[int], labels: list[int]) -> list[list[int]]:
    """The runs of consecutive trained tokens."""
    spans: list[list[int]] = []
    previous = IGNORE_INDEX
    for token, label in zip(input_ids, labels, strict=True):
        if label != IGNORE_INDEX:
            assert label == token
            if previous == IGNORE_INDEX:
                spans.append([])
            spans[-1].append(token)
        previous = label
    return spans


@pytest.mark.parametrize("sample", [SINGLE, MULTI], ids=["single-turn", "multi-turn"])
def test_only_assistant_answers_and_their_end_of_turn_are_trained(tiny: Path, sample: Sample) -> None:
    tokenizer = load_tokenizer(tiny)
    eot = end_of_turn_token(tokenizer)
    assert eot == IM_END
    item = tokenize_sample(sample, tokenizer, cutoff_len=4096, train_on_prompt=False, eot=eot)
    # The ids are exactly what the chat template gives.
    messages = [m.model_dump(exclude_none=True) for m in sample.messages]
    rendered = tokenizer.apply_chat_template(messages, return_dict=True)
    assert item.input_ids == rendered["input_ids"]
    spans = [tokenizer.decode(span) for span in label_spans(item.input_ids, item.labels)]
    answers = [m.content + IM_END for m in sample.messages if m.role == "assistant"]
    assert spans == answers


def test_train_on_prompt_and_cutoff(tiny: Path) -> None:
    tokenizer = load_tokenizer(tiny)
    everything = tokenize_sample(MULTI, tokenizer, cutoff_len=4096, train_on_prompt=True, eot=IM_END)
    assert everything.labels == everything.input_ids
    cut = tokenize_sample(MULTI, tokenizer, cutoff_len=40, train_on_prompt=False, eot=IM_END)
    assert len(cut.input_ids) == 40 and cut.truncated and cut.input_ids == everything.input_ids[:40]
    # A sample whose answers all lie beyond the cutoff has nothing to learn and is dropped.
    single = tokenize_sample(SINGLE, tokenizer, cutoff_len=4096, train_on_prompt=False, eot=IM_END)
    prompt_length = single.labels.index(next(label for label in single.labels if label != IGNORE_INDEX))
    short = Sample(messages=[{"role": "user", "content": "在吗"}, {"role": "assistant", "content": "在的"}])
    data = prepare_data([SINGLE, short], [], tokenizer, Recipe(cutoff_len=prompt_length))
    assert data.stats["train"]["dropped"] == 1 and data.stats["train"]["truncated"] == 1 and len(data.train) == 1


def test_nothing_to_train_is_an_error(tiny: Path) -> None:
    with pytest.raises(PrepareError, match="unknown template 'llama9'"):
        load_tokenizer(tiny, "llama9")


def test_splits_never_train_on_test() -> None:
    entries = [Entry(SINGLE, split="train"), Entry(MULTI, split="test"), Entry(MULTI, split="validation")]
    entries.append(Entry(SINGLE, split="train", filter_rule="dedup"))
    assert split_entries(entries, 0.5, 0) == ([SINGLE], [MULTI])
    train, held = split_entries([Entry(SINGLE), Entry(MULTI), Entry(SINGLE), Entry(MULTI)], 0.25, 0)
    assert len(train) == 3 and len(held) == 1


def test_packed_samples_do_not_attend_to_each_other(tiny: Path, tmp_path: Path) -> None:
    """The batch the trainer really feeds the model: several samples in one row, each one's logits equal to
    those of the sample run alone."""
    tokenizer = load_tokenizer(tiny)
    short = Sample(messages=[{"role": "user", "content": "在吗"}, {"role": "assistant", "content": "在的"}])
    samples = [SINGLE, MULTI, short]
    recipe = Recipe(model_name_or_path=str(tiny), finetuning_type="full", per_device_train_batch_size=8, packing=True)
    data = prepare_data(samples, [], tokenizer, recipe)
    trainer = build_trainer(recipe, tokenizer, data, tmp_path / "checkpoints")
    batch = next(iter(trainer.get_train_dataloader()))
    assert batch["input_ids"].shape[0] == 1 and "attention_mask" not in batch  # padding-free: one packed row
    starts = (batch["position_ids"][0] == 0).nonzero().flatten().tolist()
    assert len(starts) == 3
    model = trainer.model.eval()
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        packed = model(**inputs).logits[0]
        bounds = [*starts, batch["input_ids"].shape[1]]
        for start, end in itertools.pairwise(bounds):
            alone = model(input_ids=batch["input_ids"][:, start:end]).logits[0]
            torch.testing.assert_close(packed[start:end], alone, atol=1e-5, rtol=1e-4)
        # The check can see a leak: the same row with one attention mask over all of it differs.
        leaking = model(input_ids=batch["input_ids"], attention_mask=torch.ones_like(batch["input_ids"])).logits[0]
        assert (leaking[bounds[1] : bounds[2]] - packed[bounds[1] : bounds[2]]).abs().max() > 1e-3
    # Labels survive packing: each sample's trained tokens are still exactly its answers.
    spans = [tokenizer.decode(s) for s in label_spans(batch["input_ids"][0].tolist(), batch["labels"][0].tolist())]
    expected = [m.content + IM_END for s in samples for m in s.messages if m.role == "assistant"]
    assert sorted(spans) == sorted(expected)


def test_tool_calls_are_trained_and_tool_results_are_not(tiny: Path) -> None:
    tokenizer = load_tokenizer(tiny)
    call = {"id": "c1", "type": "function", "function": {"name": "query_order", "arguments": '{"id": "TL1"}'}}
    sample = Sample(
        messages=[
            {"role": "user", "content": "查一下订单TL1"},
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "c1", "content": '{"status": "已发货"}'},
            {"role": "assistant", "content": "您的订单已发货。"},
        ]
    )
    item = tokenize_sample(sample, tokenizer, cutoff_len=4096, train_on_prompt=False, eot=IM_END)
    spans = [tokenizer.decode(span) for span in label_spans(item.input_ids, item.labels)]
    assert len(spans) == 2 and spans[1] == "您的订单已发货。" + IM_END
    assert "<tool_call>" in spans[0] and "query_order" in spans[0] and spans[0].endswith(IM_END)
    assert not any('已发货"}' in span for span in spans)  # the tool's result is context, not a target
