"""The served model and the scheduler that batches requests into it.

    requests (any mix of base and adapters) → a short window collects up to `max_batch_size` of them that
    sample alike → ONE `generate` call, rows left-padded, PEFT's mixed-adapter batch (`adapter_names`, one per
    row, "__base__" for the base) → a stopping criterion called every step pushes each row's new text to its
    request's asyncio queue and ends rows one by one (stop token, stop string, token limit, client gone).

One worker thread owns the model: generation runs off the event loop, and loading or unloading an adapter
is queued on the same thread, between batches, so a request never meets a half-loaded adapter. Queue order
is kept across an adapter change: requests queued before it run before it, those after it run after it.

Greedy answers do not depend on what they were batched with (left padding plus the attention mask, exact in
float32, see engine/evaluate/generate.py). Sampling draws from one random stream for the whole batch, so
requests batch only with requests that sample alike, and a seeded sampled request runs alone after
`torch.manual_seed(seed)`: the same seed gives the same answer whatever else the server is doing.
"""

import asyncio
import concurrent.futures
import contextlib
import json
import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    PreTrainedTokenizerBase,
    StoppingCriteria,
    StoppingCriteriaList,
)

from engine.serve.protocol import BadRequestError, InvalidUserInputError, NotFoundError, ServeError, ServerStats, now
from engine.train.eos import eos_ids
from engine.train.prepare import PrepareError, end_of_turn_token

logger = logging.getLogger("tuneloop.serve")

BASE_ADAPTER = "__base__"  # PEFT's name for "no adapter" in a mixed batch
ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
T = TypeVar("T")


@dataclass(frozen=True)
class Sampling:
    temperature: float  # 0: greedy
    top_p: float = 1.0
    seed: int | None = None

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def generation_config(self, max_new_tokens: int, pad_token_id: int) -> GenerationConfig:
        # No eos_token_id: rows end in StreamRows, each at its own model's stop tokens.
        return GenerationConfig(
            max_new_tokens=max_new_tokens,
            do_sample=not self.greedy,
            temperature=None if self.greedy else self.temperature,
            top_p=None if self.greedy else self.top_p,
            top_k=None,
            pad_token_id=pad_token_id,
        )


@dataclass(frozen=True)
class TextDelta:
    text: str


@dataclass(frozen=True)
class Finished:
    reason: str  # "stop" | "length"
    stop_reason: str | None  # the stop string that matched
    completion_tokens: int  # the stop token included


@dataclass(frozen=True)
class Failed:
    error: ServeError


GenerationEvent = TextDelta | Finished | Failed


@dataclass
class ModelEntry:
    """A name requests may ask for: the base model, or a loaded adapter on it."""

    name: str
    path: Path
    tokenizer: PreTrainedTokenizerBase  # the adapter's own (its chat template) when saved beside it
    stop_token_ids: frozenset[int]
    adapter: bool
    rank: int | None = None
    created: int = field(default_factory=now)


@dataclass
class GenerationJob:
    """One request's generation, and the queue its text and end arrive on."""

    prompt_ids: list[int]
    model: ModelEntry
    max_new_tokens: int
    sampling: Sampling
    stop_strings: tuple[str, ...]
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    cancelled: bool = False  # set by the request's handler when its client has gone

    def emit(self, event: GenerationEvent) -> None:
        """Called on the worker thread; the queue belongs to the event loop."""
        self.loop.call_soon_threadsafe(self.events.put_nowait, event)

    def batches_with(self, other: "GenerationJob") -> bool:
        if self.sampling.greedy or other.sampling.greedy:
            return self.sampling.greedy and other.sampling.greedy
        unseeded = self.sampling.seed is None and other.sampling.seed is None
        return unseeded and self.sampling == other.sampling


class AnswerStream:
    """One row of a batch: its tokens become text deltas, and the row ends at a stop token, a stop string or
    its token limit. Text is decoded from all the row's tokens each step and only a settled suffix is sent:
    never half of a multi-byte character (a trailing U+FFFD) nor what may be the start of a stop string."""

    def __init__(self, job: GenerationJob) -> None:
        self.job = job
        self.ids: list[int] = []
        self.tokens = 0
        self.sent = ""
        self.done = False

    def push(self, token_id: int) -> None:
        if self.done:
            return
        if self.job.cancelled:
            self.done = True
            return
        self.tokens += 1
        if token_id in self.job.model.stop_token_ids:
            self._finish(self._text(), "stop")
            return
        self.ids.append(token_id)
        text = self._text()
        hits = [(text.find(stop), stop) for stop in self.job.stop_strings if stop in text]
        if hits:
            index, stop = min(hits)
            self._finish(text[:index], "stop", stop)
        elif self.tokens >= self.job.max_new_tokens:
            self._finish(text, "length")
        else:
            self._send(text[: self._settled(text)])

    def close(self) -> None:
        """End a row `generate` stopped before the row itself did."""
        if not self.done:
            self._finish(self._text(), "length")

    def fail(self, error: ServeError) -> None:
        if not self.done:
            self.done = True
            self.job.emit(Failed(error))

    def _text(self) -> str:
        return self.job.model.tokenizer.decode(self.ids, skip_special_tokens=True)

    def _settled(self, text: str) -> int:
        end = len(text.rstrip("\ufffd"))
        for stop in self.job.stop_strings:
            for length in range(min(len(stop) - 1, end), 0, -1):
                if stop.startswith(text[end - length : end]):
                    end -= length
                    break
        return end

    def _send(self, text: str) -> None:
        if len(text) > len(self.sent):
            self.job.emit(TextDelta(text[len(self.sent) :]))
            self.sent = text

    def _finish(self, text: str, reason: str, stop_reason: str | None = None) -> None:
        self._send(text)
        self.done = True
        self.job.emit(Finished(reason, stop_reason, self.tokens))


class StreamRows(StoppingCriteria):
    """Called by `generate` after every step with the batch's tokens so far: feeds each row its new token and
    tells `generate` which rows are done (it stops when all are)."""

    def __init__(self, rows: Sequence[AnswerStream]) -> None:
        self.rows = rows

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any) -> torch.BoolTensor:
        for row, token_id in zip(self.rows, input_ids[:, -1].tolist(), strict=True):
            row.push(token_id)
        return torch.tensor([row.done for row in self.rows], dtype=torch.bool, device=input_ids.device)


def model_stop_token_ids(tokenizer: PreTrainedTokenizerBase, generation_config: GenerationConfig) -> frozenset[int]:
    """The generation config's EOS ids, the tokenizer's EOS, and the chat template's end-of-turn token."""
    ids = set(eos_ids(generation_config))
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    # A template that writes no special token after an answer (PrepareError) leaves EOS to end it.
    with contextlib.suppress(PrepareError):
        if tokenizer.chat_template:
            ids.add(tokenizer.convert_tokens_to_ids(end_of_turn_token(tokenizer)))
    return frozenset(ids)


def adapter_rank(config: dict) -> int:
    """The largest rank in an adapter_config.json (`r`, or any layer's rank in `rank_pattern`)."""
    return max([int(config.get("r", 0)), *(int(r) for r in (config.get("rank_pattern") or {}).values())])


class ServedModel:
    """The base model and its LoRA adapters. Only the scheduler's worker thread may change or run it."""

    def __init__(self, path: Path, name: str, *, device: str, max_lora_rank: int = 16, max_loras: int = 8) -> None:
        dtype = torch.bfloat16 if device.startswith("cuda") and torch.cuda.is_bf16_supported() else torch.float32
        self.model: Any = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype).to(device).eval()
        tokenizer = AutoTokenizer.from_pretrained(str(path))
        self.base = ModelEntry(
            name, path, tokenizer, model_stop_token_ids(tokenizer, self.model.generation_config), False
        )
        # Stops are per row (StreamRows); generate's own EOS check would end every row at any row's EOS.
        self.model.generation_config.eos_token_id = None
        self.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0  # masked out anyway
        self.max_model_len: int = self.model.config.max_position_embeddings
        self.max_lora_rank = max_lora_rank
        self.max_loras = max_loras
        self.adapters: dict[str, ModelEntry] = {}  # every loaded name, listed whether or not its weights are in memory
        # The names whose weights are in the model (at most max_loras), least recently used first.
        self.resident: OrderedDict[str, None] = OrderedDict()
        self.reloads = 0  # weights read again for a request after they were evicted

    def resolve(self, name: str) -> ModelEntry:
        if name == self.base.name:
            return self.base
        if name in self.adapters:
            return self.adapters[name]
        raise NotFoundError(f"The model `{name}` does not exist.")

    def load_adapter(self, name: str, path: str) -> ModelEntry:
        """vLLM's checks, in vLLM's order and words, then the weights into the PEFT model. As in vLLM, a full
        `max_loras` evicts the least recently used adapter's weights: it stays listed, and a request for it reads
        them again from its path."""
        if not name or not path:
            raise InvalidUserInputError("Both 'lora_name' and 'lora_path' must be provided.")
        if name in self.adapters:
            raise InvalidUserInputError(f"The lora adapter '{name}' has already been loaded.")
        if name in (self.base.name, BASE_ADAPTER):
            raise BadRequestError(f"'{name}' names the base model; choose another lora_name.")
        directory = Path(path)
        config_path = directory / "adapter_config.json"
        if not config_path.is_file():
            raise NotFoundError(f"Loading lora {name} failed: No adapter found for {path}")
        try:
            config = json.loads(config_path.read_text(encoding="utf-8"))
            rank = adapter_rank(config)
        except (ValueError, TypeError, AttributeError) as error:
            raise BadRequestError(f"Loading lora {name} failed: invalid adapter_config.json: {error}") from None
        if config.get("peft_type", "LORA") != "LORA":
            raise BadRequestError(f"Loading lora {name} failed: a {config['peft_type']} adapter, not LoRA")
        if rank > self.max_lora_rank:
            raise BadRequestError(f"LoRA rank {rank} is greater than max_lora_rank {self.max_lora_rank}.")
        try:
            entry = self._adapter_entry(name, directory, rank)
            self._make_resident(entry, keep=())
        except Exception as error:  # vLLM answers a failed add_lora (shapes that do not fit...) with a 400
            raise BadRequestError(f"Loading lora {name} failed: {error}") from error
        self.adapters[name] = entry
        logger.info("Loaded new LoRA adapter: name '%s', path '%s', rank %d", name, path, rank)
        return entry

    def unload_adapter(self, name: str) -> None:
        if not name:
            raise InvalidUserInputError("'lora_name' needs to be provided to unload a LoRA adapter.")
        if name not in self.adapters:
            raise NotFoundError(f"The lora adapter '{name}' cannot be found.")
        if name in self.resident:
            self._drop_weights(name)
        del self.adapters[name]
        logger.info("Removed LoRA adapter: name '%s'", name)

    def make_resident(self, entries: Sequence[ModelEntry]) -> None:
        """The weights of every adapter in a batch in memory (read again where they were evicted), each marked as
        just used. The batch holds at most `max_loras` adapters (the scheduler sees to it)."""
        names = {entry.name for entry in entries if entry.adapter}
        for name in names:
            if name not in self.adapters:
                raise NotFoundError(f"The model `{name}` does not exist.")
            if name in self.resident:
                self.resident.move_to_end(name)
            else:
                self._make_resident(self.adapters[name], keep=names)
                self.reloads += 1
                logger.info("Reloaded evicted LoRA adapter '%s' from '%s'", name, self.adapters[name].path)

    def _make_resident(self, entry: ModelEntry, keep: Collection[str]) -> None:
        """Load `entry`'s weights, first evicting the least recently used adapters not in `keep` while full."""
        for victim in [name for name in self.resident if name not in keep]:
            if len(self.resident) < self.max_loras:
                break
            self._drop_weights(victim)
            logger.info("Evicted LoRA adapter '%s' (max_loras %d); it reloads when asked for", victim, self.max_loras)
        self._load_weights(entry.name, entry.path)
        self.resident[entry.name] = None

    def _drop_weights(self, name: str) -> None:
        if len(self.resident) == 1:
            self.model = self.model.unload()  # a PEFT model cannot run with no adapter: back to the bare base
        else:
            self.model.delete_adapter(name)
        del self.resident[name]

    def _adapter_entry(self, name: str, directory: Path, rank: int) -> ModelEntry:
        """The adapter's own tokenizer and generation config where training saved them, else the base's."""
        tokenizer = self.base.tokenizer
        if (directory / "tokenizer_config.json").is_file():
            tokenizer = AutoTokenizer.from_pretrained(str(directory))
        stops = self.base.stop_token_ids
        if (directory / "generation_config.json").is_file():
            stops = model_stop_token_ids(tokenizer, GenerationConfig.from_pretrained(str(directory)))
        return ModelEntry(name, directory, tokenizer, stops, True, rank)

    def _load_weights(self, name: str, directory: Path) -> None:
        """The adapter's weights into the model; on failure (e.g. an adapter for another base: shapes differ)
        the model is left exactly as it was, without the adapter's layers half in place."""
        from peft import LoraConfig, PeftModel, get_peft_model

        if not any((directory / weights).is_file() for weights in ADAPTER_WEIGHTS):
            raise ValueError(f"{directory} holds no {' or '.join(ADAPTER_WEIGHTS)}")
        if isinstance(self.model, PeftModel):
            try:
                self.model.load_adapter(str(directory), adapter_name=name, low_cpu_mem_usage=True)
            except Exception:
                if name in self.model.peft_config:
                    self.model.delete_adapter(name)
                raise
        else:
            # PeftModel.from_pretrained would lose the wrapped model on failure, with layers injected into it.
            config = LoraConfig.from_pretrained(str(directory))
            config.inference_mode = True
            peft_model = get_peft_model(self.model, config, adapter_name=name, low_cpu_mem_usage=True)
            try:
                peft_model.load_adapter(str(directory), adapter_name=name, low_cpu_mem_usage=True)
            except Exception:
                peft_model.unload()  # strips the injected layers from the base model, in place
                raise
            self.model = peft_model
        self.model.eval()

    def generate(self, jobs: Sequence[GenerationJob]) -> None:
        """Generate for a batch of jobs that sample alike, in one `generate` call; events go to each job."""
        rows = [AnswerStream(job) for job in jobs]
        try:
            self.make_resident([job.model for job in jobs])
        except Exception as error:  # an evicted adapter whose files are gone, or one unloaded meanwhile
            logger.exception("cannot put the batch's adapters in memory")
            # The cause may name files: it stays in the log.
            failure = error if isinstance(error, ServeError) else ServeError("Loading the adapter failed; see the log.")
            for row in rows:
                row.fail(failure)
            return
        width = max(len(job.prompt_ids) for job in jobs)
        input_ids = [[self.pad_token_id] * (width - len(job.prompt_ids)) + job.prompt_ids for job in jobs]
        attention_mask = [[0] * (width - len(job.prompt_ids)) + [1] * len(job.prompt_ids) for job in jobs]
        sampling = jobs[0].sampling
        options: dict[str, Any] = {}
        if self.resident:
            options["adapter_names"] = [job.model.name if job.model.adapter else BASE_ADAPTER for job in jobs]
        device = self.model.device
        try:
            if sampling.seed is not None and not sampling.greedy:
                torch.manual_seed(sampling.seed)
            with torch.inference_mode():
                self.model.generate(
                    input_ids=torch.tensor(input_ids, device=device),
                    attention_mask=torch.tensor(attention_mask, device=device),
                    generation_config=sampling.generation_config(
                        max(j.max_new_tokens for j in jobs), self.pad_token_id
                    ),
                    stopping_criteria=StoppingCriteriaList([StreamRows(rows)]),
                    **options,
                )
        except Exception:
            logger.exception("generation failed")
            for row in rows:
                row.fail(ServeError("Generation failed; see the server's log."))
            return
        for row in rows:  # every row ends by its own limit, which is at most generate's; a guard all the same
            row.close()


@dataclass
class _Call:
    """Work other than generation (an adapter load or unload), run on the worker thread between batches."""

    function: Callable[[], Any]
    future: concurrent.futures.Future


class BatchScheduler:
    """Queues requests and adapter changes for the one worker thread that runs the model."""

    def __init__(self, served: ServedModel, max_batch_size: int = 8, window_s: float = 0.01) -> None:
        self.served = served
        self.max_batch_size = max_batch_size
        self.window_s = window_s
        self.stats = ServerStats()
        self._pending: deque[GenerationJob | _Call] = deque()
        self._ready = threading.Condition()
        self._worker = threading.Thread(target=self._work, name="tuneloop-generate", daemon=True)
        self._worker.start()

    def submit(self, job: GenerationJob) -> None:
        with self._ready:
            self._pending.append(job)
            self._ready.notify()

    async def call(self, function: Callable[[], T]) -> T:
        """Run `function` on the worker thread, after everything queued before it; its result or exception."""
        future: concurrent.futures.Future = concurrent.futures.Future()
        with self._ready:
            self._pending.append(_Call(function, future))
            self._ready.notify()
        return await asyncio.wrap_future(future)

    def _work(self) -> None:
        while True:
            work = self._next()
            if isinstance(work, _Call):
                try:
                    work.future.set_result(work.function())
                except BaseException as error:
                    work.future.set_exception(error)
                continue
            self.stats.requests += len(work)
            self.stats.batches += 1
            self.stats.largest_batch = max(self.stats.largest_batch, len(work))
            names = ", ".join(job.model.name for job in work)
            logger.info("batch %d: %d request(s) in one generate call [%s]", self.stats.batches, len(work), names)
            began = time.perf_counter()
            self.served.generate(work)
            logger.info("batch %d done in %.2f s", self.stats.batches, time.perf_counter() - began)

    def _next(self) -> list[GenerationJob] | _Call:
        """The next call, or the next batch: the oldest job and, after a short wait for company, the queued jobs
        that batch with it, up to an adapter change (a barrier) and `max_batch_size`."""
        with self._ready:
            self._ready.wait_for(lambda: self._pending)
            first = self._pending.popleft()
            if isinstance(first, _Call):
                return first
            self._ready.wait_for(lambda: self._companions(first) >= self.max_batch_size - 1, timeout=self.window_s)
            batch, kept = [first], deque()
            adapters = {first.model.name} if first.model.adapter else set()
            while self._pending and len(batch) < self.max_batch_size:
                item = self._pending.popleft()
                if isinstance(item, _Call):
                    self._pending.appendleft(item)
                    break
                # No more adapters in one batch than fit in memory at once (vLLM's --max-loras).
                new_adapter = item.model.adapter and item.model.name not in adapters
                if item.batches_with(first) and not (new_adapter and len(adapters) >= self.served.max_loras):
                    batch.append(item)
                    adapters |= {item.model.name} if item.model.adapter else set()
                else:
                    kept.append(item)
            self._pending.extendleft(reversed(kept))
            return batch

    def _companions(self, first: GenerationJob) -> int:
        count = 0
        for item in self._pending:
            if isinstance(item, _Call):
                break
            count += item.batches_with(first)
        return count
