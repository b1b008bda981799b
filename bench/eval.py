"""Evaluation speed, measured side by side in one run.

Run: .venv/bin/python bench/eval.py [--prompts 64] [--max-new-tokens 48] [--batch-size 16] [--rounds 3]

1. Generation. A tiny Qwen2 model (hidden 128, ~0.9M parameters, built locally from the
   example dataset's text) answers N Chinese customer-service questions (the example dataset's system prompt
   and first user turns), greedy, `max_new_tokens` fixed, through `engine.evaluate.generate_answers`: batched
   (left padding, `--batch-size`) against one sample at a time (batch_size=1). The untrained model does not
   emit its end-of-turn token, so both paths generate the same number of tokens; the bench checks that the two
   paths produce identical answers and token counts. Rounds alternate the order of the two paths; each path's
   best round counts (the machine may be shared, so its load average is printed).
2. Judging. 200 answered samples judged (two grades and both pairwise orders: four requests each) through
   the real `openai` client against tests/openai_server.py, in its own process, answering every request after
   300 ms: concurrently (the judge's default bound, 8) against one request at a time.

Targets: batched generation >= 3x the tokens/s of one-at-a-time generation; concurrent judging >= 6x faster
than sequential (0.75 x the concurrency bound).
"""

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import re
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import torch  # noqa: E402
from evaluation_data import generated_sample  # noqa: E402
from openai import AsyncOpenAI  # noqa: E402
from openai_server import OpenAIServer, Reply  # noqa: E402

from engine.data.formats import load_file  # noqa: E402
from engine.evaluate.generate import generate_answers, load_models  # noqa: E402
from engine.evaluate.judge import judge_samples  # noqa: E402
from engine.evaluate.judge_prompts import DEFAULT_RUBRIC  # noqa: E402
from engine.evaluate.results import Answer, GeneratedSample, GenerationSettings, PassStats  # noqa: E402
from engine.train.tiny import EXAMPLE_DATASET, TinySpec, build_tiny_model  # noqa: E402

BENCH_SPEC = TinySpec(hidden_size=128, intermediate_size=384, num_hidden_layers=2, num_attention_heads=4)
TARGET = 3.0
JUDGE_TARGET = 6.0
_DATA = re.compile(r"```data\n(.*?)\n```", re.DOTALL)


def example_prompts(count: int) -> list[list[dict]]:
    """System prompt + first user turn of the example dataset's conversations, distinct questions only."""
    prompts: list[list[dict]] = []
    seen: set[str] = set()
    for _, sample in load_file(EXAMPLE_DATASET).samples:
        system = [{"role": "system", "content": m.content} for m in sample.messages[:1] if m.role == "system"]
        question = next((m.content for m in sample.messages if m.role == "user" and m.content), None)
        if question and question not in seen:
            seen.add(question)
            prompts.append([*system, {"role": "user", "content": question}])
        if len(prompts) == count:
            return prompts
    raise SystemExit(f"the example dataset has only {len(prompts)} distinct questions, {count} asked")


def timed(model, tokenizer, prompts, settings: GenerationSettings) -> tuple[float, list[Answer], PassStats]:
    began = time.perf_counter()
    answers, stats = generate_answers(model, tokenizer, prompts, settings)
    return time.perf_counter() - began, answers, stats


def generation_bench(args: argparse.Namespace) -> float:
    prompts = example_prompts(args.prompts)
    with tempfile.TemporaryDirectory() as scratch:
        loaded = load_models(build_tiny_model(Path(scratch) / "model", spec=BENCH_SPEC), device="cpu")
    model, tokenizer = loaded.model, loaded.tokenizer
    params = sum(p.numel() for p in model.parameters())
    texts = [tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True) for p in prompts]
    lengths = [len(tokenizer(text, add_special_tokens=False)["input_ids"]) for text in texts]
    print(
        f"model: tiny qwen2, hidden {BENCH_SPEC.hidden_size}, {BENCH_SPEC.num_hidden_layers} layers, "
        f"{params / 1e6:.2f}M parameters, float32 on cpu, {torch.get_num_threads()} torch threads"
    )
    print(
        f"prompts: {len(prompts)} Chinese questions, {min(lengths)}-{max(lengths)} prompt tokens; "
        f"greedy, max_new_tokens {args.max_new_tokens}"
    )
    batched = GenerationSettings(max_new_tokens=args.max_new_tokens, batch_size=args.batch_size)
    single = GenerationSettings(max_new_tokens=args.max_new_tokens, batch_size=1)
    generate_answers(model, tokenizer, prompts[:2], GenerationSettings(max_new_tokens=4, batch_size=2))  # warm-up

    best: dict[str, tuple[float, list[Answer], PassStats]] = {}
    for round_number in range(args.rounds):
        order = [("batched", batched), ("single", single)]
        if round_number % 2:
            order.reverse()
        for name, settings in order:
            result = timed(model, tokenizer, prompts, settings)
            print(f"  round {round_number + 1} {name:8s} {result[0]:7.2f} s  {result[2].tokens / result[0]:8.1f} tok/s")
            if name not in best or result[0] < best[name][0]:
                best[name] = result

    (b_seconds, b_answers, b_stats), (s_seconds, s_answers, s_stats) = best["batched"], best["single"]
    same = [a.text for a in b_answers] == [a.text for a in s_answers]
    stopped = sum(a.stopped for a in b_answers)
    print(
        f"answers identical in both paths: {same}; tokens {b_stats.tokens} vs {s_stats.tokens}; "
        f"stopped early: {stopped}"
    )
    if not same or b_stats.tokens != s_stats.tokens:
        raise SystemExit("the two paths generated different answers: the comparison would be meaningless")
    b_rate, s_rate = b_stats.tokens / b_seconds, s_stats.tokens / s_seconds
    print(f"{'path':28s} {'wall s':>8s} {'tokens':>7s} {'tok/s':>9s}")
    print(f"{'one at a time (batch 1)':28s} {s_seconds:8.2f} {s_stats.tokens:7d} {s_rate:9.1f}")
    print(f"{f'batched (batch {args.batch_size})':28s} {b_seconds:8.2f} {b_stats.tokens:7d} {b_rate:9.1f}")
    ratio = b_rate / s_rate
    print(f"batched / one-at-a-time tokens/s: {ratio:.2f}x (best of {args.rounds} alternating rounds each)")
    return ratio


def judge_reply(body: dict) -> Reply:
    """A judge that always answers well-formed JSON: a grade, or a pairwise verdict for the tuned answer."""
    data = json.loads(_DATA.search(body["messages"][-1]["content"]).group(1))
    if "answer_A" in data:
        winner = "A" if data["answer_A"].startswith("tuned") else "B"
        return Reply.text(json.dumps({"reason": "更准确", "winner": winner}, ensure_ascii=False))
    scores = dict.fromkeys(DEFAULT_RUBRIC, 4)
    return Reply.text(json.dumps({"reason": "基本正确", "scores": scores, "overall": 4}, ensure_ascii=False))


def serve_judge(delay: float, urls: "mp.Queue[str]", stop: "mp.Event") -> None:  # type: ignore[valid-type]
    """The judge in its own process, as a remote model would be: its CPU is not ours."""
    with OpenAIServer(delay=delay, responder=judge_reply) as server:
        urls.put(server.base_url)
        stop.wait()  # type: ignore[attr-defined]


def judged_samples(count: int) -> list[GeneratedSample]:
    return [
        generated_sample(
            i,
            f"订单{i}的耳机坏了能退吗?",
            "可以,签收七天内无理由退货,请在订单页申请。",
            f"base {i}: 不清楚。",
            f"tuned {i}: 可以退货,签收七天内在订单页申请。",
            ["退货"],
        )
        for i in range(count)
    ]


def judging_bench(args: argparse.Namespace) -> float:
    urls: mp.Queue = mp.Queue()
    stop = mp.Event()
    server = mp.Process(target=serve_judge, args=(args.judge_delay, urls, stop), daemon=True)
    server.start()
    base_url = urls.get(timeout=30)
    samples = judged_samples(args.judge_samples)

    async def judge(concurrency: int) -> tuple[float, int]:
        client = AsyncOpenAI(base_url=base_url, api_key="bench")
        try:
            started = time.perf_counter()
            result = await judge_samples(samples, client=client, model="judge-bench", concurrency=concurrency)
            elapsed = time.perf_counter() - started
        finally:
            await client.close()
        if result.invalid_rate or result.win_rate != 1.0:
            sys.exit(f"the judging bench's judge replies were not all valid: {result.summary()}")
        return elapsed, result.usage.requests

    try:
        concurrent_s, requests = asyncio.run(judge(args.judge_concurrency))
        sequential_s, _ = asyncio.run(judge(1))
    finally:
        stop.set()
        server.join(timeout=10)
    ratio = sequential_s / concurrent_s
    print(f"judging {len(samples)} samples, {requests} requests, server delay {args.judge_delay * 1000:.0f} ms each")
    print(f"{'path':<30} {'wall s':>7}")
    print(f"{'sequential (1 at a time)':<30} {sequential_s:>7.1f}")
    print(f"{f'concurrent ({args.judge_concurrency} at a time)':<30} {concurrent_s:>7.1f}")
    print(f"sequential / concurrent: {ratio:.2f}x")
    return ratio


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--judge-samples", type=int, default=200)
    parser.add_argument("--judge-delay", type=float, default=0.3, help="Seconds the judge server takes per reply.")
    parser.add_argument("--judge-concurrency", type=int, default=8)
    args = parser.parse_args()
    load = os.getloadavg()
    print(
        f"load average at start: {load[0]:.2f} on {os.cpu_count()} cores (other work on the machine slows both paths)"
    )
    ratio = generation_bench(args)
    judge_ratio = judging_bench(args)
    print(f"load average at end: {os.getloadavg()[0]:.2f}")
    print(f"TARGET eval_batched_generation_speedup {ratio:.2f} >= {TARGET:.1f} {'PASS' if ratio >= TARGET else 'FAIL'}")
    verdict = "PASS" if judge_ratio >= JUDGE_TARGET else "FAIL"
    print(f"TARGET eval_judge_concurrency_speedup {judge_ratio:.2f} >= {JUDGE_TARGET:.1f} {verdict}")


if __name__ == "__main__":
    main()
