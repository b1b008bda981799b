"""Serving: promoting an adapter and serving several at once on `tuneloop serve`, measured side by side in one run.

Run: .venv/bin/python bench/serve.py [--adapters 4] [--clients-per-adapter 4] [--requests-per-client 4]
                                     [--max-tokens 32] [--rounds 3]

1. Promotion, from "these adapter files are approved" to the first answer under the new weights:
   - runtime: `deploy_run` against a running `tuneloop serve` (check, copy into the adapters folder, load through
     /v1/load_lora_adapter, test prompt, the active deployment recorded), then the first request for the stable
     name through the gateway;
   - restart: the adapter merged into the base (PEFT `merge_and_unload`), saved, a fresh `tuneloop serve` started
     on the merged model, its first answer. Stopping the old server is not counted, which favours this path.
2. Throughput of a stream of requests spread over several adapters (`--clients-per-adapter` concurrent clients per
   adapter, each sending `--requests-per-client` greedy requests in turn; the same requests both ways): every
   adapter's clients at once, so the server batches the adapters together, against one adapter at a time (each
   adapter's clients at once, the adapters one after another), as a server that batches only requests for the same
   adapter would run them. Completion tokens per second, best of `--rounds` alternating runs.

The model is a tiny one built here (no download), larger than the tests' so that weights are not free to merge
and load. Every process runs torch on one thread: on a machine whose cores are shared with other work, OpenMP's
spinning threads made steps up to 30 times slower and the timings swing by 4x; on one thread they are steady.
"""

import argparse
import asyncio
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch loads, here and in the servers started from here
KEY = f"bench-{os.getpid()}"  # every server's and the gateway's; deploy_run sends it as TUNELOOP_VLLM_API_KEY
os.environ["TUNELOOP_VLLM_API_KEY"] = KEY

import httpx  # noqa: E402
from sqlalchemy.engine import Engine  # noqa: E402

from engine.serve.deploy import deploy_run  # noqa: E402
from engine.serve.guards import bearer  # noqa: E402
from engine.serve.local import local_gateway  # noqa: E402
from engine.settings import get_settings  # noqa: E402
from engine.train.tiny import TinySpec, build_tiny_model  # noqa: E402
from storage.artifacts import adapter_digest  # noqa: E402
from storage.db import make_engine, session_scope  # noqa: E402
from storage.migrate import upgrade  # noqa: E402
from storage.models import Adapter, Project, Run  # noqa: E402
from tests.serving import ServeProcess, make_adapter, start_server  # noqa: E402

SPEC = TinySpec(hidden_size=256, intermediate_size=768, num_hidden_layers=4, num_attention_heads=4)
PROJECT = "customer_service"
PROMOTION_TARGET = 3.0
MIXED_TARGET = 2.0
QUESTIONS = [
    "Where is my order?",
    "How do I return a pair of shoes?",
    "Can I change the delivery address?",
    "My parcel arrived damaged, what now?",
    "Do you ship abroad?",
    "How long does a refund take?",
    "Can I use two coupons at once?",
    "What sizes do these come in?",
]


def chat(model: str, question: str, max_tokens: int) -> dict:
    return {
        "model": model,
        "messages": [{"role": "user", "content": question}],
        "temperature": 0,
        "max_tokens": max_tokens,
    }


def first_answer(base_url: str, model: str) -> str:
    body = chat(model, QUESTIONS[0], 8)
    reply = httpx.post(f"{base_url}/v1/chat/completions", json=body, headers=bearer(KEY), timeout=120)
    reply.raise_for_status()
    return reply.json()["choices"][0]["message"]["content"]


@contextmanager
def running_gateway(server: str, engine: Engine) -> Iterator[str]:
    with local_gateway([server], engine, upstream_api_key=KEY, api_key=KEY) as gateway:
        yield gateway.url


def record_run(engine: Engine, project_id: int, iteration: int, adapter: Path, base: Path) -> int:
    """A trained run's rows, as training leaves them: the run and its adapter (path, digest, base)."""
    sha256, size = adapter_digest(adapter)
    with session_scope(engine) as session:
        run = Run(project_id=project_id, iteration=iteration, state="awaiting_approval")
        session.add(run)
        session.flush()
        recorded = Adapter(
            project_id=project_id,
            run_id=run.id,
            path=str(adapter),
            sha256=sha256,
            size_bytes=size,
            base_model=str(base),
        )
        session.add(recorded)
        return run.id


def promote(engine: Engine, run_id: int, server: ServeProcess, gateway: str) -> float:
    """Seconds from approving run `run_id` to the stable name's first answer with its weights."""
    start = time.perf_counter()
    with session_scope(engine) as session:
        outcome = deploy_run(session, run_id, "bench", servers=[server.url])
    if not outcome.ok:
        raise RuntimeError(outcome.message)
    first_answer(gateway, PROJECT)
    return time.perf_counter() - start


def restart_with_merged(base: Path, adapter: Path, out: Path, log_dir: Path) -> float:
    """Seconds from merging `adapter` into the base to a fresh server's first answer with the merged weights."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    start = time.perf_counter()
    merged = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), adapter).merge_and_unload()
    merged.save_pretrained(out)
    AutoTokenizer.from_pretrained(adapter).save_pretrained(out)
    server = start_server(out, log_dir, api_key=KEY)
    try:
        first_answer(server.url, str(out))
        return time.perf_counter() - start
    finally:
        server.stop()


def promotion_bench(args: argparse.Namespace, base: Path, work: Path) -> float:
    adapters = [make_adapter(base, work / f"promote-{seed}", seed=seed) for seed in range(2 * args.rounds)]
    url = f"sqlite:///{work / 'bench.db'}"
    upgrade(url)
    engine = make_engine(url)
    with session_scope(engine) as session:
        project = Project(name=PROJECT)
        session.add(project)
        session.flush()
        project_id = project.id
    runtime, restart = [], []
    server = start_server(base, work / "logs", api_key=KEY)
    try:
        with running_gateway(server.url, engine) as gateway:
            first_answer(server.url, str(base))  # the server is warm, as a serving one is
            for round_ in range(args.rounds):
                run_id = record_run(engine, project_id, round_ + 1, adapters[round_], base)
                runtime.append(promote(engine, run_id, server, gateway))
                merged = work / f"merged-{round_}"
                restart.append(restart_with_merged(base, adapters[args.rounds + round_], merged, work / "logs"))
    finally:
        server.stop()
    ratio = min(restart) / min(runtime)
    print(f"{'promotion path':<50} {'best s':>7}  all s")
    for label, times in (
        ("runtime load (deploy_run + first answer)", runtime),
        ("restart on merged model (merge + start + answer)", restart),
    ):
        print(f"{label:<50} {min(times):>7.3f}  {' '.join(f'{t:.3f}' for t in times)}")
    print(f"restart / runtime: {ratio:.1f}x")
    return ratio


async def stream_of_requests(client: httpx.AsyncClient, url: str, streams: list[list[dict]]) -> int:
    """Each stream is one client sending its requests one after another; the streams run at once. Returns the
    completion tokens generated."""

    async def one_client(bodies: list[dict]) -> int:
        tokens = 0
        for body in bodies:
            reply = await client.post(f"{url}/v1/chat/completions", json=body)
            reply.raise_for_status()
            tokens += reply.json()["usage"]["completion_tokens"]
        return tokens

    return sum(await asyncio.gather(*(one_client(bodies) for bodies in streams)))


async def mixed_and_sequential(url: str, names: list[str], args: argparse.Namespace) -> dict[str, list[float]]:
    """Completion tokens per second of each way, per round, alternating, over the same requests: per adapter,
    `clients_per_adapter` clients each sending `requests_per_client` requests in turn. A steady stream rather than
    one burst, so that how many requests happen to arrive within the server's batching window matters little."""
    streams = {
        name: [
            [chat(name, QUESTIONS[(i + j) % len(QUESTIONS)], args.max_tokens) for j in range(args.requests_per_client)]
            for i in range(args.clients_per_adapter)
        ]
        for name in names
    }
    every_stream = [stream for adapter_streams in streams.values() for stream in adapter_streams]
    rates: dict[str, list[float]] = {"mixed": [], "sequential": []}
    limits = httpx.Limits(max_connections=len(every_stream))
    async with httpx.AsyncClient(timeout=300, limits=limits, headers=bearer(KEY)) as client:
        await stream_of_requests(client, url, [stream[:1] for stream in every_stream])  # warm-up: every adapter ran
        for _ in range(args.rounds):
            start = time.perf_counter()
            tokens = await stream_of_requests(client, url, every_stream)
            rates["mixed"].append(tokens / (time.perf_counter() - start))
            start, tokens = time.perf_counter(), 0
            for adapter_streams in streams.values():
                tokens += await stream_of_requests(client, url, adapter_streams)
            rates["sequential"].append(tokens / (time.perf_counter() - start))
    return rates


def mixed_bench(args: argparse.Namespace, base: Path, work: Path) -> float:
    names = [f"{PROJECT}-mix{i}" for i in range(args.adapters)]
    batch = args.adapters * args.clients_per_adapter
    server_args = ["--max-batch-size", str(batch), "--max-loras", str(args.adapters)]
    server = start_server(base, work / "logs", args=server_args, api_key=KEY)
    try:
        for seed, name in enumerate(names, start=100):
            adapter = make_adapter(base, work / name, seed=seed)
            body = {"lora_name": name, "lora_path": str(adapter)}
            url = f"{server.url}/v1/load_lora_adapter"
            httpx.post(url, json=body, headers=bearer(KEY), timeout=60).raise_for_status()
        rates = asyncio.run(mixed_and_sequential(server.url, names, args))
        stats = httpx.get(f"{server.url}/stats").json()
    finally:
        server.stop()
    ratio = max(rates["mixed"]) / max(rates["sequential"])
    shape = (
        f"{args.adapters} adapters x {args.clients_per_adapter} clients x {args.requests_per_client} requests, "
        f"{args.max_tokens} new tokens at most"
    )
    print(f"{shape}, server batch {batch}")
    print(f"{'serving':<40} {'best tokens/s':>13}  all")
    for label, key in (("mixed (all adapters batched together)", "mixed"), ("one adapter at a time", "sequential")):
        print(f"{label:<40} {max(rates[key]):>13.1f}  {' '.join(f'{r:.1f}' for r in rates[key])}")
    print(f"server: {stats['requests']} requests in {stats['batches']} batches, largest {stats['largest_batch']}")
    print(f"mixed / one at a time: {ratio:.2f}x")
    return ratio


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--adapters", type=int, default=4)
    parser.add_argument("--clients-per-adapter", type=int, default=4)
    parser.add_argument("--requests-per-client", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print(f"load average at start: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores (other work slows both paths)")
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        # Everything tuneloop writes (database, adapters folder) stays in the scratch folder.
        os.environ["TUNELOOP_HOME"] = str(work / "home")
        get_settings.cache_clear()
        base = build_tiny_model(work / "base", spec=SPEC)
        promotion = promotion_bench(args, base, work)
        mixed = mixed_bench(args, base, work)
    print(f"load average at end: {os.getloadavg()[0]:.2f}")
    verdict = "PASS" if promotion >= PROMOTION_TARGET else "FAIL"
    print(f"TARGET serve_promotion_speedup {promotion:.1f} >= {PROMOTION_TARGET:g} {verdict}")
    verdict = "PASS" if mixed >= MIXED_TARGET else "FAIL"
    print(f"TARGET serve_mixed_adapter_throughput_ratio {mixed:.2f} >= {MIXED_TARGET:g} {verdict}")


if __name__ == "__main__":
    main()
