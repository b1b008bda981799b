"""Calls to any OpenAI-compatible chat endpoint, shared by synthesis and the LLM judge.

chat = ChatCaller(client, "gpt-4o", RetryPolicy.from_settings(settings), prices=settings.synth_prices)
reply = await chat.complete(messages, lambda mode: schema_format(mode, "grade", GRADE_SCHEMA))
chat.usage        # requests, retries, tokens and USD of every call made through `chat`

retries   our own (the client's are off: `max_retries=0`): exponential back-off with jitter on
          429, 408/409, 5xx, timeouts and dropped connections, Retry-After honoured (capped); never on a
          429 whose code is `insufficient_quota` (waiting does not clear it, and each retry is a request)
formats   response_format json_schema, lowered for the whole caller to json_object, then to
          plain text, the first time the server rejects it (the JSON is then found in prose)
budget    requests / tokens / USD: once reached no new request starts; in-flight ones finish
errors    `RequestFailed` (this request gave up; the job goes on), `BudgetReached`,
          `EndpointRefused` (401/403/404 and an exhausted quota: no request of the job can succeed)
"""

import asyncio
import email.utils
import logging
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from engine.settings import Settings

if TYPE_CHECKING:  # openai (with httpx and aiohttp) loads with the first client, not with every command
    import openai
    from openai import AsyncOpenAI

log = logging.getLogger(__name__)

FORMAT_MODES = ("json_schema", "json_object", "text")

ResponseFormat = Callable[[str], dict[str, Any] | None]  # mode -> the `response_format` to send (None: none)


@dataclass(frozen=True)
class RetryPolicy:
    """How long one request may take and how it is retried."""

    max_attempts: int = 5  # the first request and its retries
    backoff_base_s: float = 1.0  # first back-off; doubles per retry
    backoff_max_s: float = 30.0
    retry_after_max_s: float = 120.0  # longest Retry-After honoured
    timeout_s: float = 120.0  # per request, reply included

    @classmethod
    def from_settings(cls, settings: Settings) -> "RetryPolicy":
        """The `synth_*` retry settings: one policy for every caller of an endpoint (the judge too)."""
        return cls(
            max_attempts=settings.synth_max_attempts,
            backoff_base_s=settings.synth_backoff_base_s,
            backoff_max_s=settings.synth_backoff_max_s,
            retry_after_max_s=settings.synth_retry_after_max_s,
            timeout_s=settings.synth_timeout_s,
        )


@dataclass
class Budget:
    """Limits for a whole job (calls paid for in earlier attempts count); None means no limit."""

    max_requests: int | None = None
    max_tokens: int | None = None
    max_cost_usd: float | None = None


@dataclass
class Usage:
    """What a job's calls cost so far."""

    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    priced: bool = False  # at least one reply had a price (else cost_usd means "unknown", not 0)
    retries: int = 0
    stopped: str | None = None  # why the budget stopped the job

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def exhausted(self, budget: Budget) -> str | None:
        if budget.max_requests is not None and self.requests >= budget.max_requests:
            return f"max_requests {budget.max_requests} reached"
        if budget.max_tokens is not None and self.tokens >= budget.max_tokens:
            return f"max_tokens {budget.max_tokens} reached"
        if budget.max_cost_usd is not None and self.cost_usd >= budget.max_cost_usd:
            return f"max_cost_usd {budget.max_cost_usd} reached"
        return None


@dataclass
class Reply:
    """One successful chat completion."""

    content: str
    mode: str  # the response_format mode it was asked with
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float | None
    finish_reason: str | None
    attempts: int  # requests sent for it, retries included
    refusal: str | None = None  # the model's refusal (structured outputs), when it refused


class BudgetReached(Exception):
    """The budget forbids another request."""


class RequestFailed(Exception):
    """One request gave up: rejected, or retried `max_attempts` times."""

    def __init__(self, message: str, attempts: int) -> None:
        super().__init__(message)
        self.attempts = attempts


class EndpointRefused(Exception):
    """The endpoint refused the key, the permission or the model, or the account has no quota left: no request of
    the job can succeed. `status` and `code` are the server's (OpenAI: 401 `invalid_api_key`, 429
    `insufficient_quota`)."""

    def __init__(self, message: str, status: int | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code

    def advice(self, endpoint: str, key_variable: str) -> str:
        """The refusal in a sentence for whoever runs the job, naming the variable to set when the key is at fault."""
        said = f"the {endpoint} endpoint refused the job: {self}"
        if self.status == 401:
            return f"{said}; set {key_variable} (or OPENAI_API_KEY) to a valid API key for it and run the job again"
        if self.code == QUOTA_EXHAUSTED:
            return f"{said}; the account behind the key has no quota left: add credit, or set {key_variable} to another"
        return said


QUOTA_EXHAUSTED = "insufficient_quota"  # OpenAI's code on a 429 that only billing clears


@dataclass
class ChatCaller:
    """One job's calls to one model: client, retry policy, prices, budget, usage and the response
    format mode the server accepts, shared by all its (concurrent) requests."""

    client: "AsyncOpenAI"
    model: str
    policy: RetryPolicy = field(default_factory=RetryPolicy)
    prices: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    temperature: float | None = None  # None: the server's default
    budget: Budget = field(default_factory=Budget)
    usage: Usage = field(default_factory=Usage)
    mode: str = "json_schema"  # lowered for the whole job the first time the server rejects it
    rng: random.Random = field(default_factory=random.Random)  # back-off jitter

    async def complete(self, messages: list[dict[str, str]], response_format: ResponseFormat | None = None) -> Reply:
        """One chat completion with our retries. `response_format(mode)` gives the format to ask
        for in the current mode; a rejected format lowers the mode and the request is sent again."""
        import openai
        from openai.types.chat import ChatCompletion

        failures = 0
        requests = 0
        while True:
            stop = self.usage.exhausted(self.budget)
            if stop:
                self.usage.stopped = self.usage.stopped or stop
                raise BudgetReached(stop)
            mode = self.mode if response_format is not None else "text"
            fmt = response_format(mode) if response_format is not None else None
            self.usage.requests += 1
            requests += 1
            body: dict[str, Any] = {"model": self.model, "messages": messages}
            if self.temperature is not None:
                body["temperature"] = self.temperature
            if fmt is not None:
                body["response_format"] = fmt
            try:
                # The body as plain JSON through the client's documented `post`: `chat.completions.create` walks
                # every message and the response schema against its typed params first (~1 ms a request on the
                # event loop, where the replies of the other requests in flight wait), for a body that is JSON
                # already. Errors, retries off, timeout and parsing are the client's as before.
                completion = await self.client.post(
                    "/chat/completions", body=body, cast_to=ChatCompletion, options={"timeout": self.policy.timeout_s}
                )
            except (openai.BadRequestError, openai.UnprocessableEntityError) as error:
                if mode != "text" and response_format is not None and _rejects_format(error):
                    if self.mode == mode:  # concurrent requests learn it too; lower once
                        self.mode = FORMAT_MODES[FORMAT_MODES.index(mode) + 1]
                        log.info("server rejected response_format %s; using %s", mode, self.mode)
                    continue
                raise RequestFailed(f"rejected: {describe(error)}", requests) from None
            except (openai.AuthenticationError, openai.PermissionDeniedError, openai.NotFoundError) as error:
                raise EndpointRefused(describe(error), error.status_code, error.code) from None
            except (openai.APIStatusError, openai.APITimeoutError, openai.APIConnectionError) as error:
                if isinstance(error, openai.RateLimitError) and error.code == QUOTA_EXHAUSTED:
                    raise EndpointRefused(describe(error), error.status_code, error.code) from None
                status = getattr(error, "status_code", None)
                if status is not None and status not in (408, 409, 429) and status < 500:
                    raise RequestFailed(f"rejected: {describe(error)}", requests) from None
                failures += 1
                if failures >= self.policy.max_attempts:
                    raise RequestFailed(f"gave up after {requests} request(s): {describe(error)}", requests) from None
                headers = error.response.headers if isinstance(error, openai.APIStatusError) else None
                delay = retry_delay(failures, headers, self.policy, self.rng)
                self.usage.retries += 1
                log.info("retrying in %.2fs after %s", delay, describe(error))
                await asyncio.sleep(delay)
                continue
            except openai.APIResponseValidationError as error:
                raise RequestFailed(f"malformed response: {error}", requests) from None
            usage = completion.usage
            prompt_tokens = usage.prompt_tokens if usage else 0
            completion_tokens = usage.completion_tokens if usage else 0
            cost = estimate_cost(self.model, prompt_tokens, completion_tokens, self.prices)
            self.usage.prompt_tokens += prompt_tokens
            self.usage.completion_tokens += completion_tokens
            self.usage.cost_usd += cost or 0.0
            self.usage.priced = self.usage.priced or cost is not None
            choice = completion.choices[0] if completion.choices else None
            return Reply(
                content=(choice.message.content or "") if choice else "",
                mode=mode,
                prompt_tokens=prompt_tokens,
                completion_tokens=completion_tokens,
                cost_usd=cost,
                finish_reason=choice.finish_reason if choice else None,
                attempts=requests,
                refusal=getattr(choice.message, "refusal", None) if choice else None,
            )


def schema_format(mode: str, name: str, schema: dict[str, Any]) -> dict[str, Any] | None:
    """The `response_format` for `mode`: a strict JSON schema, a JSON object, or None (plain text,
    where the JSON is extracted from the reply)."""
    if mode == "json_schema":
        return {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": True}}
    if mode == "json_object":
        return {"type": "json_object"}
    return None


def make_client(base_url: str | None, api_key: str | None, timeout_s: float) -> "AsyncOpenAI | None":
    """A client without the library's own retries; None when neither a URL nor a key is set. A URL
    without a key is a local server (vLLM and the like) that takes any key."""
    if api_key is None:
        if base_url is None:
            return None
        api_key = "not-needed"
    from openai import AsyncOpenAI

    return AsyncOpenAI(base_url=base_url, api_key=api_key, max_retries=0, timeout=timeout_s)


def retry_delay(failures: int, headers: Any, policy: RetryPolicy | Settings, rng: random.Random) -> float:
    """Retry-After (seconds, milliseconds or an HTTP date) when the server sends one, capped at
    `retry_after_max_s`; otherwise exponential back-off with jitter (half fixed, half random, so
    concurrent workers that failed together do not retry together). A `Settings` is read as its
    synth_* policy."""
    if isinstance(policy, Settings):
        policy = RetryPolicy.from_settings(policy)
    after = parse_retry_after(headers) if headers is not None else None
    if after is not None:
        return min(after, policy.retry_after_max_s)
    ceiling = min(policy.backoff_max_s, policy.backoff_base_s * 2 ** (failures - 1))
    return ceiling / 2 + rng.uniform(0, ceiling / 2)


def parse_retry_after(headers: Any) -> float | None:
    """Seconds to wait from `retry-after-ms` or `retry-after` (seconds or an HTTP date), or None."""
    value = headers.get("retry-after-ms")
    if value is not None:
        try:
            return max(0.0, float(value) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def estimate_cost(
    model: str, prompt_tokens: int, completion_tokens: int, prices: Mapping[str, tuple[float, float]] | Settings
) -> float | None:
    """USD from a price table (per 1M tokens, [prompt, completion]; a `Settings` gives its
    `synth_prices`): the model's exact name, else its longest listed prefix ("gpt-4o-2024-08-06" →
    "gpt-4o"); None for a model with no price."""
    if isinstance(prices, Settings):
        prices = prices.synth_prices
    key = model if model in prices else max((k for k in prices if model.startswith(k)), key=len, default=None)
    if key is None:
        return None
    per_prompt, per_completion = prices[key]
    return (prompt_tokens * per_prompt + completion_tokens * per_completion) / 1_000_000


def describe(error: Exception) -> str:
    """An API error in one line: status and message."""
    status = getattr(error, "status_code", None)
    message = getattr(error, "message", None) or str(error)
    return f"{status} {message}" if status else f"{type(error).__name__}: {message}"


def _rejects_format(error: "openai.APIStatusError") -> bool:
    text = f"{error.message} {error.param or ''} {error.code or ''}".lower()
    return any(word in text for word in ("response_format", "json_schema", "json_object", "structured output"))
