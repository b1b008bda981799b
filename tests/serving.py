"""Serving test helpers: LoRA adapters made in a second, and real `tuneloop serve` processes on loopback.

An adapter here is untrained but not a no-op (`init_lora_weights=False` draws both LoRA matrices at random),
so base and adapter answers differ, and two seeds give two adapters that answer differently."""

import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

# The server helpers are the product's own (the demo starts servers the same way).
from engine.serve.local import LocalServer as ServeProcess
from engine.serve.local import free_port, start_local_server

__all__ = ["ROOT", "ServeProcess", "free_port", "make_adapter", "running_server", "start_server"]


def make_adapter(base: Path, out: Path, *, rank: int = 8, seed: int = 0, base_name: str | None = None) -> Path:
    """A LoRA adapter on `base` with random weights, saved like a trained one (tokenizer and generation config
    included). `base_name` overrides the `base_model_name_or_path` recorded in adapter_config.json."""
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base)
    config = LoraConfig(
        r=rank, lora_alpha=2 * rank, target_modules="all-linear", init_lora_weights=False, task_type="CAUSAL_LM"
    )
    peft_model = get_peft_model(model, config)
    with torch.no_grad():  # random B as well as A, scaled so the answers change but stay text
        for name, param in peft_model.named_parameters():
            if "lora_" in name:
                param.normal_(0.0, 0.2)
    peft_model.save_pretrained(out)
    AutoTokenizer.from_pretrained(base).save_pretrained(out)
    model.generation_config.save_pretrained(out)
    if base_name is not None:
        path = out / "adapter_config.json"
        config_json = json.loads(path.read_text(encoding="utf-8"))
        config_json["base_model_name_or_path"] = base_name
        path.write_text(json.dumps(config_json, indent=2), encoding="utf-8")
    return out


ROOT = Path(__file__).resolve().parents[1]


def start_server(
    model: Path,
    log_dir: Path,
    *,
    port: int | None = None,
    args: Sequence[str] = (),
    env: dict | None = None,
    api_key: str | None = None,
) -> ServeProcess:
    """Start `tuneloop serve --model MODEL --port PORT ARGS...` with `api_key` (a new one if None) and wait until
    GET /health answers 200."""
    port = port or free_port()
    log = log_dir / f"serve-{port}.log"
    return start_local_server(model, log, port=port, args=args, env=env, api_key=api_key)


@contextmanager
def running_server(model: Path, log_dir: Path, **options) -> Iterator[ServeProcess]:
    server = start_server(model, log_dir, **options)
    try:
        yield server
    finally:
        server.stop()
