"""The wire format of `tuneloop serve`: OpenAI's chat and completions requests and responses, vLLM's LoRA
admin requests, and vLLM's error bodies, as pydantic models.

Fields mirror vLLM's OpenAI server (vllm/entrypoints/openai/protocol.py), so that what a client sends to
vLLM it can send here, and what it reads back parses the same. Request fields this server does not act on
(`user`, `presence_penalty`, ...) are accepted and ignored, as vLLM ignores those it does not know."""

import time
import uuid
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

# The request body cap of `tuneloop serve` and the gateway: far above any context window's worth of text (128k tokens
# is well under 1 MiB), far below what stalls a server.
DEFAULT_MAX_REQUEST_BYTES = 4 * 1024 * 1024
# How long a prompt may take to template and tokenize: a real chat template renders a context window in milliseconds.
DEFAULT_RENDER_TIMEOUT_S = 10.0


class ErrorFormat(StrEnum):
    """`nested`: {"error": {...}}, vLLM since v0.10 (and OpenAI). `flat`: {"object": "error", ...}, older vLLM."""

    NESTED = "nested"
    FLAT = "flat"


class ServeError(Exception):
    """A request that fails with an HTTP status and a vLLM-style error body."""

    status_code = 500
    error_type = "InternalServerError"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadRequestError(ServeError):
    status_code = 400
    error_type = "BadRequestError"


class InvalidUserInputError(BadRequestError):
    """vLLM's type for a LoRA admin request missing a name or path, or naming an adapter already loaded."""

    error_type = "InvalidUserInput"


class NotFoundError(ServeError):
    status_code = 404
    error_type = "NotFoundError"


def error_body(message: str, error_type: str, status_code: int, error_format: ErrorFormat) -> dict:
    """vLLM's ErrorResponse in the chosen shape; the openai client reads either (it unwraps "error")."""
    fields = {"message": message, "type": error_type, "param": None, "code": status_code}
    if error_format is ErrorFormat.FLAT:
        return {"object": "error", **fields}
    return {"error": fields}


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def now() -> int:
    return int(time.time())


# LoRA admin (vLLM: LoadLoRAAdapterRequest, UnloadLoRAAdapterRequest)


class LoadLoRAAdapterRequest(BaseModel):
    lora_name: str
    lora_path: str


class UnloadLoRAAdapterRequest(BaseModel):
    lora_name: str
    lora_int_id: int | None = None  # vLLM accepts it; names are what identify adapters here


# Requests


class ChatMessage(BaseModel):
    """One message; extra keys (tool_calls, tool_call_id, name) pass through to the chat template."""

    model_config = ConfigDict(extra="allow")

    role: str
    content: str | list[dict[str, Any]] | None = None

    def template_dict(self) -> dict:
        """The message as a chat template reads it: content as one string, text parts joined."""
        message = self.model_dump(exclude_none=True)
        if isinstance(self.content, list):
            texts = []
            for part in self.content:
                if part.get("type") != "text" or not isinstance(part.get("text"), str):
                    raise BadRequestError(f"only text content parts are supported, got type {part.get('type')!r}")
                texts.append(part["text"])
            message["content"] = "\n".join(texts)
        return message


class StreamOptions(BaseModel):
    include_usage: bool = False


class SamplingRequest(BaseModel):
    """What chat and completions requests share."""

    model: str
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    seed: int | None = Field(default=None, ge=-(2**63), le=2**63 - 1)  # vLLM's range: a 64-bit integer
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = 1

    @field_validator("n")
    @classmethod
    def one_choice(cls, n: int) -> int:
        if n != 1:
            raise ValueError("only n=1 is supported")
        return n

    def stop_strings(self) -> tuple[str, ...]:
        stops = [self.stop] if isinstance(self.stop, str) else self.stop or []
        return tuple(s for s in stops if s)

    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage


class ChatCompletionRequest(SamplingRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)

    def completion_limit(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


class CompletionRequest(SamplingRequest):
    prompt: str | list[str]

    def prompt_text(self) -> str:
        if isinstance(self.prompt, str):
            return self.prompt
        if len(self.prompt) != 1:
            raise BadRequestError("only one prompt per request is supported")
        return self.prompt[0]

    def completion_limit(self) -> int | None:
        return self.max_tokens


# Responses

FinishReason = Literal["stop", "length"]


class UsageInfo(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = Field(default_factory=now)
    owned_by: str = "vllm"
    root: str
    parent: str | None = None
    max_model_len: int | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatCompletionChoice(BaseModel):
    index: int = 0
    message: AssistantMessage
    logprobs: None = None
    finish_reason: FinishReason
    stop_reason: str | None = None  # the stop string that ended the answer, as vLLM reports it


class ChatCompletionResponse(BaseModel):
    id: str = Field(default_factory=lambda: new_id("chatcmpl"))
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=now)
    model: str
    choices: list[ChatCompletionChoice]
    usage: UsageInfo


class ChatCompletionStreamChoice(BaseModel):
    index: int = 0
    delta: dict[str, str]  # {"role": "assistant", "content": ""} first, then {"content": "..."}, then {}
    logprobs: None = None
    finish_reason: FinishReason | None = None
    stop_reason: str | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatCompletionStreamChoice]
    usage: UsageInfo | None = None


class CompletionChoice(BaseModel):
    index: int = 0
    text: str
    logprobs: None = None
    finish_reason: FinishReason | None = None
    stop_reason: str | None = None


class CompletionResponse(BaseModel):
    """Also a streamed chunk (vLLM streams text_completion objects too), with `usage` only where it is due."""

    id: str = Field(default_factory=lambda: new_id("cmpl"))
    object: Literal["text_completion"] = "text_completion"
    created: int = Field(default_factory=now)
    model: str
    choices: list[CompletionChoice]
    usage: UsageInfo | None = None


class ServerStats(BaseModel):
    """Ours, not vLLM's: how requests were batched (`batches` counts `generate` calls)."""

    requests: int = 0
    batches: int = 0
    largest_batch: int = 0
    loaded_adapters: int = 0
    resident_adapters: int = 0  # of the loaded, those whose weights are in memory (at most --max-loras)
    adapter_reloads: int = 0  # evicted adapters read again for a request
