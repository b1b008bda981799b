"""Answers to the test questions from the base model and from base+adapter, batched.

    test samples → prompts (the messages before the last assistant turn, the model's own chat template
    with its generation prompt) → batches sorted by prompt length, left-padded → greedy (or seeded
    sampling) generation that stops at the template's end-of-turn token → answer text, tokens, seconds.

The base model is loaded once; base answers are generated with the adapter switched off
(`PeftModel.disable_adapter()`) and tuned answers with it on, so one evaluation never holds two copies.

Timing: a batch's wall time is shared equally among its samples (`seconds` is each sample's share of the
batch it ran in, not a single-request latency), and tokens/s counts generated tokens, end token included,
over the whole pass. Greedy answers do not depend on the batch size: left padding plus the attention mask
(from which generation derives position ids) make a padded prompt decode as it would alone, exactly so in
float32 (the tests); in bfloat16 on a GPU, rounding that differs with the batch's shape can flip a near tie.
"""

import contextlib
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, GenerationConfig, PreTrainedModel, PreTrainedTokenizerBase

from engine.data.sample import Sample
from engine.evaluate.results import Answer, GeneratedSample, Generation, GenerationSettings, PassStats
from engine.events import EventSink, ignore_events, progress_event
from engine.train.prepare import end_of_turn_token, load_tokenizer, message_dicts, render


@dataclass
class LoadedModels:
    """The base model with the adapter attached (a PeftModel), or the bare base model when there is none."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    base_model: str
    adapter_dir: Path | None


def prompt_messages(sample: Sample) -> list[dict]:
    """The conversation up to, not including, the last assistant turn."""
    return message_dicts(sample)[: sample.last_assistant_index()]


def prompt_text(tokenizer: PreTrainedTokenizerBase, messages: Sequence[dict], tools: Sequence[dict] | None) -> str:
    """What a model is asked: the conversation as training wrote it (tool definitions included), then the
    generation prompt, so a model is evaluated in the context it was trained in."""
    return render(tokenizer, messages, tools=tools, generation_prompt=True)


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def load_models(
    base_model: str | Path,
    adapter_dir: str | Path | None = None,
    *,
    device: str | None = None,
    dtype: torch.dtype | None = None,
) -> LoadedModels:
    """Load the base model once and attach the adapter to it. The tokenizer (and its chat template) is the
    adapter's when there is one, since training saves the template it used beside the adapter."""
    device = device or default_device()
    if dtype is None:
        dtype = torch.bfloat16 if device.startswith("cuda") and torch.cuda.is_bf16_supported() else torch.float32
    model = AutoModelForCausalLM.from_pretrained(str(base_model), dtype=dtype)
    if adapter_dir is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter_dir))
    model.to(device).eval()
    tokenizer = load_tokenizer(adapter_dir if adapter_dir is not None else base_model)
    return LoadedModels(model, tokenizer, str(base_model), Path(adapter_dir) if adapter_dir is not None else None)


@contextlib.contextmanager
def adapter_disabled(model: PreTrainedModel) -> Iterator[PreTrainedModel]:
    """The base model: the adapter switched off for the duration (a no-op for a model without one)."""
    disable = getattr(model, "disable_adapter", None)
    if disable is None:
        yield model
        return
    with disable():
        yield model


def stop_token_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """The template's end-of-turn token first, then any other EOS the model's generation config names."""
    ids = [tokenizer.convert_tokens_to_ids(end_of_turn_token(tokenizer))]
    configured = model.generation_config.eos_token_id
    configured = [] if configured is None else [configured] if isinstance(configured, int) else list(configured)
    for token_id in [*configured, tokenizer.eos_token_id]:
        if token_id is not None and token_id not in ids:
            ids.append(token_id)
    return ids


def generate_answers(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[Sequence[dict]],
    settings: GenerationSettings = GenerationSettings(),
    *,
    progress: EventSink | None = None,
    project: str = "",
    run: int | None = None,
    stage: str = "generate",
    tools: Sequence[Sequence[dict] | None] | None = None,
) -> tuple[list[Answer], PassStats]:
    """One model's answers to `prompts` (lists of chat messages, each with the tool definitions `tools` gives it),
    in their order, and the pass's totals."""
    if settings.batch_size < 1 or settings.max_new_tokens < 1:
        raise ValueError("batch_size and max_new_tokens must be at least 1")
    stops = stop_token_ids(model, tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[0]
    config = GenerationConfig(
        max_new_tokens=settings.max_new_tokens,
        do_sample=settings.do_sample,
        temperature=settings.temperature if settings.do_sample else None,
        top_p=settings.top_p if settings.do_sample else None,
        top_k=None,
        eos_token_id=stops,
        pad_token_id=pad_id,
    )
    offered = tools if tools is not None else [None] * len(prompts)
    texts = [prompt_text(tokenizer, messages, tools) for messages, tools in zip(prompts, offered, strict=True)]
    lengths = [len(tokenizer(text, add_special_tokens=False)["input_ids"]) for text in texts]
    order = sorted(range(len(texts)), key=lambda i: lengths[i])  # similar lengths share a batch: less padding
    answers: list[Answer | None] = [None] * len(texts)
    stats = PassStats(samples=len(texts))
    torch.manual_seed(settings.seed)
    model.eval()
    for start in range(0, len(order), settings.batch_size):
        batch = order[start : start + settings.batch_size]
        inputs = tokenizer(
            [texts[i] for i in batch],
            return_tensors="pt",
            padding=True,
            padding_side="left",
            add_special_tokens=False,  # the template writes any BOS itself
        ).to(model.device)
        began = time.perf_counter()
        with torch.inference_mode():
            output = model.generate(**inputs, generation_config=config)
        new_tokens = output[:, inputs["input_ids"].shape[1] :].tolist()  # on a GPU, waits for the batch to finish
        seconds = time.perf_counter() - began
        for i, ids in zip(batch, new_tokens, strict=True):
            answers[i] = _answer(tokenizer, ids, stops, seconds / len(batch))
            stats.tokens += answers[i].tokens
            stats.stopped += answers[i].stopped
        stats.seconds += seconds
        if progress is not None:
            done = min(start + settings.batch_size, len(order))
            progress(progress_event(project, stage, done, len(order), run=run))
    return [a for a in answers if a is not None], stats


def _answer(tokenizer: PreTrainedTokenizerBase, ids: list[int], stops: list[int], seconds: float) -> Answer:
    end = next((n for n, token in enumerate(ids) if token in stops), None)
    kept = ids if end is None else ids[:end]
    text = tokenizer.decode(kept, skip_special_tokens=True).strip()
    return Answer(text=text, tokens=len(kept) + (end is not None), seconds=seconds, stopped=end is not None)


def generate_pairs(
    loaded: LoadedModels,
    samples: Sequence[Sample],
    settings: GenerationSettings = GenerationSettings(),
    *,
    events: EventSink = ignore_events,
    project: str = "",
    run: int | None = None,
) -> Generation:
    """Base and tuned answers to every sample, from one loaded model: the adapter off, then on.

    Without an adapter (`loaded.adapter_dir` None) the tuned answers are the base answers."""
    prompts = [prompt_messages(sample) for sample in samples]
    tools = [sample.tools or None for sample in samples]
    with adapter_disabled(loaded.model) as base:
        base_answers, base_stats = generate_answers(
            base,
            loaded.tokenizer,
            prompts,
            settings,
            progress=events,
            project=project,
            run=run,
            stage="generate_base",
            tools=tools,
        )
    if loaded.adapter_dir is None:
        tuned_answers, tuned_stats = base_answers, base_stats
    else:
        tuned_answers, tuned_stats = generate_answers(
            loaded.model,
            loaded.tokenizer,
            prompts,
            settings,
            progress=events,
            project=project,
            run=run,
            stage="generate_tuned",
            tools=tools,
        )
    generated = [
        GeneratedSample(
            index=index,
            question=sample.prompt_text(),
            reference=sample.answer_text(),
            prompt=prompt,
            tags=list(sample.tags),
            base_answer=base_answer.text,
            tuned_answer=tuned_answer.text,
            base_tokens=base_answer.tokens,
            tuned_tokens=tuned_answer.tokens,
            base_seconds=base_answer.seconds,
            tuned_seconds=tuned_answer.seconds,
            base_stopped=base_answer.stopped,
            tuned_stopped=tuned_answer.stopped,
            tools=sample.tools or None,
        )
        for index, (sample, prompt, base_answer, tuned_answer) in enumerate(
            zip(samples, prompts, base_answers, tuned_answers, strict=True)
        )
    ]
    return Generation(generated, settings, base_stats, tuned_stats)
