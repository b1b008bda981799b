"""The vLLM protocol client against every reply vLLM (or a proxy in front of it) gives: success, both error
body forms, a non-JSON page, no server at all, and a server that does not answer in time."""

import json
import socket
from collections.abc import Iterator

import pytest

from engine.serve.vllm import DEFAULT_MAX_LORA_RANK, ServedModel, VLLMClient, VLLMError, parse_server_url
from tests.vllm_replies import Reply, ScriptedServer, flat_error, nested_error


@pytest.fixture
def server() -> Iterator[ScriptedServer]:
    with ScriptedServer() as scripted:
        yield scripted


def test_load_success_returns_the_plain_text_body_and_sends_the_protocol_fields(server: ScriptedServer) -> None:
    server.script(Reply(200, "Success: LoRA adapter 'cs-v1' added successfully."))
    with VLLMClient(server.url) as client:
        assert client.load_adapter("cs-v1", "/adapters/cs/cs-v1") == "Success: LoRA adapter 'cs-v1' added successfully."
    request = server.requests[0]
    assert (request.method, request.path) == ("POST", "/v1/load_lora_adapter")
    assert request.body == {"lora_name": "cs-v1", "lora_path": "/adapters/cs/cs-v1"}


def test_unload_sends_the_name(server: ScriptedServer) -> None:
    server.script(Reply(200, "Success: LoRA adapter 'cs-v1' removed successfully."))
    with VLLMClient(server.url + "/v1/") as client:  # a base URL with /v1 names the same server
        assert "removed" in client.unload_adapter("cs-v1")
    assert (server.requests[0].path, server.requests[0].body) == ("/v1/unload_lora_adapter", {"lora_name": "cs-v1"})


def test_models_lists_base_and_adapters(server: ScriptedServer) -> None:
    listing = {
        "object": "list",
        "data": [
            {"id": "base", "object": "model", "root": "/models/base", "parent": None},
            {"id": "cs-v1", "object": "model", "root": "/adapters/cs/cs-v1", "parent": "base"},
        ],
    }
    server.script(Reply(200, json.dumps(listing), "application/json"))
    with VLLMClient(server.url) as client:
        assert client.models() == [
            ServedModel("base", "/models/base", None),
            ServedModel("cs-v1", "/adapters/cs/cs-v1", "base"),
        ]


def test_models_reply_that_is_not_a_listing_is_a_protocol_error(server: ScriptedServer) -> None:
    server.script(Reply(200, "<html>login</html>", "text/html"))
    with VLLMClient(server.url) as client, pytest.raises(VLLMError) as caught:
        client.models()
    assert (caught.value.status, caught.value.kind) == (200, "protocol")


@pytest.mark.parametrize("form", [nested_error, flat_error])
@pytest.mark.parametrize(
    ("status", "message", "kind"),
    [
        (400, "The lora adapter 'cs-v1' has already been loaded.", "BadRequestError"),
        (400, "Both 'lora_name' and 'lora_path' must be provided.", "InvalidUserInput"),
        (404, "No adapter found for /nowhere", "NotFoundError"),
        (500, "LoRA rank 64 is greater than max_lora_rank 16.", "InternalServerError"),
    ],
)
def test_error_bodies_in_both_forms(server: ScriptedServer, form, status: int, message: str, kind: str) -> None:
    server.script(form(message, kind, status))
    with VLLMClient(server.url) as client, pytest.raises(VLLMError) as caught:
        client.load_adapter("cs-v1", "/nowhere")
    error = caught.value
    assert (error.status, error.message, error.kind) == (status, message, kind)
    assert message in str(error) and str(status) in str(error)


def test_a_proxy_page_that_is_not_json(server: ScriptedServer) -> None:
    page = "<html><head><title>502 Bad Gateway</title></head>\n<body>nginx</body></html>"
    server.script(Reply(502, page, "text/html"))
    with VLLMClient(server.url) as client, pytest.raises(VLLMError) as caught:
        client.unload_adapter("cs-v1")
    assert (caught.value.status, caught.value.kind) == (502, "http")
    assert "502 Bad Gateway" in caught.value.message and "\n" not in caught.value.message


def test_an_empty_error_body_keeps_the_status_phrase(server: ScriptedServer) -> None:
    server.script(Reply(503, ""))
    with VLLMClient(server.url) as client, pytest.raises(VLLMError) as caught:
        client.models()
    assert (caught.value.status, caught.value.message) == (503, "Service Unavailable")


def test_a_framework_validation_error(server: ScriptedServer) -> None:
    detail = {"detail": [{"loc": ["body", "lora_name"], "msg": "Field required", "type": "missing"}]}
    server.script(Reply(422, json.dumps(detail), "application/json"))
    with VLLMClient(server.url) as client, pytest.raises(VLLMError) as caught:
        client.load_adapter("", "/x")
    assert (caught.value.status, caught.value.kind) == (422, "framework")
    assert "Field required" in caught.value.message


def test_connection_refused() -> None:
    with socket.socket() as sock:  # a port that was free a moment ago and has nobody listening
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with VLLMClient(f"http://127.0.0.1:{port}") as client, pytest.raises(VLLMError) as caught:
        client.models()
    assert (caught.value.status, caught.value.kind) == (None, "connection")
    assert f"cannot reach http://127.0.0.1:{port}" in str(caught.value)


def test_timeout(server: ScriptedServer) -> None:
    server.script(Reply(200, "late", delay_s=1.0))
    with VLLMClient(server.url, timeout=0.2) as client, pytest.raises(VLLMError) as caught:
        client.load_adapter("cs-v1", "/x")
    assert (caught.value.status, caught.value.kind) == (None, "timeout")
    assert "within 0.2 s" in str(caught.value)


def test_server_url_options() -> None:
    assert parse_server_url("http://gpu-1:8000/") == ("http://gpu-1:8000", DEFAULT_MAX_LORA_RANK)
    assert parse_server_url("http://gpu-1:8000/v1#max-lora-rank=64") == ("http://gpu-1:8000", 64)
    assert parse_server_url("https://gpu-1/vllm#max_lora_rank=8") == ("https://gpu-1/vllm", 8)
    assert VLLMClient("http://a:1#max-lora-rank=32", max_lora_rank=4).max_lora_rank == 4
    with pytest.raises(ValueError, match="unknown server option 'rank'"):
        parse_server_url("http://a:1#rank=3")
    with pytest.raises(ValueError, match="positive whole number"):
        parse_server_url("http://a:1#max-lora-rank=big")
    with pytest.raises(ValueError, match="starts with http"):
        parse_server_url("gpu-1:8000")


def test_the_key_is_sent_as_a_bearer_token_and_a_refusal_names_the_setting(server: ScriptedServer) -> None:
    server.script(Reply(200, "Success"), Reply(401, json.dumps({"error": "Unauthorized"}), "application/json"))
    with VLLMClient(server.url, api_key="vllm-key") as client:
        client.load_adapter("cs-v1", "/adapters/cs/cs-v1")
        with pytest.raises(VLLMError) as caught:
            client.models()
    assert [request.authorization for request in server.requests] == ["Bearer vllm-key"] * 2
    assert caught.value.status == 401
    assert "refused the API key it was sent; set TUNELOOP_VLLM_API_KEY to the server's --api-key" in str(caught.value)
    server.script(Reply(401, json.dumps({"error": "Unauthorized"}), "application/json"))
    with VLLMClient(server.url) as keyless, pytest.raises(VLLMError, match="wants an API key; set TUNELOOP_VLLM"):
        keyless.models()
    assert server.requests[-1].authorization is None
