"""Serving test helpers: LoRA adapters made in a second, and real `tuneloop serve` processes on loopback.

An adapter here is untrained but not a no-op (`init_lora_weights=False` draws both LoRA matrices at random),
so base and adapter answers differ, and two seeds give two adapters that answer differently."""

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

ROOT = Path(__file__).resolve().parents[1]
READY_TIMEOUT_S = 120.0


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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class ServeProcess:
    """A running `tuneloop serve`; `url` is its root (http://127.0.0.1:PORT), the OpenAI base is url + "/v1"."""

    process: subprocess.Popen
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_server(
    model: Path, log_dir: Path, *, port: int | None = None, args: Sequence[str] = (), env: dict | None = None
) -> ServeProcess:
    """Start `tuneloop serve --model MODEL --port PORT ARGS...` and wait until GET /health answers 200."""
    port = port or free_port()
    log = log_dir / f"serve-{port}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "bot.cli", "serve", "--model", str(model), "--host", "127.0.0.1"]
    command += ["--port", str(port), *args]
    with open(log, "ab") as out:
        process = subprocess.Popen(
            command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}
        )
    server = ServeProcess(process, port, log)
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"tuneloop serve exited with {process.returncode}:\n{log.read_text(errors='replace')}")
        try:
            if httpx.get(f"{server.url}/health", timeout=1.0).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    server.stop()
    raise RuntimeError(f"tuneloop serve did not become ready in {READY_TIMEOUT_S:.0f} s:\n{log.read_text()}")


@contextmanager
def running_server(model: Path, log_dir: Path, **options) -> Iterator[ServeProcess]:
    server = start_server(model, log_dir, **options)
    try:
        yield server
    finally:
        server.stop()
