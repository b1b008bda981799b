"""Samples → token ids and labels, with the model's own chat template.

The loss mask is computed here, not assumed from the template: each assistant turn's characters are
found by rendering the conversation up to that turn with and without it (the difference is the turn), and
a token is trained on when it starts inside such a span. The span is the answer plus the template's
end-of-turn token, so the model learns to stop; the newline the template writes after it is not.
"""

import json
import socket
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from datasets import Dataset
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from engine.data.sample import Sample
from engine.train.llamafactory import OWN_TEMPLATES
from engine.train.recipe import Recipe
from engine.train.templates import NAMED_TEMPLATES

IGNORE_INDEX = -100
_SENTINEL = "\x00tuneloop-answer\x00"


class PrepareError(ValueError):
    """Samples that cannot be turned into training data (no template, nothing to train on...)."""


@dataclass
class Tokenized:
    input_ids: list[int]
    labels: list[int]
    truncated: bool = False


@dataclass
class PreparedData:
    train: Dataset
    validation: Dataset | None
    stats: dict[str, Any] = field(default_factory=dict)


def resolve_chat_template(tokenizer: PreTrainedTokenizerBase, template: str | None) -> str:
    """The recipe's `template`: the tokenizer's own when None or a LLaMA-Factory name of a model's own template
    (`qwen3`, `llama3`, ...), a named one, or a .jinja file."""
    if template is None or template in OWN_TEMPLATES:
        if not tokenizer.chat_template:
            means = f"template: {template} means the model's own chat template, but " if template else "the "
            raise PrepareError(f"{means}tokenizer has no chat template; set `template` in the recipe (e.g. chatml)")
        return tokenizer.chat_template
    if template in NAMED_TEMPLATES:
        return NAMED_TEMPLATES[template]
    path = Path(template)
    if path.suffix in (".jinja", ".j2") and path.is_file():
        return path.read_text(encoding="utf-8")
    names = ", ".join(NAMED_TEMPLATES)
    raise PrepareError(f"unknown template '{template}': use {names}, a .jinja file, or leave it unset")


def local_model(name: str) -> str:
    """`name` as a folder this machine loads without the network: itself, or a hub id's copy in the local hub cache.
    A hub id with neither, where the hub cannot be reached, is refused in a sentence, not after minutes of retries."""
    if Path(name).is_dir():
        return name
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    try:
        return snapshot_download(name, local_files_only=True)
    except HFValidationError:
        raise PrepareError(f"model_name_or_path '{name}': no such folder") from None
    except LocalEntryNotFoundError:
        pass
    if constants.HF_HUB_OFFLINE or not _reachable(urlparse(constants.ENDPOINT).hostname or "huggingface.co"):
        raise PrepareError(
            f"model_name_or_path '{name}' is not a folder here and the hub is unreachable: "
            "pass --base-model DIR or a local folder"
        )
    return name


def _reachable(host: str) -> bool:
    try:
        socket.create_connection((host, 443), timeout=3).close()
    except OSError:
        return False
    return True


def load_tokenizer(model_path: str | Path, template: str | None = None) -> PreTrainedTokenizerBase:
    """The model's tokenizer with the recipe's chat template set on it (it is saved with the adapter)."""
    tokenizer = AutoTokenizer.from_pretrained(str(model_path))
    tokenizer.chat_template = resolve_chat_template(tokenizer, template)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def render(
    tokenizer: PreTrainedTokenizerBase,
    messages: Sequence[dict],
    *,
    tools: Sequence[dict] | None = None,
    generation_prompt: bool = False,
) -> str:
    """The conversation as the chat template writes it, tool definitions included (`tools=`, as in transformers)."""
    return tokenizer.apply_chat_template(
        list(messages), tools=list(tools) if tools else None, tokenize=False, add_generation_prompt=generation_prompt
    )


def end_of_turn_token(tokenizer: PreTrainedTokenizerBase) -> str:
    """The special token the template writes right after an assistant's answer (`<|im_end|>` in ChatML)."""
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": _SENTINEL}]
    text = render(tokenizer, messages)
    after = text[text.index(_SENTINEL) + len(_SENTINEL) :]
    specials = sorted(tokenizer.all_special_tokens, key=len, reverse=True)
    for token in specials:
        if token and after.startswith(token):
            return token
    raise PrepareError(f"the chat template writes no special token after an answer (it writes {after[:20]!r})")


def message_dicts(sample: Sample) -> list[dict]:
    """The sample's messages as chat templates take them: a tool call's arguments as an object, as transformers'
    templates expect (a sample keeps them as JSON text, OpenAI's spelling, which `tojson` would encode twice)."""
    messages = [m.model_dump(exclude_none=True) for m in sample.messages]
    for message in messages:
        for call in message.get("tool_calls", []):
            with suppress(ValueError):
                arguments = json.loads(call["function"]["arguments"])
                if isinstance(arguments, dict):
                    call["function"]["arguments"] = arguments
    return messages


def check_renders_tools(tokenizer: PreTrainedTokenizerBase, sample: Sample) -> None:
    """A template that ignores `tools` would train the model to call functions it was never shown."""
    messages = message_dicts(sample)
    if render(tokenizer, messages, tools=sample.tools) == render(tokenizer, messages):
        raise PrepareError(
            "the chat template does not write tool definitions, and the data has samples with tools: "
            "set `template: qwen` (or a .jinja template that renders `tools`)"
        )


def assistant_spans(
    tokenizer: PreTrainedTokenizerBase, messages: Sequence[dict], eot: str, tools: Sequence[dict] | None = None
) -> tuple[str, list]:
    """The rendered conversation and the [start, end) character span of each assistant turn,
    from the start of its answer through its end-of-turn token."""
    text = render(tokenizer, messages, tools=tools)
    spans = []
    for index, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt = render(tokenizer, messages[:index], tools=tools, generation_prompt=True)
        last = index == len(messages) - 1  # through the last turn is the whole conversation, rendered already
        through = text if last else render(tokenizer, messages[: index + 1], tools=tools)
        if not (through.startswith(prompt) and text.startswith(through)):
            raise PrepareError(
                "the chat template renders a conversation differently from its prefixes; "
                "assistant turns cannot be located for the loss mask"
            )
        end = through.rfind(eot, len(prompt))
        end = end + len(eot) if end >= 0 else len(through.rstrip())
        spans.append((len(prompt), end))
    return text, spans


def tokenize_sample(
    sample: Sample, tokenizer: PreTrainedTokenizerBase, *, cutoff_len: int, train_on_prompt: bool, eot: str
) -> Tokenized:
    """Token ids and labels: labels are -100 outside assistant turns unless `train_on_prompt`."""
    return tokenize_batch([sample], tokenizer, cutoff_len=cutoff_len, train_on_prompt=train_on_prompt, eot=eot)[0]


def tokenize_batch(
    samples: Sequence[Sample], tokenizer: PreTrainedTokenizerBase, *, cutoff_len: int, train_on_prompt: bool, eot: str
) -> list[Tokenized]:
    """`tokenize_sample` for many samples, their texts given to the tokenizer in one call: a fast tokenizer encodes
    a batch on every core, which halves the time before a run's first step spends tokenizing."""
    if not samples:
        return []
    rendered = [assistant_spans(tokenizer, message_dicts(sample), eot, sample.tools) for sample in samples]
    encoded = tokenizer([text for text, _ in rendered], add_special_tokens=False, return_offsets_mapping=True)
    items = []
    for (_, spans), input_ids, offsets in zip(rendered, encoded["input_ids"], encoded["offset_mapping"], strict=True):
        labels = [
            token_id if train_on_prompt or any(a <= start < b for a, b in spans) else IGNORE_INDEX
            for token_id, (start, _end) in zip(input_ids, offsets, strict=True)
        ]
        truncated = len(input_ids) > cutoff_len
        items.append(Tokenized(input_ids[:cutoff_len], labels[:cutoff_len], truncated))
    return items


def tokenize_samples(
    samples: Sequence[Sample], tokenizer: PreTrainedTokenizerBase, recipe: Recipe
) -> tuple[Dataset, dict[str, int]]:
    """A Dataset of `input_ids` and `labels`; samples left with nothing to learn by truncation are dropped."""
    eot = end_of_turn_token(tokenizer)
    with_tools = next((s for s in samples if s.tools), None)
    if with_tools is not None:
        check_renders_tools(tokenizer, with_tools)
    rows: dict[str, list] = {"input_ids": [], "labels": []}
    truncated = dropped = tokens = 0
    undesirable = sum(1 for s in samples if s.label is False)
    preference = sum(1 for s in samples if s.rejected is not None)
    # An answer labelled bad (KTO) is never a target to imitate.
    wanted = [sample for sample in samples if sample.label is not False]
    for item in tokenize_batch(
        wanted, tokenizer, cutoff_len=recipe.cutoff_len, train_on_prompt=recipe.train_on_prompt, eot=eot
    ):
        truncated += item.truncated
        if all(label == IGNORE_INDEX for label in item.labels):
            dropped += 1
            continue
        rows["input_ids"].append(item.input_ids)
        rows["labels"].append(item.labels)
        tokens += len(item.input_ids)
    stats = {
        "samples": len(rows["input_ids"]),
        "truncated": truncated,
        "dropped": dropped,
        "tokens": tokens,
        "labelled_bad": undesirable,
        "preference": preference,
    }
    return Dataset.from_dict(rows), stats


def data_notes(stats: dict[str, int]) -> list[str]:
    """What supervised training did with data made for another kind of training, in a sentence each."""
    notes = []
    if stats.get("labelled_bad"):
        notes.append(
            f"{stats['labelled_bad']} sample(s) labelled bad (KTO label false) were not trained on: "
            "supervised fine-tuning learns only from answers labelled good"
        )
    if stats.get("preference"):
        notes.append(
            f"{stats['preference']} preference sample(s): trained on the chosen answers only; "
            "the rejected answers are not used by supervised fine-tuning"
        )
    return notes


def prepare_data(
    train: Sequence[Sample], validation: Sequence[Sample], tokenizer: PreTrainedTokenizerBase, recipe: Recipe
) -> PreparedData:
    train_set, train_stats = tokenize_samples(train, tokenizer, recipe)  # engine.train.start checked there are some
    if len(train_set) == 0:
        raise PrepareError(f"no training sample has an assistant turn within cutoff_len={recipe.cutoff_len}")
    val_set, val_stats = tokenize_samples(validation, tokenizer, recipe) if validation else (None, {})
    if val_set is not None and len(val_set) == 0:
        val_set = None
    return PreparedData(train_set, val_set, {"train": train_stats, "validation": val_stats})
