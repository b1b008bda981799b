"""`tuneloop gateway`: the OpenAI-compatible address clients call, where a project's stable name always answers
with its active version (engine/serve/gateway.py)."""

from typing import Annotated

import typer

from bot.cli.common import EXIT_NOT_FOUND, errors, fail


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
) -> None:
    """Route OpenAI requests to the model servers, resolving each project's stable name to its deployed version."""
    # The web stack loads only for this command, so the rest of the CLI starts fast.
    import uvicorn

    from engine.database import DatabaseNotReadyError, get_engine
    from engine.serve.gateway import create_app
    from engine.settings import get_settings

    urls = servers or get_settings().vllm_urls
    if not urls:
        fail("no model servers to route to: pass --servers URL or set TUNELOOP_VLLM_URLS")
    try:
        engine = get_engine()
    except DatabaseNotReadyError as error:
        errors.print(f"[red]error:[/red] {error}")
        raise typer.Exit(EXIT_NOT_FOUND) from None
    try:
        app = create_app(urls, engine)
    except ValueError as error:
        fail(str(error))
    uvicorn.run(app, host=host, port=port)
