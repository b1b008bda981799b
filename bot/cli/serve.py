"""`tuneloop serve`: the embedded OpenAI-compatible server, a stand-in for vLLM on a laptop and in the tests.

Flags are vLLM's names. `--lora-modules` is given once per adapter (`--lora-modules a=/p --lora-modules b=/q`),
where vLLM also takes several after one flag. Runtime LoRA loading and unloading is always allowed here; vLLM
allows it only with VLLM_ALLOW_RUNTIME_LORA_UPDATING=True in its environment. An API key is required (--api-key,
or TUNELOOP_API_KEYS, which keeps it out of the process list): every /v1 request, the admin endpoints included,
must carry it as `Authorization: Bearer KEY`."""

import json
import os
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from bot.cli.common import (
    EXIT_INVALID_DATA,
    ApiKeyOption,
    MaxRequestBytesOption,
    console,
    errors,
    fail,
    quiet_training_libraries,
)
from engine.serve.protocol import DEFAULT_MAX_REQUEST_BYTES, DEFAULT_RENDER_TIMEOUT_S, ErrorFormat
from engine.settings import get_settings

app = typer.Typer(
    help="Serve a base model and its LoRA adapters over OpenAI's API and vLLM's LoRA admin API.",
    invoke_without_command=True,
)


class Device(StrEnum):
    CPU = "cpu"
    CUDA = "cuda"


def parse_lora_module(value: str) -> tuple[str, str]:
    """`name=path`, or vLLM's JSON form {"name": ..., "path": ...}."""
    if value.lstrip().startswith("{"):
        try:
            module = json.loads(value)
            return str(module["name"]), str(module["path"])
        except (ValueError, KeyError, TypeError):
            fail(f'--lora-modules {value!r}: expected name=path or {{"name": ..., "path": ...}}')
    name, sep, path = value.partition("=")
    if not sep or not name or not path:
        fail(f"--lora-modules {value!r}: expected name=path")
    return name, path


@app.callback()
def serve(
    ctx: typer.Context,
    model: Annotated[Path | None, typer.Option(help="Base model folder (a saved transformers model).")] = None,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port to listen on.")] = 8000,
    served_model_name: Annotated[
        str | None, typer.Option(help="The base model's name in the API (default: the --model value).")
    ] = None,
    max_lora_rank: Annotated[int, typer.Option(min=1, help="Largest adapter rank accepted.")] = 16,
    max_loras: Annotated[int, typer.Option(min=1, help="Most adapters loaded at once.")] = 8,
    lora_modules: Annotated[
        list[str] | None, typer.Option(help="Adapter to load at start, as name=path; repeat for more.")
    ] = None,
    max_batch_size: Annotated[int, typer.Option(min=1, help="Most requests generated together.")] = 8,
    error_format: Annotated[
        ErrorFormat, typer.Option(help="Error bodies as new vLLM ({'error': {...}}) or older vLLM (flat).")
    ] = ErrorFormat.NESTED,
    device: Annotated[Device | None, typer.Option(help="Where the model runs (default: cuda if present).")] = None,
    api_key: ApiKeyOption = None,
    max_request_bytes: MaxRequestBytesOption = DEFAULT_MAX_REQUEST_BYTES,
    render_timeout: Annotated[
        float, typer.Option(min=0.001, help="Seconds a prompt may take to template and tokenize before a 400.")
    ] = DEFAULT_RENDER_TIMEOUT_S,
) -> None:
    """Serve a base model and its LoRA adapters: OpenAI chat and completions, vLLM's LoRA admin endpoints."""
    if ctx.invoked_subcommand is not None:
        return
    if model is None:
        errors.print("[red]error:[/red] --model is required: the folder of the base model to serve")
        raise typer.Exit(EXIT_INVALID_DATA)
    if not (model / "config.json").is_file():
        fail(f"{model} is not a saved model folder (no config.json)")
    keys = api_key or [key.get_secret_value() for key in get_settings().api_keys]
    if not keys:
        fail(
            "no API key: pass --api-key KEY or set TUNELOOP_API_KEYS (every /v1 request, loading adapters included, "
            "must carry it as 'Authorization: Bearer KEY'; deploys send TUNELOOP_VLLM_API_KEY)"
        )
    modules = [parse_lora_module(value) for value in lora_modules or []]
    if len({name for name, _ in modules}) < len(modules):
        fail("--lora-modules: each adapter needs its own name")
    # Local folders only: a hub lookup would turn a missing file into a slow, misleading error.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    # torch, transformers and the web stack load only here, so that every other command starts at once.
    quiet_training_libraries()
    from engine.serve.protocol import ServeError
    from engine.serve.server import load_served_model, serve_forever

    try:
        served = load_served_model(
            model,
            served_model_name=served_model_name,
            device=device.value if device else None,
            max_lora_rank=max_lora_rank,
            max_loras=max_loras,
        )
    except (OSError, ValueError, RuntimeError) as error:
        fail(f"cannot load the model from {model}: {error}")
    for name, path in modules:
        try:
            served.load_adapter(name, path)
        except ServeError as error:
            fail(f"--lora-modules {name}={path}: {error.message}")
    adapters = ", ".join(served.adapters) or "none yet"
    console.print(f"serving {served.base.name} on http://{host}:{port}/v1 (adapters: {adapters})")
    serve_forever(
        served,
        host=host,
        port=port,
        api_keys=keys,
        max_batch_size=max_batch_size,
        error_format=error_format,
        max_request_bytes=max_request_bytes,
        render_timeout_s=render_timeout,
    )
