"""Training throughput and memory, measured side by side in one run.

Run: .venv/bin/python bench/train.py [--samples 2000] [--steps 8] [--rounds 3]

1. Speed. The same tiny model and the same 2,000 example conversations, the same LoRA adapter and batch shape:
   the seed recipe (transformers' Trainer, every sample padded to max_length=512, loss on every token) against
   tuneloop's default recipe (engine/train/recipes/default.yaml: assistant-only loss, best-fit-decreasing
   packing, padding-free). The figure compared is real (non-padding) tokens per second, and the ratio.
2. Memory. Peak memory of `full`, `lora` and `qlora` training steps on a model large enough for its weights
   to dominate (~26M parameters), each in a fresh process: on a GPU `torch.cuda.max_memory_allocated`, on CPU
   the peak of the process's anonymous resident memory (file-backed pages of the memory-mapped checkpoint
   are left out, since they are not the training's).
"""

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from datasets import Dataset  # noqa: E402
from transformers import Trainer, TrainerCallback, TrainingArguments  # noqa: E402

from engine.data.sample import Sample  # noqa: E402
from engine.train.prepare import load_tokenizer, message_dicts, prepare_data  # noqa: E402
from engine.train.recipe import load_recipe  # noqa: E402
from engine.train.sft import build_trainer, lora_config, precision, uses_packing  # noqa: E402
from engine.train.tiny import TinySpec, build_tiny_model, sample_texts  # noqa: E402

MEMORY_SPEC = TinySpec(hidden_size=512, intermediate_size=1536, num_hidden_layers=8, num_attention_heads=8)


def example_samples(count: int) -> list[Sample]:
    """`count` clean conversations from the example builder, over as many seeds as it takes."""
    spec = importlib.util.spec_from_file_location("build_customer_service", ROOT / "examples/build_customer_service.py")
    assert spec and spec.loader
    builder = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(builder)
    samples: list[Sample] = []
    seed = builder.DEFAULT_SEED
    while len(samples) < count:
        for record in builder.build(seed):
            if "flaw" not in record and len(samples) < count:
                samples.append(Sample(messages=record["messages"], tags=record.get("tags", [])))
        seed += 1
    return samples


class Throughput(TrainerCallback):
    """Real tokens per second between the end of the first step (warm-up excluded) and the end of training."""

    def __init__(self) -> None:
        self.start: tuple[float, int] | None = None
        self.end: tuple[float, int] | None = None

    def on_step_end(self, args, state, control, **kwargs):
        mark = (time.perf_counter(), state.num_input_tokens_seen)
        if state.global_step == 1:
            self.start = mark
        self.end = mark

    @property
    def tokens_per_second(self) -> float:
        assert self.start and self.end
        return (self.end[1] - self.start[1]) / (self.end[0] - self.start[0])


def seed_trainer(model_dir: Path, samples: list[Sample], steps: int, out: Path) -> Trainer:
    """The seed recipe: chat text padded to 512, labels = input ids (pads ignored), HF Trainer, same LoRA."""
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    recipe = load_recipe(None, model_name_or_path=str(model_dir))
    tokenizer = load_tokenizer(model_dir)
    texts = [tokenizer.apply_chat_template(message_dicts(s), tokenize=False) for s in samples]
    encoded = tokenizer(texts, padding="max_length", max_length=512, truncation=True, add_special_tokens=False)
    labels = [
        [t if m else -100 for t, m in zip(ids, mask, strict=True)]
        for ids, mask in zip(encoded["input_ids"], encoded["attention_mask"], strict=True)
    ]
    dataset = Dataset.from_dict({**encoded, "labels": labels})
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32), lora_config(recipe))
    bf16, fp16 = precision(recipe)
    args = TrainingArguments(
        output_dir=str(out),
        per_device_train_batch_size=recipe.per_device_train_batch_size,
        gradient_accumulation_steps=recipe.gradient_accumulation_steps,
        learning_rate=recipe.learning_rate,
        max_steps=steps,
        bf16=bf16,
        fp16=fp16,
        save_strategy="no",
        logging_steps=1000,
        report_to="none",
        disable_tqdm=True,
        include_num_input_tokens_seen="non_padding",
        use_cpu=not torch.cuda.is_available(),
        seed=recipe.seed,
    )
    return Trainer(model=model, args=args, train_dataset=dataset)


def tuneloop_trainer(model_dir: Path, samples: list[Sample], steps: int, out: Path) -> Trainer:
    recipe = load_recipe(None, model_name_or_path=str(model_dir), save_steps=10**6, logging_steps=1000)
    tokenizer = load_tokenizer(model_dir)
    trainer = build_trainer(recipe, tokenizer, prepare_data(samples, [], tokenizer, recipe), out)
    trainer.args.max_steps = steps
    return trainer


def measure_speed(samples: list[Sample], steps: int, rounds: int, work: Path) -> dict[str, float]:
    """Best of `rounds` alternating runs of each recipe: on a shared machine, other load only ever slows a run
    down, and alternating exposes both recipes to it alike."""
    model_dir = build_tiny_model(work / "tiny", sample_texts(samples))
    results = {"seed": 0.0, "tuneloop": 0.0}
    for _ in range(rounds):
        for name, make in (("seed", seed_trainer), ("tuneloop", tuneloop_trainer)):
            trainer = make(model_dir, samples, steps, work / name)
            meter = Throughput()
            trainer.add_callback(meter)
            trainer.train()
            results[name] = max(results[name], meter.tokens_per_second)
    return results


def anon_rss_bytes() -> int:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    return 0


def memory_child(mode: str, model_dir: Path, samples: list[Sample], out: Path) -> None:
    """One mode's training steps in this (fresh) process; prints its peak memory as JSON."""
    peak = [anon_rss_bytes()]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], anon_rss_bytes())
            time.sleep(0.005)

    baseline = anon_rss_bytes()
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    recipe = load_recipe(
        None,
        model_name_or_path=str(model_dir),
        finetuning_type=mode,
        cutoff_len=512,
        per_device_train_batch_size=1,
        gradient_accumulation_steps=1,
        save_steps=10**6,
        logging_steps=1000,
    )
    tokenizer = load_tokenizer(model_dir)
    trainer = build_trainer(recipe, tokenizer, prepare_data(samples, [], tokenizer, recipe), out)
    trainer.args.max_steps = 3
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    trainer.train()
    done.set()
    sampler.join()
    if torch.cuda.is_available():
        value, what = torch.cuda.max_memory_allocated(), "cuda max_memory_allocated"
    else:
        value, what = peak[0] - baseline, "peak anonymous RSS above start"
    print(json.dumps({"mode": mode, "bytes": value, "what": what}))


def measure_memory(samples: list[Sample], work: Path) -> dict[str, int]:
    model_dir = build_tiny_model(work / "memory-model", sample_texts(samples), MEMORY_SPEC)
    results = {}
    for mode in ("full", "lora", "qlora"):
        output = subprocess.run(
            [sys.executable, __file__, "--memory-child", mode, "--model", str(model_dir), "--samples", "64"],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        ).stdout
        line = next(line for line in output.splitlines() if line.startswith("{"))
        results[mode] = json.loads(line)["bytes"]
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--steps", type=int, default=8, help="optimizer steps per run (the first is warm-up)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating runs of each recipe; the best counts")
    parser.add_argument("--memory-child", choices=["full", "lora", "qlora"], help=argparse.SUPPRESS)
    parser.add_argument("--model", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()

    samples = example_samples(args.samples)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if args.memory_child:
            memory_child(args.memory_child, args.model, samples, work / "out")
            return 0
        started = time.perf_counter()
        speed = measure_speed(samples, args.steps, args.rounds, work)
        memory = measure_memory(samples, work)
        elapsed = time.perf_counter() - started

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({os.cpu_count()} cores)"
    ratio = speed["tuneloop"] / speed["seed"]
    how = "packed, padding-free" if uses_packing(load_recipe(None)) else "length-grouped, padded per batch"
    print(f"\ndevice: {device}; {len(samples)} samples; {elapsed:.0f} s in all\n")
    print(f"{'measure':<76} {'value':>10}")
    print(f"{'-' * 76} {'-' * 10}")
    rows = [
        ("seed recipe (pad to 512, loss on all), real tokens/s", f"{speed['seed']:.0f}"),
        (f"tuneloop default recipe ({how}), real tokens/s", f"{speed['tuneloop']:.0f}"),
        ("ratio tuneloop / seed", f"{ratio:.2f}"),
        *((f"peak memory, {mode} (MiB)", f"{value / 2**20:.0f}") for mode, value in memory.items()),
    ]
    for name, value in rows:
        print(f"{name:<76} {value:>10}")
    print()
    order_ok = memory["qlora"] < memory["lora"] < memory["full"]
    print(f"TARGET train_real_tokens_per_s_ratio {ratio:.2f} >= 3 {'PASS' if ratio >= 3 else 'FAIL'}")
    order = " < ".join(f"{m}={memory[m] / 2**20:.0f}MiB" for m in ("qlora", "lora", "full"))
    print(f"TARGET train_peak_memory_order {order} == qlora<lora<full {'PASS' if order_ok else 'FAIL'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
