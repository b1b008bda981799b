"""A client for vLLM's runtime LoRA protocol (and `tuneloop serve`, which speaks the same):

    POST /v1/load_lora_adapter   {"lora_name", "lora_path"}  200 with a plain text body on success
    POST /v1/unload_lora_adapter {"lora_name"}
    GET  /v1/models              adapters listed with `id`, `root` (their path) and `parent` (the base model)

Every failure becomes a `VLLMError` with the HTTP status (None when no reply came), the server's own message
and its kind: the error `type` of either body vLLM has used, nested `{"error": {"message", "type", ...}}` or
the older flat `{"object": "error", "message", "type", ...}`, else "http" for a body that is not JSON (a
proxy's 502 page), "framework" for the web framework's own `{"detail": ...}` (no such route, a malformed body),
"connection", "timeout" or "protocol" (a reply that is not what the protocol says).

Requests carry `Authorization: Bearer KEY` when the client has a key (vLLM's --api-key, TUNELOOP_VLLM_API_KEY);
a server that refuses it answers 401, a VLLMError like any other.

A server is named by its root URL; a trailing `/v1` is accepted too. vLLM does not report its
`--max-lora-rank`, so it can be given in the URL's fragment, which is never sent:
`http://gpu-1:8000#max-lora-rank=64`. Unset, it is vLLM's default, 16.
"""

import json
from dataclasses import dataclass
from urllib.parse import parse_qs, urldefrag

import httpx

from engine.serve.guards import bearer

DEFAULT_MAX_LORA_RANK = 16  # vLLM's own default for --max-lora-rank
DEFAULT_TIMEOUT_S = 60.0  # loading an adapter reads its weights and may take a while
_BODY_SHOWN = 300  # characters of a non-JSON error body kept in the message


class VLLMError(RuntimeError):
    def __init__(self, status: int | None, message: str, kind: str) -> None:
        super().__init__(f"{message} (HTTP {status}, {kind})" if status is not None else message)
        self.status = status
        self.message = message
        self.kind = kind


@dataclass(frozen=True)
class ServedModel:
    id: str
    root: str | None
    parent: str | None  # None for a base model, the base's id for a LoRA adapter


class VLLMClient:
    def __init__(
        self,
        url: str,
        timeout: float = DEFAULT_TIMEOUT_S,
        max_lora_rank: int | None = None,
        api_key: str | None = None,
    ) -> None:
        self.url, self.max_lora_rank = parse_server_url(url)
        if max_lora_rank is not None:
            self.max_lora_rank = max_lora_rank
        self.timeout = timeout
        self.api_key = api_key
        self._http = httpx.Client(base_url=self.url, timeout=timeout, headers=bearer(api_key))

    @property
    def base_url(self) -> str:
        """The OpenAI-compatible API's base URL."""
        return f"{self.url}/v1"

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "VLLMClient":
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def models(self) -> list[ServedModel]:
        reply = self._request("GET", "/v1/models")
        try:
            entries = reply.json()["data"]
            return [ServedModel(str(e["id"]), e.get("root"), e.get("parent")) for e in entries]
        except (ValueError, KeyError, TypeError) as error:
            raise VLLMError(
                reply.status_code, f"{self.url}/v1/models did not list models: {error}", "protocol"
            ) from None

    def load_adapter(self, name: str, path: str) -> str:
        """Load the LoRA adapter at `path` (a folder the server can read) as model `name`; the server's reply."""
        return self._request("POST", "/v1/load_lora_adapter", body={"lora_name": name, "lora_path": path}).text

    def unload_adapter(self, name: str) -> str:
        return self._request("POST", "/v1/unload_lora_adapter", body={"lora_name": name}).text

    def _request(self, method: str, path: str, body: dict | None = None) -> httpx.Response:
        try:
            reply = self._http.request(method, path, json=body)
        except httpx.TimeoutException:
            raise VLLMError(None, f"{self.url} did not answer {path} within {self.timeout:g} s", "timeout") from None
        except httpx.TransportError as error:
            raise VLLMError(None, f"cannot reach {self.url}: {error or type(error).__name__}", "connection") from None
        if reply.is_success:
            return reply
        message, kind = error_from_body(reply.text)
        message = message or reply.reason_phrase or "no message"
        if reply.status_code == 401:
            given = "refused the API key it was sent" if self.api_key else "wants an API key"
            message = f"{message}: {self.url} {given}; set TUNELOOP_VLLM_API_KEY to the server's --api-key"
        raise VLLMError(reply.status_code, message, kind)


def error_from_body(body: str) -> tuple[str, str]:
    """(message, kind) from an error body in either of vLLM's forms, FastAPI's `detail`, or plain text."""
    try:
        parsed = json.loads(body)
    except ValueError:
        parsed = None
    if isinstance(parsed, dict):
        error = parsed["error"] if isinstance(parsed.get("error"), dict) else parsed
        if "message" in error:
            return str(error["message"]), str(error.get("type") or "error")
        if isinstance(error.get("error"), str):
            return error["error"], "error"
        if "detail" in parsed:  # the web framework's own reply (no such route, a malformed body): vLLM never saw it
            return str(parsed["detail"]), "framework"
    text = " ".join(body.split())
    return (text[:_BODY_SHOWN] + ("…" if len(text) > _BODY_SHOWN else "")), "http"


def parse_server_url(spec: str) -> tuple[str, int]:
    """(root URL, max LoRA rank) from `http://host:port[/v1][#max-lora-rank=N]`."""
    url, fragment = urldefrag(spec.strip())
    url = url.rstrip("/")
    url = url.removesuffix("/v1")
    rank = DEFAULT_MAX_LORA_RANK
    options = parse_qs(fragment)
    for key in options:
        if key.replace("_", "-") != "max-lora-rank":
            raise ValueError(f"{spec}: unknown server option '{key}' (known: max-lora-rank)")
    if options:
        value = next(iter(options.values()))[-1]
        if not value.isdigit() or int(value) < 1:
            raise ValueError(f"{spec}: max-lora-rank must be a positive whole number, got '{value}'")
        rank = int(value)
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"{spec}: a server URL starts with http:// or https://")
    return url, rank
