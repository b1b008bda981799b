"""`tuneloop gateway`: the OpenAI-compatible address clients call, where a project's stable name always answers
with its active version (engine/serve/gateway.py). Clients need one of its API keys (--api-key or
TUNELOOP_API_KEYS); it calls the model servers with TUNELOOP_VLLM_API_KEY."""

from typing import Annotated

import typer

from bot.cli.common import EXIT_NOT_FOUND, ApiKeyOption, MaxRequestBytesOption, errors, fail
from engine.serve.protocol import DEFAULT_MAX_REQUEST_BYTES


def gateway_command(
    host: Annotated[str, typer.Option(help="Address to listen on; 0.0.0.0 for every interface.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port to listen on.")] = 8000,
    servers: Annotated[
        list[str] | None,
        typer.Option(
            "--servers",
            metavar="URL",
            help="A vLLM or `tuneloop serve` server to route to; repeat for each replica. TUNELOOP_VLLM_URLS if unset.",
        ),
    ] = None,
    api_key: ApiKeyOption = None,
    base_model: Annotated[
        str | None,
        typer.Option(
            help="Also let requests for the bare base model (its name on the servers) through. "
            "TUNELOOP_GATEWAY_BASE_MODEL if unset; by default only deployed names are served."
        ),
    ] = None,
    max_request_bytes: MaxRequestBytesOption = DEFAULT_MAX_REQUEST_BYTES,
) -> None:
    """Route OpenAI requests to the model servers, resolving each project's stable name to its deployed version."""
    # The web stack loads only for this command, so the rest of the CLI starts fast.
    import uvicorn

    from engine.database import DatabaseNotReadyError, get_engine
    from engine.serve.gateway import create_app
    from engine.settings import get_settings

    settings = get_settings()
    urls = servers or settings.vllm_urls
    if not urls:
        fail("no model servers to route to: pass --servers URL or set TUNELOOP_VLLM_URLS")
    keys = api_key or [key.get_secret_value() for key in settings.api_keys]
    if not keys:
        fail("no API key: pass --api-key KEY or set TUNELOOP_API_KEYS (clients send it as 'Authorization: Bearer KEY')")
    try:
        engine = get_engine()
    except DatabaseNotReadyError as error:
        errors.print(f"[red]error:[/red] {error}")
        raise typer.Exit(EXIT_NOT_FOUND) from None
    try:
        app = create_app(
            urls,
            engine,
            api_keys=keys,
            upstream_api_key=settings.vllm_api_key and settings.vllm_api_key.get_secret_value(),
            base_model=base_model or settings.gateway_base_model,
            max_request_bytes=max_request_bytes,
        )
    except ValueError as error:
        fail(str(error))
    uvicorn.run(app, host=host, port=port)
