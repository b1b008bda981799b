"""Synthesis speed: 500 samples the seed's way vs tuneloop's way, against the same local server.

Run: .venv/bin/python bench/synth.py [--n 500] [--delay 0.3] [--concurrency 8]

The server (tests/openai_server.py) answers every chat completion after a fixed delay, like a
remote model whose latency dominates. The seed's way is its own loop: one request at a time, ten
samples per request, `json.loads` on the reply. Tuneloop's way is `engine.data.synth.synthesize`,
end to end: planning, bounded concurrent requests, validation, storing every batch, the quality
filter and the new dataset version (SQLite in a temporary folder). Both ask for 10 samples per
request; both prompts carry the plan block the test server reads to know how many to write.

Target: speedup >= 0.75 x the concurrency bound (>= 6.0 at the default 8).
"""

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from openai import AsyncOpenAI, OpenAI  # noqa: E402
from openai_server import OpenAIServer  # noqa: E402

TASK = "电商客服对话,回答关于退货、换货、物流查询的问题"
SCENARIOS = {"退货": 3, "换货": 2, "物流": 5}


def seed_way(base_url: str, n: int, per_request: int = 10) -> tuple[float, int]:
    """The seed's loop: sequential requests, json.loads on whatever comes back."""
    client = OpenAI(base_url=base_url, api_key="bench")
    samples: list[dict] = []
    started = time.perf_counter()
    request = 0
    while len(samples) < n:
        plan = json.dumps([{"turns": 1}] * per_request)
        prompt = f"{TASK}\n请生成{per_request}条训练数据 #{request}\n```json\n{plan}\n```"
        reply = client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": prompt}])
        samples.extend(json.loads(reply.choices[0].message.content or "{}")["samples"])
        request += 1
    elapsed = time.perf_counter() - started
    client.close()
    return elapsed, len(samples)


def tuneloop_way(base_url: str, n: int, concurrency: int) -> tuple[float, dict]:
    from engine.data.synth import SynthRequest, synthesize
    from engine.settings import get_settings
    from storage.db import make_engine
    from storage.migrate import upgrade

    with tempfile.TemporaryDirectory() as home:
        os.environ["TUNELOOP_HOME"] = home
        get_settings.cache_clear()
        url = f"sqlite:///{home}/bench.db"
        upgrade(url)  # schema creation is setup, not synthesis
        engine = make_engine(url)
        request = SynthRequest(task=TASK, n=n, scenarios=dict(SCENARIOS), concurrency=concurrency, model="gpt-4o-mini")

        client = AsyncOpenAI(base_url=base_url, api_key="bench")  # made and closed untimed, as the seed's is

        async def go() -> tuple[float, dict]:
            try:
                started = time.perf_counter()
                outcome = await synthesize(engine, "bench", request, client=client)
                return time.perf_counter() - started, outcome.report
            finally:
                await client.close()

        elapsed, report = asyncio.run(go())
        engine.dispose()
    return elapsed, report


def serve(delay: float, urls: "mp.Queue[str | int]", stop: "mp.Event") -> None:  # type: ignore[valid-type]
    """The server in its own process, as a remote model would be: its CPU is not ours."""
    with OpenAIServer(delay=delay) as server:
        urls.put(server.base_url)
        stop.wait()  # type: ignore[attr-defined]
        urls.put(len(server.requests))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--delay", type=float, default=0.3, help="Seconds the server takes per reply.")
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()

    urls: mp.Queue = mp.Queue()
    stop = mp.Event()
    process = mp.Process(target=serve, args=(args.delay, urls, stop), daemon=True)
    process.start()
    base_url = urls.get(timeout=30)
    seed_s, seed_n = seed_way(base_url, args.n)
    ours_s, report = tuneloop_way(base_url, args.n, args.concurrency)
    stop.set()
    served = urls.get(timeout=30)
    process.join(timeout=10)
    seed_requests = -(-args.n // 10)
    ours_requests = served - seed_requests

    ratio = seed_s / ours_s
    target = 0.75 * args.concurrency
    print(f"server delay {args.delay * 1000:.0f} ms per reply, {args.n} samples, 10 per request")
    print(f"seed (sequential):          {seed_s:7.2f} s  {seed_requests} requests, {seed_n} samples")
    print(
        f"tuneloop (concurrency {args.concurrency}):  {ours_s:7.2f} s  {ours_requests} requests, "
        f"{report['valid']} valid, {report['kept']} kept, version stored"
    )
    waves = -(-(args.n // 10) // args.concurrency)
    print(f"speedup: {ratio:.2f}x (ideal with {waves} waves of {args.concurrency}: {(args.n // 10) / waves:.2f}x)")
    print(f"TARGET synth_speedup {ratio:.2f} >= {target:.1f} {'PASS' if ratio >= target else 'FAIL'}")


if __name__ == "__main__":
    main()
