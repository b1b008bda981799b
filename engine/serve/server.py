"""`tuneloop serve`: an OpenAI-compatible server for a base model and its LoRA adapters, speaking vLLM's
LoRA admin protocol, so that what deploys to vLLM deploys here (a laptop, CI, the tests) unchanged.

    GET  /health                  200, empty body, once the model is loaded
    GET  /v1/models               the base model, then each loaded adapter (root: its path, parent: the base)
    POST /v1/load_lora_adapter    {"lora_name", "lora_path"} → 200 "Success: LoRA adapter 'x' added successfully."
    POST /v1/unload_lora_adapter  {"lora_name"} → 200 "Success: LoRA adapter 'x' removed successfully."
    POST /v1/chat/completions     OpenAI chat, streamed (SSE) or not; `model` is the base's name or an adapter's
    POST /v1/completions          OpenAI completions, the same
    GET  /stats                   ours, not vLLM's: requests, generate calls (batches), largest batch

vLLM allows the two admin endpoints only with VLLM_ALLOW_RUNTIME_LORA_UPDATING=True; here they are always on, and,
like every /v1 path, they need an API key (engine/serve/guards.py: Bearer, vLLM's --api-key behaviour).
Errors are vLLM's bodies and status codes (400 bad input, 404 unknown model or adapter, 413 a body over the cap,
500 the rest, without its text, which goes to the log), in the nested or flat shape (`--error-format`); request
validation errors are 400s in that shape, not 422s.

The event loop only moves bytes: chat templating and tokenization run in threads of their own (`Renderer`), a few
at a time and each within a time limit, and generation runs on the scheduler's thread, so one huge prompt or a
template that loops does not hold up /health or anyone else's request.
"""

import asyncio
import contextlib
import json
import logging
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from http import HTTPStatus
from pathlib import Path
from typing import TypeVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException

from engine.serve.batching import (
    BatchScheduler,
    Finished,
    GenerationJob,
    ModelEntry,
    Sampling,
    ServedModel,
    TextDelta,
)
from engine.serve.guards import ApiKeyMiddleware
from engine.serve.protocol import (
    DEFAULT_MAX_REQUEST_BYTES,
    DEFAULT_RENDER_TIMEOUT_S,
    AssistantMessage,
    BadRequestError,
    ChatCompletionChoice,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatCompletionStreamChoice,
    CompletionChoice,
    CompletionRequest,
    CompletionResponse,
    ErrorFormat,
    LoadLoRAAdapterRequest,
    ModelCard,
    ModelList,
    SamplingRequest,
    ServeError,
    ServerStats,
    UnloadLoRAAdapterRequest,
    UsageInfo,
    error_body,
    new_id,
    now,
)

logger = logging.getLogger("tuneloop.serve")
Result = TypeVar("Result")

RENDERERS = 4  # templating and tokenization threads at once

# vLLM's words for a tokenizer without a chat template
NO_CHAT_TEMPLATE = (
    "As of transformers v4.44, default chat template is no longer allowed, so you must provide a chat template "
    "if the tokenizer does not define one."
)


class Renderer:
    """Runs chat templating and tokenization off the event loop: at most `threads` at once, each answered within
    `timeout_s`. A thread cannot be stopped, so one past its time keeps its slot until it really ends, and a flood of
    looping templates waits for slots (and times out) instead of starting ever more threads."""

    def __init__(self, threads: int = RENDERERS, timeout_s: float = DEFAULT_RENDER_TIMEOUT_S) -> None:
        self.threads = threads
        self.timeout_s = timeout_s
        self._slots: asyncio.Semaphore | None = None  # made on the server's own event loop

    async def run(self, work: Callable[[], Result]) -> Result:
        loop = asyncio.get_running_loop()
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.threads)
        slots, done = self._slots, loop.create_future()

        def finish(result: Result | None, error: BaseException | None) -> None:  # on the loop
            slots.release()
            if not done.done():
                done.set_exception(error) if error is not None else done.set_result(result)

        def target() -> None:  # on the thread
            try:
                outcome: tuple[Result | None, BaseException | None] = (work(), None)
            except BaseException as error:
                outcome = (None, error)
            with contextlib.suppress(RuntimeError):  # the server is shutting down and its loop is gone
                loop.call_soon_threadsafe(finish, *outcome)

        try:
            async with asyncio.timeout(self.timeout_s):
                await slots.acquire()
                threading.Thread(target=target, name="tuneloop-render", daemon=True).start()
                return await done
        except TimeoutError:
            raise BadRequestError(
                f"The prompt could not be prepared within {self.timeout_s:g} s (chat template and tokenizer)."
            ) from None


def create_app(
    scheduler: BatchScheduler,
    error_format: ErrorFormat = ErrorFormat.NESTED,
    *,
    api_keys: Sequence[str],
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
    renderer: Renderer | None = None,
) -> FastAPI:
    """The server's ASGI app; every /v1 request needs one of `api_keys` (at least one)."""
    served = scheduler.served
    render = renderer or Renderer()
    app = FastAPI(
        title="tuneloop serve", docs_url=None, redoc_url=None, openapi_url=None, max_body_size=max_request_bytes
    )
    app.add_middleware(ApiKeyMiddleware, keys=list(api_keys))

    def error_response(message: str, error_type: str, status_code: int) -> JSONResponse:
        return JSONResponse(error_body(message, error_type, status_code, error_format), status_code=status_code)

    @app.exception_handler(ServeError)
    async def serve_error(request: Request, error: ServeError) -> JSONResponse:
        return error_response(error.message, error.error_type, error.status_code)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, error: RequestValidationError) -> JSONResponse:
        return error_response(validation_message(error), "BadRequestError", 400)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException) -> JSONResponse:
        kind = HTTPStatus(error.status_code).phrase.replace(" ", "")
        return error_response(str(error.detail), kind, error.status_code)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, error: Exception) -> JSONResponse:
        # The text of an unexpected error may name files or internals: it goes to the log, not to the caller.
        logger.error("%s %s failed", request.method, request.url.path, exc_info=error)
        return error_response("Internal server error; see the server's log.", "InternalServerError", 500)

    @app.get("/health")
    async def health() -> Response:
        return Response(status_code=200)

    @app.get("/v1/models")
    async def models() -> ModelList:
        base = served.base
        cards = [ModelCard(id=base.name, root=str(base.path), max_model_len=served.max_model_len, created=base.created)]
        for adapter in list(served.adapters.values()):  # a copy: the worker thread may be changing the dict
            cards.append(ModelCard(id=adapter.name, root=str(adapter.path), parent=base.name, created=adapter.created))
        return ModelList(data=cards)

    @app.post("/v1/load_lora_adapter")
    async def load_lora_adapter(body: LoadLoRAAdapterRequest) -> PlainTextResponse:
        await scheduler.call(lambda: served.load_adapter(body.lora_name, body.lora_path))
        return PlainTextResponse(f"Success: LoRA adapter '{body.lora_name}' added successfully.")

    @app.post("/v1/unload_lora_adapter")
    async def unload_lora_adapter(body: UnloadLoRAAdapterRequest) -> PlainTextResponse:
        await scheduler.call(lambda: served.unload_adapter(body.lora_name))
        return PlainTextResponse(f"Success: LoRA adapter '{body.lora_name}' removed successfully.")

    @app.get("/stats")
    async def stats() -> ServerStats:
        counts = {
            "loaded_adapters": len(served.adapters),
            "resident_adapters": len(served.resident),
            "adapter_reloads": served.reloads,
        }
        return scheduler.stats.model_copy(update=counts)

    @app.post("/v1/chat/completions", response_model=None)
    async def chat_completions(body: ChatCompletionRequest) -> ChatCompletionResponse | StreamingResponse:
        entry = served.resolve(body.model)
        messages = [message.template_dict() for message in body.messages]
        prompt_ids = await render.run(lambda: chat_prompt_ids(entry, messages))
        job = submit(scheduler, entry, prompt_ids, body, body.completion_limit())
        if body.stream:
            return event_stream(chat_chunks(job, body, error_format))
        text, end = await collect(job)
        return ChatCompletionResponse(
            model=body.model,
            choices=[
                ChatCompletionChoice(
                    message=AssistantMessage(content=text), finish_reason=end.reason, stop_reason=end.stop_reason
                )
            ],
            usage=usage(job, end),
        )

    @app.post("/v1/completions", response_model=None)
    async def completions(body: CompletionRequest) -> CompletionResponse | StreamingResponse:
        entry = served.resolve(body.model)
        text = body.prompt_text()
        prompt_ids = await render.run(lambda: entry.tokenizer(text)["input_ids"])  # special tokens as it adds them
        job = submit(scheduler, entry, prompt_ids, body, body.completion_limit())
        if body.stream:
            return event_stream(completion_chunks(job, body, error_format))
        text, end = await collect(job)
        return CompletionResponse(
            model=body.model,
            choices=[CompletionChoice(text=text, finish_reason=end.reason, stop_reason=end.stop_reason)],
            usage=usage(job, end),
        )

    return app


def validation_message(error: RequestValidationError) -> str:
    problems = []
    for problem in error.errors():
        where = ".".join(str(part) for part in problem["loc"] if part != "body")
        problems.append(f"{where}: {problem['msg']}" if where else problem["msg"])
    return "; ".join(problems)


def chat_prompt_ids(entry: ModelEntry, messages: list[dict]) -> list[int]:
    """The conversation through the entry's own chat template, with the assistant's generation prompt."""
    tokenizer = entry.tokenizer
    if not tokenizer.chat_template:
        raise BadRequestError(NO_CHAT_TEMPLATE)
    try:
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    except Exception as error:  # the template's own raise_exception, or a message it cannot render
        raise BadRequestError(f"the chat template cannot render these messages: {error}") from None
    return tokenizer(text, add_special_tokens=False)["input_ids"]  # the template writes any BOS itself


def submit(
    scheduler: BatchScheduler, entry: ModelEntry, prompt_ids: list[int], body: SamplingRequest, limit: int | None
) -> GenerationJob:
    """Check the request against the context length (vLLM's message) and queue its generation."""
    max_model_len = scheduler.served.max_model_len
    if not prompt_ids:
        raise BadRequestError("The prompt is empty: there is nothing to continue.")
    max_new_tokens = limit if limit is not None else max(max_model_len - len(prompt_ids), 1)
    if len(prompt_ids) + max_new_tokens > max_model_len:
        raise BadRequestError(
            f"This model's maximum context length is {max_model_len} tokens. However, you requested "
            f"{len(prompt_ids) + max_new_tokens} tokens ({len(prompt_ids)} in the messages, {max_new_tokens} in "
            "the completion). Please reduce the length of the messages or completion."
        )
    sampling = Sampling(
        temperature=1.0 if body.temperature is None else body.temperature,
        top_p=1.0 if body.top_p is None else body.top_p,
        seed=body.seed,
    )
    job = GenerationJob(prompt_ids, entry, max_new_tokens, sampling, body.stop_strings(), asyncio.get_running_loop())
    scheduler.submit(job)
    return job


async def job_events(job: GenerationJob) -> AsyncIterator[TextDelta | Finished]:
    """The job's text deltas, then its end; a failure raises. Leaving early (a client gone) ends the row."""
    try:
        while True:
            event = await job.events.get()
            if isinstance(event, TextDelta):
                yield event
            elif isinstance(event, Finished):
                yield event
                return
            else:
                raise event.error
    finally:
        job.cancelled = True


async def collect(job: GenerationJob) -> tuple[str, Finished]:
    parts = []
    async for event in job_events(job):
        if isinstance(event, TextDelta):
            parts.append(event.text)
        else:
            return "".join(parts), event
    raise AssertionError("job_events ends with Finished or raises")


def usage(job: GenerationJob, end: Finished) -> UsageInfo:
    prompt = len(job.prompt_ids)
    return UsageInfo(
        prompt_tokens=prompt, completion_tokens=end.completion_tokens, total_tokens=prompt + end.completion_tokens
    )


def sse(data: BaseModel | dict) -> str:
    payload = data.model_dump_json() if isinstance(data, BaseModel) else json.dumps(data, ensure_ascii=False)
    return f"data: {payload}\n\n"


def event_stream(chunks: AsyncIterator[str]) -> StreamingResponse:
    return StreamingResponse(chunks, media_type="text/event-stream")


async def chat_chunks(job: GenerationJob, body: ChatCompletionRequest, error_format: ErrorFormat) -> AsyncIterator[str]:
    """OpenAI's chat chunks: the role, the content deltas, an empty delta with the finish reason, [DONE]."""
    chunk_id, created = new_id("chatcmpl"), now()

    def chunk(choices: list[ChatCompletionStreamChoice], usage_info: UsageInfo | None = None) -> str:
        return sse(
            ChatCompletionChunk(id=chunk_id, created=created, model=body.model, choices=choices, usage=usage_info)
        )

    yield chunk([ChatCompletionStreamChoice(delta={"role": "assistant", "content": ""})])
    try:
        async for event in job_events(job):
            if isinstance(event, TextDelta):
                yield chunk([ChatCompletionStreamChoice(delta={"content": event.text})])
                continue
            ending = ChatCompletionStreamChoice(delta={}, finish_reason=event.reason, stop_reason=event.stop_reason)
            yield chunk([ending])
            if body.include_usage():
                yield chunk([], usage(job, event))
    except ServeError as error:  # the status line has gone: vLLM reports a failure mid-stream as an error event
        yield sse(error_body(error.message, error.error_type, error.status_code, error_format))
    yield "data: [DONE]\n\n"


async def completion_chunks(
    job: GenerationJob, body: CompletionRequest, error_format: ErrorFormat
) -> AsyncIterator[str]:
    """OpenAI's completion chunks: text deltas, an empty text with the finish reason, [DONE]."""
    chunk_id, created = new_id("cmpl"), now()

    def chunk(choices: list[CompletionChoice], usage_info: UsageInfo | None = None) -> str:
        return sse(
            CompletionResponse(id=chunk_id, created=created, model=body.model, choices=choices, usage=usage_info)
        )

    try:
        async for event in job_events(job):
            if isinstance(event, TextDelta):
                yield chunk([CompletionChoice(text=event.text)])
                continue
            yield chunk([CompletionChoice(text="", finish_reason=event.reason, stop_reason=event.stop_reason)])
            if body.include_usage():
                yield chunk([], usage(job, event))
    except ServeError as error:
        yield sse(error_body(error.message, error.error_type, error.status_code, error_format))
    yield "data: [DONE]\n\n"


def load_served_model(
    model: Path, *, served_model_name: str | None, device: str | None, max_lora_rank: int, max_loras: int
) -> ServedModel:
    """The base model on `device` (CUDA when there is one), named as vLLM names it: the --model string."""
    from engine.evaluate.generate import default_device

    name = served_model_name or str(model)
    return ServedModel(model, name, device=device or default_device(), max_lora_rank=max_lora_rank, max_loras=max_loras)


def serve_forever(
    served: ServedModel,
    *,
    host: str,
    port: int,
    api_keys: Sequence[str],
    max_batch_size: int = 8,
    error_format: ErrorFormat = ErrorFormat.NESTED,
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
    render_timeout_s: float = DEFAULT_RENDER_TIMEOUT_S,
) -> None:
    import uvicorn

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    app = create_app(
        BatchScheduler(served, max_batch_size=max_batch_size),
        error_format,
        api_keys=api_keys,
        max_request_bytes=max_request_bytes,
        renderer=Renderer(timeout_s=render_timeout_s),
    )
    uvicorn.run(app, host=host, port=port, log_level="info", timeout_graceful_shutdown=5)
