"""An adapter's files on their way to the servers: what they say about themselves (LoRA rank, base model),
whether a server can take them, and their copy into the adapters folder every server reads.

Everything here is checked before any server is asked to load anything, so that a deployment that cannot work
fails with a sentence a person can act on, and nothing changes anywhere."""

import json
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

from engine.serve.vllm import ServedModel
from storage.artifacts import adapter_digest

# The values vLLM accepts for --max-lora-rank, to suggest the smallest one that fits.
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
WEIGHT_FILES = ("adapter_model.safetensors", "adapter_model.bin")


class DeployError(RuntimeError):
    """A deployment, rollback or sync that cannot go ahead; the message says why and what to do."""


@dataclass(frozen=True)
class AdapterFiles:
    path: Path
    rank: int | None
    base_model: str | None  # adapter_config.json's base_model_name_or_path


def read_adapter_files(path: Path) -> AdapterFiles:
    """The adapter folder's own description of itself, or a DeployError saying what is missing."""
    if not path.is_dir():
        raise DeployError(f"adapter folder {path} does not exist (was the run's output moved or deleted?)")
    config_path = path / "adapter_config.json"
    if not config_path.is_file():
        raise DeployError(
            f"{path} has no adapter_config.json: it is not a LoRA adapter, and only adapters can be loaded "
            "into a running vLLM (serve a full or merged model as its own vLLM model)"
        )
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise DeployError(f"{config_path} cannot be read: {error}") from None
    if not isinstance(config, dict):
        raise DeployError(f"{config_path} is not a JSON object")
    if config.get("use_dora"):
        raise DeployError(
            f"{path} is a DoRA adapter, which vLLM cannot load at runtime: train without use_dora, or merge it "
            "(tuneloop export --merge) and serve the merged model"
        )
    if not any((path / name).is_file() for name in WEIGHT_FILES):
        raise DeployError(f"{path} has no adapter weights ({' or '.join(WEIGHT_FILES)})")
    rank = config.get("r")
    return AdapterFiles(path, rank if isinstance(rank, int) else None, config.get("base_model_name_or_path") or None)


def compatibility_problems(files: AdapterFiles, url: str, max_lora_rank: int, models: list[ServedModel]) -> list[str]:
    """Why the server at `url`, serving `models`, cannot load the adapter; empty when nothing is known to be wrong."""
    problems = []
    if files.rank is not None and files.rank > max_lora_rank:
        fits = next((r for r in VLLM_LORA_RANKS if r >= files.rank), files.rank)
        problems.append(
            f"adapter rank {files.rank} is larger than {url}'s --max-lora-rank {max_lora_rank}: restart vLLM with "
            f"--max-lora-rank {fits} or train with lora_rank ≤ {max_lora_rank} (if the server already allows more, "
            f"say so in its URL: {url}#max-lora-rank={fits})"
        )
    bases = [model for model in models if model.parent is None]
    if files.base_model and bases and not any(same_model(files.base_model, base) for base in bases):
        served = ", ".join(sorted({base.root or base.id for base in bases}))
        problems.append(
            f"the adapter was trained on {files.base_model} but {url} serves {served}: an adapter only works on its "
            f"own base model; deploy to a server running {files.base_model}, or retrain on {served}"
        )
    return problems


def same_model(name: str, base: ServedModel) -> bool:
    """Whether `name` (a path or hub name) is the model `base` serves: the same path, or the same final name, since
    a hub name and a local copy of it (`Qwen/Qwen2.5-7B` and `/models/Qwen2.5-7B`) are the same model."""
    for served in filter(None, (base.root, base.id)):
        if name == served or _final_name(name) == _final_name(served):
            return True
        if Path(name).exists() and Path(served).exists() and Path(name).resolve() == Path(served).resolve():
            return True
    return False


def _final_name(name: str) -> str:
    return name.rstrip("/").rsplit("/", 1)[-1].casefold()


def publish(source: Path, destination: Path, sha256: str) -> bool:
    """Copy the adapter at `source` to `destination` whole or not at all: into a temporary folder beside it, checked
    against `sha256`, then renamed (atomic within one file system). True when it copied; False when `destination`
    already holds these very files. A version name always means the same weights, so different files already at
    `destination` are never replaced."""
    if destination.exists():
        found, _ = adapter_digest(destination)
        if found != sha256:
            raise DeployError(
                f"{destination} already holds other files than this adapter (sha256 {found[:12]}…, expected "
                f"{sha256[:12]}…); a version name must always mean the same weights, so it is not replaced: "
                "move that folder away if it is not in use"
            )
        return False
    if not source.is_dir():
        raise DeployError(
            f"{destination} is missing and the adapter's own folder {source} is gone too: retrain the run"
        )
    found, _ = adapter_digest(source)
    if found != sha256:
        raise DeployError(
            f"the adapter files in {source} changed after training recorded them (sha256 {found[:12]}…, recorded "
            f"{sha256[:12]}…); they are not deployed: retrain, or restore the recorded files"
        )
    destination.parent.mkdir(parents=True, exist_ok=True)
    staging = destination.with_name(f".{destination.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        shutil.copytree(source, staging)
        copied, _ = adapter_digest(staging)
        if copied != sha256:
            raise DeployError(f"copying {source} to {staging} gave different files (sha256 {copied[:12]}…)")
        try:
            os.rename(staging, destination)
        except OSError:
            if not destination.exists():  # a concurrent publish of the same version is fine; anything else is not
                raise
            return publish(source, destination, sha256)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return True
