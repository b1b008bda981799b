"""LLaMA-Factory's data and recipes, in its own formats (fixtures under tests/llamafactory/, written here in the
shapes of LLaMA-Factory's data/ demos): the same files train the same way, or a sentence says what differs."""

import json
import os
import re
import stat
from pathlib import Path

import huggingface_hub
import pytest
from sqlmodel import select
from typer.testing import CliRunner

from bot.cli import app
from engine.data.errors import DataError
from engine.data.export import export_samples
from engine.data.filters import FilterConfig, apply_filters
from engine.data.formats import load_file
from engine.data.pipeline import export_version, import_file
from engine.data.sample import Sample
from engine.data.versions import DEFAULT_DATASET, Entry, load_entries, resolve_version
from engine.database import get_engine
from engine.evaluate.generate import generate_pairs, load_models, prompt_messages, prompt_text
from engine.evaluate.reference import answer_labels
from engine.evaluate.results import GenerationSettings
from engine.train.prepare import (
    IGNORE_INDEX,
    PrepareError,
    data_notes,
    end_of_turn_token,
    load_tokenizer,
    message_dicts,
    prepare_data,
    render,
    resolve_chat_template,
    tokenize_sample,
    tokenize_samples,
)
from engine.train.recipe import DEFAULT_RECIPE, Recipe, RecipeError, load_recipe, read_recipe
from engine.train.sft import TrainingError, build_trainer, groups_by_length, lora_config, train
from engine.train.tiny import IM_END, build_tiny_model
from storage.db import session_scope
from storage.models import Run
from tests.training_data import add_dataset

LF = Path(__file__).with_name("llamafactory")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


def trained_text(tokenizer, input_ids: list[int], labels: list[int]) -> str:
    return tokenizer.decode([t for t, label in zip(input_ids, labels, strict=True) if label != IGNORE_INDEX])


def test_tool_definitions_and_calls_reach_the_trained_tokens_as_llamafactory_writes_them(tiny: Path) -> None:
    samples = [s for _, s in load_file(LF / "dataset_info.json", entry="glaive_toolcall_zh_demo").samples]
    tokenizer = load_tokenizer(tiny)
    eot = end_of_turn_token(tokenizer)
    sample = samples[1]
    item = tokenize_sample(sample, tokenizer, cutoff_len=4096, train_on_prompt=False, eot=eot)
    text = tokenizer.decode(item.input_ids)
    # LLaMA-Factory's QwenToolUtils.tool_formatter (src/llamafactory/data/tool_utils.py, lines 593-599): each
    # tool wrapped as {"type": "function", "function": ...}, json.dumps'd on a line of its own inside <tools>.
    for tool in json.loads(sample.original["tools"]):
        assert "\n" + json.dumps({"type": "function", "function": tool}, ensure_ascii=False) + "\n" in text
    assert "退款原因" in text  # the schema's Chinese descriptions, not \u escapes
    trained = trained_text(tokenizer, item.input_ids, item.labels)
    calls = re.findall(r"<tool_call>\n(.*?)\n</tool_call>", trained, re.S)
    # QwenToolUtils.function_formatter (tool_utils.py, lines 604-608): the arguments as an object, not JSON text
    expected = json.dumps(
        {"name": "申请退款", "arguments": {"order_id": "B2002", "reason": "商品破损"}}, ensure_ascii=False
    )
    assert calls == [expected]
    assert json.loads(calls[0])["arguments"]["reason"] == "商品破损"
    assert "退款已受理，退款单号R77。" in trained  # the answer after the tool's result
    assert '已受理"}' not in trained  # the tool's result is context, not a target
    assert "<tool_response>" in text


def test_a_tool_sample_is_evaluated_in_the_context_it_was_trained_in(tiny: Path) -> None:
    sample = [s for _, s in load_file(LF / "dataset_info.json", entry="glaive_toolcall_zh_demo").samples][1]
    loaded = load_models(tiny, device="cpu")
    # The question the models answer is the training text up to the answer: the tool definitions included.
    trained = render(loaded.tokenizer, message_dicts(sample), tools=sample.tools)
    asked = prompt_text(loaded.tokenizer, prompt_messages(sample), sample.tools)
    assert "<tools>" in asked and "申请退款" in asked and trained.startswith(asked)
    generation = generate_pairs(loaded, [sample], GenerationSettings(max_new_tokens=2))
    assert generation.samples[0].tools == sample.tools
    # The reference's perplexity is measured in the same context.
    ids, _ = answer_labels(loaded.tokenizer, prompt_messages(sample), sample.answer_text(), IM_END, sample.tools)
    assert loaded.tokenizer.decode(ids).startswith(asked)


def test_a_template_that_drops_tool_definitions_is_refused(tiny: Path) -> None:
    samples = [s for _, s in load_file(LF / "dataset_info.json", entry="glaive_toolcall_zh_demo").samples]
    tokenizer = load_tokenizer(tiny)
    tokenizer.chat_template = (
        "{%- for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + (m['content'] or '') + '<|im_end|>\\n' }}"
        "{%- endfor %}{%- if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{%- endif %}"
    )
    with pytest.raises(PrepareError, match="does not write tool definitions"):
        tokenize_samples(samples, tokenizer, Recipe())


@pytest.mark.parametrize("entry", ["kto_en_demo", None])
def test_kto_labels_are_kept_and_bad_answers_never_become_targets(tiny: Path, entry: str | None) -> None:
    path = LF / ("dataset_info.json" if entry else "kto_en_demo.json")
    samples = [s for _, s in load_file(path, entry=entry).samples]
    assert [s.label for s in samples] == [True, False, True, False]
    assert load_file(path, entry=entry).warnings == [
        "2 answer(s) are labelled bad (KTO label false): kept with their label; "
        "supervised fine-tuning never trains on them"
    ]
    tokenizer = load_tokenizer(tiny)
    data = prepare_data(samples, [], tokenizer, Recipe())
    trained = "".join(tokenizer.decode(ids) for ids in data.train["input_ids"])
    assert "Orders arrive in three to five days." in trained
    assert "figure it out yourself" not in trained and "Buy another one" not in trained
    assert data.stats["train"]["samples"] == 2 and data.stats["train"]["labelled_bad"] == 2
    assert data_notes(data.stats["train"]) == [
        "2 sample(s) labelled bad (KTO label false) were not trained on: "
        "supervised fine-tuning learns only from answers labelled good"
    ]


def test_a_kto_label_survives_a_dataset_version(db_engine) -> None:
    samples = [s for _, s in load_file(LF / "kto_en_demo.json").samples]
    number = add_dataset([Entry(s) for s in samples], engine=db_engine)
    with session_scope(db_engine) as session:
        entries = load_entries(session, resolve_version(session, "shop", DEFAULT_DATASET, number))
    assert [e.sample.label for e in entries] == [True, False, True, False]
    assert entries[0].sample.content_hash == samples[0].content_hash


def test_preference_data_for_sft_says_the_rejected_answers_are_not_used(tiny: Path) -> None:
    loaded = load_file(LF / "dataset_info.json", entry="dpo_zh_demo")
    assert loaded.warnings == [
        "2 preference sample(s): supervised fine-tuning trains on the chosen answers; "
        "the rejected ones are kept for preference training"
    ]
    samples = [s for _, s in loaded.samples]
    tokenizer = load_tokenizer(tiny)
    data = prepare_data(samples, [], tokenizer, Recipe())
    trained = "".join(tokenizer.decode(ids) for ids in data.train["input_ids"])
    assert "在订单页点击申请发票" in trained and "不知道" not in trained
    assert data_notes(data.stats["train"]) == [
        "2 preference sample(s): trained on the chosen answers only; "
        "the rejected answers are not used by supervised fine-tuning"
    ]


@pytest.mark.parametrize("entry", ["mllm_demo", None])
def test_multimodal_data_is_refused_with_a_sentence(entry: str | None) -> None:
    path = LF / ("dataset_info.json" if entry else "mllm_demo.json")
    with pytest.raises(DataError) as caught:
        load_file(path, entry=entry)
    assert caught.value.headline == (
        "mllm_demo.json: multimodal data (images in 2 of 2 records): tuneloop fine-tunes text models only; "
        "use a dataset without images, videos or audio"
    )


# LLaMA-Factory's value for each recipe key a YAML leaves unset, read from its source (hiyouga/LLaMA-Factory at
# ff6d4d1, src/llamafactory/hparams/) and from transformers' TrainingArguments, which its training_args.py
# (line 19) extends (transformers 5.24, transformers/training_args.py).
LLAMAFACTORY_DEFAULTS = {
    "lora_rank": 8,  # finetuning_args.py, lines 77-78
    "lora_alpha": 16,  # finetuning_args.py, line 587: self.lora_alpha or self.lora_rank * 2
    "lora_dropout": 0.0,  # finetuning_args.py, lines 73-74
    "lora_target": "all",  # finetuning_args.py, lines 81-82
    "use_dora": False,  # finetuning_args.py, lines 103-104
    "cutoff_len": 2048,  # data_args.py, lines 46-47
    "train_on_prompt": False,  # data_args.py, lines 50-51
    "val_size": 0.0,  # data_args.py, lines 100-101
    "packing": False,  # data_args.py, line 108 (None), then parser.py, line 645: packing only for stage pt
    "num_train_epochs": 3.0,  # training_args.py, line 778
    "per_device_train_batch_size": 8,  # training_args.py, line 777
    "learning_rate": 5e-5,  # training_args.py, line 787
    "lr_scheduler_type": "linear",  # training_args.py, line 789
    "warmup_ratio": 0.0,  # training_args.py, lines 798-799: warmup_steps 0
    "gradient_accumulation_steps": 1,  # training_args.py, lines 849-850
    "logging_steps": 500,  # training_args.py, line 1002
    "save_steps": 500,  # training_args.py, line 1184
    "seed": 42,  # training_args.py, line 1293
    "group_by_length": False,  # training_args.py, lines 1380-1381: train_sampling_strategy "random"
    "max_steps": None,  # training_args.py: -1, no limit
}


def test_a_llamafactory_yaml_trains_with_llamafactory_defaults_for_unset_keys(tmp_path: Path) -> None:
    path = tmp_path / "lora_sft.yaml"
    path.write_text("stage: sft\ndo_train: true\nfinetuning_type: lora\n", encoding="utf-8")
    recipe = load_recipe(path)
    assert {key: getattr(recipe, key) for key in LLAMAFACTORY_DEFAULTS} == LLAMAFACTORY_DEFAULTS
    config = lora_config(recipe)
    assert (config.r, config.lora_alpha, config.lora_dropout) == (8, 16, 0.0)
    assert groups_by_length(recipe) is False
    path.write_text("lora_rank: 32\n", encoding="utf-8")
    assert load_recipe(path).lora_alpha == 64  # 2 × the rank it sets
    # tuneloop's own defaults are its shipped recipe's, and only its
    shipped = load_recipe(DEFAULT_RECIPE)
    assert (shipped.lora_rank, shipped.lora_alpha, shipped.lora_dropout, shipped.learning_rate) == (16, 32, 0.05, 2e-4)
    assert load_recipe(DEFAULT_RECIPE, lora_rank=8).lora_alpha == 16


def test_llamafactory_example_recipes_load_with_their_io_keys_reported() -> None:
    loaded = read_recipe(LF / "qwen3_lora_sft.yaml")
    recipe = loaded.recipe
    assert recipe.model_name_or_path == "Qwen/Qwen3-1.7B" and recipe.template == "qwen3_nothink"
    assert (recipe.lora_rank, recipe.lora_alpha, recipe.lora_dropout) == (8, 16, 0.0)
    assert (recipe.max_samples, recipe.per_device_train_batch_size, recipe.bf16) == (500, 1, True)
    ignored = [note.split(":")[0] for note in loaded.notes]
    assert ignored == [
        "dataset",
        "output_dir",
        "overwrite_output_dir",
        "plot_loss",
        "preprocessing_num_workers",
        "dataloader_num_workers",
        "ddp_timeout",
        "save_only_model",
        "trust_remote_code",
        "resume_from_checkpoint",
    ]
    assert "dataset: ignored: the run trains on the dataset version it is given (--dataset)" in loaded.notes[0]
    ds3 = load_recipe(LF / "qwen3_lora_sft_ds3.yaml")
    assert ds3.distributed == "zero3" and ds3.deepspeed == "examples/deepspeed/ds_z3_config.json"
    assert read_recipe(DEFAULT_RECIPE).notes == []


def test_a_dpo_yaml_trains_sft_then_dpo_with_its_learning_rate_and_epochs_for_the_dpo_phase() -> None:
    loaded = read_recipe(LF / "qwen3_lora_dpo.yaml")
    recipe = loaded.recipe
    assert (recipe.stage, recipe.pref_beta, recipe.pref_loss) == ("dpo", 0.1, "sigmoid")
    assert (recipe.pref_learning_rate, recipe.pref_num_train_epochs) == (5e-6, 3.0)
    assert (recipe.learning_rate, recipe.num_train_epochs) == (5e-5, 3.0)  # LLaMA-Factory's defaults, for SFT
    assert "learning_rate: read as pref_learning_rate, the DPO phase's" in "\n".join(loaded.notes)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("qwen3_lora_kto.yaml", "stage: kto is not supported"),
        ("qwen3_lora_pretrain.yaml", "stage: pt (pretraining on plain text) is not supported"),
        ("merge_qwen3_lora_sft.yaml", "merge a run's adapter into its base model with `tuneloop export RUN --merge`"),
    ],
)
def test_other_stages_and_merge_yamls_say_what_to_do(name: str, expected: str) -> None:
    with pytest.raises(RecipeError) as raised:
        load_recipe(LF / name)
    assert str(raised.value).startswith(f"{LF / name}: ") and expected in str(raised.value)


@pytest.mark.parametrize(
    ("template", "problem"),
    [
        ("qwen3", None),
        ("llama3", None),
        ("chatml", None),
        ("default", "template 'default' is LLaMA-Factory's own prompt format"),
        ("qwen2_vl", "template 'qwen2_vl' is for a multimodal model"),
        ("qwen4", "unknown template 'qwen4'"),
    ],
)
def test_llamafactory_template_names_map_or_are_refused(tmp_path: Path, template: str, problem: str | None) -> None:
    path = tmp_path / "recipe.yaml"
    path.write_text(f"template: {template}\n", encoding="utf-8")
    if problem is None:
        assert load_recipe(path).template == template
    else:
        with pytest.raises(RecipeError, match=re.escape(problem)):
            load_recipe(path)


def test_a_llamafactory_template_name_means_the_models_own_template(tiny: Path) -> None:
    tokenizer = load_tokenizer(tiny)
    assert resolve_chat_template(tokenizer, "qwen3_nothink") == tokenizer.chat_template
    tokenizer.chat_template = None
    with pytest.raises(PrepareError, match="template: llama3 means the model's own chat template"):
        resolve_chat_template(tokenizer, "llama3")


def test_max_steps_stops_training(tiny: Path, tmp_path: Path) -> None:
    samples = [s for _, s in load_file(LF / "dataset_info.json", entry="glaive_toolcall_zh_demo").samples]
    recipe = Recipe(
        model_name_or_path=str(tiny), max_steps=2, per_device_train_batch_size=1, gradient_accumulation_steps=1
    )
    tokenizer = load_tokenizer(tiny)
    trainer = build_trainer(recipe, tokenizer, prepare_data(samples, [], tokenizer, recipe), tmp_path)
    trainer.train()
    assert trainer.state.global_step == 2  # 3 epochs of 3 samples would be 9


def test_a_refused_start_creates_no_run_and_uses_no_iteration(
    tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # as on a machine without the hub
    samples = [s for _, s in load_file(LF / "dataset_info.json", entry="glaive_toolcall_zh_demo").samples]
    number = add_dataset([Entry(s) for s in samples])
    plain = tmp_path / "plain.jinja"
    plain.write_text("{% for m in messages %}{{ m['content'] }}<|im_end|>{% endfor %}", encoding="utf-8")
    with session_scope(get_engine()) as session:
        with pytest.raises(TrainingError, match="does not write tool definitions"):
            train(session, "shop", number, Recipe(model_name_or_path=str(tiny), template=str(plain)))
        hub = "model_name_or_path 'Qwen/Qwen3-1.7B' is not a folder here and the hub is unreachable"
        with pytest.raises(TrainingError, match=re.escape(hub + ": pass --base-model DIR or a local folder")):
            train(session, "shop", number, load_recipe(LF / "qwen3_lora_sft.yaml"))
        assert session.exec(select(Run)).all() == []
    result = CliRunner().invoke(
        app, ["train", "--project", "shop", "--dataset", str(number), "--recipe", str(LF / "qwen3_lora_sft.yaml")]
    )
    assert result.exit_code == 2 and hub in result.output.replace("\n", " ")
    assert "qwen3_lora_sft.yaml: dataset: ignored" in result.output


@pytest.mark.parametrize("entry", ["c4_demo", None])
def test_pretraining_text_says_it_is_not_supported(entry: str | None) -> None:
    path = LF / ("dataset_info.json" if entry else "c4_demo.jsonl")
    with pytest.raises(DataError) as caught:
        load_file(path, entry=entry)
    assert "pretraining text (records of one 'text' field) is not supported" in caught.value.headline
    assert "missing field" not in caught.value.headline


def test_misleading_import_messages_say_what_is_wrong(db_engine, tmp_path: Path) -> None:
    sheet = tmp_path / "faq.xlsx"
    sheet.write_bytes(b"PK\x03\x04" + bytes(60))  # the start of every .xlsx (a zip archive)
    with pytest.raises(DataError, match="save it as CSV"):
        load_file(sheet)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("", encoding="utf-8")
    with session_scope(db_engine) as session:
        with pytest.raises(DataError) as caught:
            import_file(session, "shop", empty)
        assert caught.value.headline == "empty.jsonl: the file is empty (no records); nothing was imported"
        with pytest.raises(DataError) as caught:
            import_file(session, "shop", LF / "kto_en_demo.json", fmt="alpaca")
        assert caught.value.headline == (
            "kto_en_demo.json: 4 of 4 record(s) are invalid as alpaca; they look like openai: try --format openai; "
            "nothing was imported"
        )
        outcome = import_file(session, "shop", LF / "dataset_info.json", entry="identity")
    assert outcome.loaded.warnings == [
        "2 record(s) hold placeholders ({{author}}, {{name}}; records 1, 2): replace them with real text "
        "before training, or the model learns to say them"
    ]


def test_whole_short_answers_are_kept_and_tool_calls_tell_duplicates_apart() -> None:
    def qa(question: str, answer: str) -> Sample:
        return Sample(messages=[{"role": "user", "content": question}, {"role": "assistant", "content": answer}])

    kept = apply_filters(
        [qa("打个招呼", "嗨"), qa("1+2=?", "3"), qa("Say hi", "k"), qa("能改吗？", "嗯")], FilterConfig()
    )
    assert {i: r.rule for i, r in kept.removed.items()} == {2: "too_short", 3: "too_short"}  # "嗯" answers nothing
    samples = [s for _, s in load_file(LF / "dataset_info.json", entry="glaive_toolcall_zh_demo").samples]
    other_call = samples[0].model_copy(deep=True)
    other_call.messages[1].tool_calls[0].function["arguments"] = '{"order_id": "A1002"}'
    other_tools = samples[0].model_copy(update={"tools": samples[0].tools[:1]})
    outcome = apply_filters([samples[0], other_call, other_tools, samples[0]], FilterConfig(near_dup_threshold=None))
    assert {i: r.rule for i, r in outcome.removed.items()} == {3: "exact_duplicate"}


def test_exports_keep_what_their_readers_need(db_engine, tmp_path: Path) -> None:
    calls = [s for _, s in load_file(LF / "dataset_info.json", entry="glaive_toolcall_zh_demo").samples]
    (path,) = export_samples(calls, "openai", tmp_path / "calls.jsonl")
    messages = json.loads(path.read_text(encoding="utf-8").splitlines()[0])["messages"]
    assert messages[1]["tool_calls"][0]["id"] == "call_1" and messages[2]["tool_call_id"] == "call_1"
    alpaca = [s for _, s in load_file(LF / "alpaca_zh_demo.json").samples]
    (path,) = export_samples(alpaca, "alpaca", tmp_path / "alpaca.json")
    records = json.loads(path.read_text(encoding="utf-8"))
    assert [(r["instruction"], r["input"]) for r in records] == [
        ("把下面的句子翻译成英文。", "订单已发货。"),
        ("用一句话介绍退货政策。", ""),
    ]
    previous = os.umask(0o022)
    try:
        with session_scope(db_engine) as session:
            import_file(session, "prefs", LF / "dataset_info.json", entry="dpo_zh_demo")
            (exported,) = export_version(session, "prefs", "openai", tmp_path / "out")
    finally:
        os.umask(previous)
    assert exported.name == "prefs_main_v1_preference.jsonl"
    assert stat.S_IMODE(exported.stat().st_mode) == 0o644


def test_transformers_loss_on_cpu_equals_trls_fused_loss(tiny: Path, tmp_path: Path) -> None:
    samples = [s for _, s in load_file(LF / "dataset_info.json", entry="glaive_toolcall_zh_demo").samples]
    recipe = Recipe(model_name_or_path=str(tiny), per_device_train_batch_size=3)
    tokenizer = load_tokenizer(tiny)
    trainer = build_trainer(recipe, tokenizer, prepare_data(samples, [], tokenizer, recipe), tmp_path)
    assert trainer.fused_loss is False  # on a CPU, unless token_metrics: bench/peer.py measures why
    batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    plain = trainer.compute_loss(trainer.model, dict(batch), num_items_in_batch=None)
    trainer.fused_loss = True
    fused = trainer.compute_loss(trainer.model, dict(batch), num_items_in_batch=None)
    assert abs(plain.item() - fused.item()) < 1e-4 * fused.item()
    metrics = build_trainer(
        recipe.model_copy(update={"token_metrics": True}),
        tokenizer,
        prepare_data(samples, [], tokenizer, recipe),
        tmp_path,
    )
    assert metrics.fused_loss is True
