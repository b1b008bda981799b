"""Tiny Qwen2-style models built locally, so tests, the demo and the bench never download anything.

The tokenizer is a byte-level BPE trained with the `tokenizers` library on a dataset's text. It is built
with exactly the normalizer, pre-tokenizer and decoder that transformers' `Qwen2Tokenizer` rebuilds on
load: a tokenizer saved beside a qwen2 config reloads as `Qwen2Tokenizer`, and one trained with another
pre-tokenizer would then split Chinese text differently from how it was trained.
"""

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM
from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX, Qwen2Tokenizer

from engine.data.formats import load_file
from engine.data.sample import Sample
from engine.train.prepare import load_tokenizer, prepare_data
from engine.train.recipe import Recipe
from engine.train.templates import CHATML_TEMPLATE

EXAMPLE_DATASET = Path(__file__).resolve().parents[2] / "examples" / "customer_service.jsonl"

ENDOFTEXT, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
SPECIAL_TOKENS = [ENDOFTEXT, IM_START, IM_END]


@dataclass(frozen=True)
class TinySpec:
    """The shape of a tiny model; the defaults make a ~360K-parameter model that trains in seconds."""

    vocab_size: int = 4000
    hidden_size: int = 64
    intermediate_size: int = 192
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    max_position_embeddings: int = 4096
    # Wider than transformers' 0.02: with tied, frozen embeddings a LoRA adapter can only move the hidden state,
    # and at 0.02 the logits of a 64-wide model cannot rise far enough above uniform to learn anything.
    initializer_range: float = 0.1
    seed: int = 0


class TinyModelError(ValueError):
    """A tiny model that cannot be built as asked; the message says why."""


@dataclass(frozen=True)
class TinyModel:
    """A tiny model as built: where, its shape, and what its tokenizer (and any pretraining) learned from."""

    path: Path
    layers: int
    width: int
    vocabulary: int
    data: Path
    conversations: int  # the dataset's, which trained the tokenizer (and every weight, when pretrained)


def tiny_spec(
    *, vocab_size: int | None = None, hidden_size: int | None = None, layers: int | None = None, seed: int | None = None
) -> TinySpec:
    """The default shape with what a person changed; the feed-forward layer stays three times the width, as in the
    default shape, and the width must split evenly over the attention heads."""
    heads = TinySpec.num_attention_heads
    if hidden_size is not None and (hidden_size % heads or hidden_size < 2 * heads):
        raise TinyModelError(f"the width must be a multiple of {heads} ({heads} attention heads), at least {2 * heads}")
    shape = {"vocab_size": vocab_size, "num_hidden_layers": layers, "seed": seed}
    if hidden_size is not None:
        shape |= {"hidden_size": hidden_size, "intermediate_size": 3 * hidden_size}
    return TinySpec(**{key: value for key, value in shape.items() if value is not None})


def build_tiny_from_dataset(
    out: Path, data: Path | None = None, spec: TinySpec | None = None, *, pretrain_epochs: float = 0.0
) -> TinyModel:
    """A tiny model whose tokenizer learns a dataset's text (the example's when None); with `pretrain_epochs`, every
    weight is then trained on its conversations, so that it is a usable base and not a random one."""
    data = data or EXAMPLE_DATASET
    if not data.exists():
        raise TinyModelError(f"{data} does not exist")
    samples = [sample for _, sample in load_file(data).samples]
    texts = list(sample_texts(samples))
    if not texts:
        raise TinyModelError(f"{data} holds no text to train a tokenizer on")
    build_tiny_model(out, texts, spec)
    if pretrain_epochs:
        pretrain_tiny_model(out, samples, pretrain_epochs)
    config = Qwen2Config.from_pretrained(out)
    return TinyModel(out, config.num_hidden_layers, config.hidden_size, config.vocab_size, data, len(samples))


def sample_texts(samples: Iterable[Sample]) -> Iterable[str]:
    for sample in samples:
        for message in sample.messages:
            yield message.role  # so that the role names in the template are single tokens too
            if message.content:
                yield message.content


def dataset_texts(path: Path) -> list[str]:
    return list(sample_texts(sample for _, sample in load_file(path).samples))


def train_tokenizer(texts: Iterable[str], vocab_size: int) -> Qwen2Tokenizer:
    """A byte-level BPE with Qwen2's pre-tokenization and ChatML special tokens, as a Qwen2Tokenizer."""
    bpe = Tokenizer(models.BPE())
    bpe.normalizer = normalizers.NFC()
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte: any text encodes
        show_progress=False,
    )
    bpe.train_from_iterator(texts, trainer)
    trained = json.loads(bpe.to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ", 1)) for m in trained["merges"]]
    # Rebuilt through Qwen2Tokenizer itself, so what is saved is exactly what will be loaded.
    tokenizer = Qwen2Tokenizer(
        vocab=trained["vocab"],
        merges=merges,
        unk_token=None,
        eos_token=IM_END,  # the end of an assistant turn ends generation, as in Qwen2.5-Instruct
        pad_token=ENDOFTEXT,
        additional_special_tokens=[IM_START, IM_END],
        model_max_length=TinySpec.max_position_embeddings,
    )
    tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer


def build_tiny_model(out: Path, texts: Iterable[str] | None = None, spec: TinySpec | None = None) -> Path:
    """Write a randomly initialised (seeded) Qwen2-style model and its tokenizer into `out`.

    `texts` train the tokenizer; the example dataset's text when None."""
    spec = spec or TinySpec()
    texts = dataset_texts(EXAMPLE_DATASET) if texts is None else texts
    tokenizer = train_tokenizer(texts, spec.vocab_size)
    ids = tokenizer.convert_tokens_to_ids(SPECIAL_TOKENS)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_hidden_layers,
        num_attention_heads=spec.num_attention_heads,
        num_key_value_heads=spec.num_key_value_heads,
        max_position_embeddings=spec.max_position_embeddings,
        tie_word_embeddings=True,
        initializer_range=spec.initializer_range,
        bos_token_id=None,
        eos_token_id=ids[2],
        pad_token_id=ids[0],
    )
    torch.manual_seed(spec.seed)
    model = Qwen2ForCausalLM(config)
    model.generation_config = GenerationConfig(
        eos_token_id=[ids[2], ids[0]], pad_token_id=ids[0], bos_token_id=None, do_sample=False
    )
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def parameter_count(model: torch.nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def special_token_ids(tokenizer: Qwen2Tokenizer, names: Sequence[str] = SPECIAL_TOKENS) -> list[int]:
    return list(tokenizer.convert_tokens_to_ids(list(names)))


def pretrain_tiny_model(model_dir: Path, samples: Sequence[Sample], epochs: float, learning_rate: float = 3e-3) -> None:
    """Train every weight of the tiny model on whole chat-formatted conversations, in place.

    A random model is no base to fine-tune from: it knows neither the language nor where a turn ends. A short
    pass over the dataset's conversations makes it a small "instruct" model, as a downloaded base would be."""
    import tempfile

    from engine.train.sft import build_trainer  # TRL's import takes seconds; building a model needs none of it

    recipe = Recipe(
        model_name_or_path=str(model_dir),
        finetuning_type="full",
        train_on_prompt=True,
        num_train_epochs=epochs,
        learning_rate=learning_rate,
        per_device_train_batch_size=8,
        gradient_accumulation_steps=1,
        logging_steps=10**6,
        save_steps=10**6,
        cutoff_len=1024,
    )
    tokenizer = load_tokenizer(model_dir)
    with tempfile.TemporaryDirectory() as scratch:
        trainer = build_trainer(recipe, tokenizer, prepare_data(list(samples), [], tokenizer, recipe), Path(scratch))
        trainer.train()
        trainer.model.save_pretrained(str(model_dir))
