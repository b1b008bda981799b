"""tuneloop against a peer trainer configured as LLaMA-Factory configures it, on the same YAML and the same tokens.

Run: .venv/bin/python bench/peer.py [--samples 600] [--steps 12] [--rounds 2]

The same tiny Qwen2 model, the same conversations tokenized once by tuneloop (identical input ids and labels on
both sides) and one LLaMA-Factory-style recipe (LoRA r16 on every linear layer, batch 4 x 2, no packing, unset
keys at LLaMA-Factory's defaults), then, in interleaved rounds (the best of each counts, since other load on a
shared machine only ever slows a run down):

- tuneloop: `build_trainer` as a run uses it (on a CPU, transformers' loss: `uses_fused_loss`);
- tuneloop with `token_metrics: true`: TRL's fused loss path with per-step entropy and token accuracy, the path
  the first measurement rejected on a CPU (shown so the choice stays measured);
- the peer: transformers' Seq2SeqTrainer over a PEFT model as LLaMA-Factory's SFT workflow sets it up
  (src/llamafactory/train/sft/workflow.py: padding to a multiple of 8, labels padded with -100; gradient
  checkpointing on, LLaMA-Factory's default unless disable_gradient_checkpointing).

The figure is real (non-padding) tokens per second after the first step; the target is tuneloop / peer >= 1.

Then start-up, side by side in fresh processes, each timed from its start to the end of its first optimizer step
(the best of `--startup-rounds`, interleaved): `tuneloop train` on the same conversations (imported beforehand as
a dataset version, as a user would have them) with the same YAML, against the peer as a process of its own that
does what LLaMA-Factory's `llamafactory-cli train` does before its first step: read the YAML, load the tokenizer,
read the conversations file and encode it turn by turn as LLaMA-Factory's template does (user part masked), load
the model, wrap it in PEFT, build the trainer. The target is tuneloop / peer <= 1.0: tuneloop starts no slower.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RECIPE = """\
stage: sft
do_train: true
finetuning_type: lora
lora_rank: 16
lora_target: all
cutoff_len: 1024
per_device_train_batch_size: 4
gradient_accumulation_steps: 2
learning_rate: 1.0e-4
lr_scheduler_type: cosine
warmup_ratio: 0.1
save_steps: 1000000
logging_steps: 1000000
"""
FIRST_STEP = "first optimizer step done"  # what the peer process prints; tuneloop train prints "step 1/N"


def peer_trainer(settings: dict[str, Any], model_dir: Path, tokenizer: Any, data: Any, out: Path) -> Any:
    """transformers' Seq2SeqTrainer over a PEFT model, as LLaMA-Factory's SFT workflow builds it from a YAML's
    `settings` (LLaMA-Factory's defaults for keys it leaves unset). Imports only what LLaMA-Factory imports."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, DataCollatorForSeq2Seq, Seq2SeqTrainer, Seq2SeqTrainingArguments

    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
    model.enable_input_require_grads()
    model.config.use_cache = False
    rank = settings.get("lora_rank", 8)
    lora = LoraConfig(
        r=rank,
        lora_alpha=settings.get("lora_alpha", rank * 2),
        lora_dropout=settings.get("lora_dropout", 0.0),
        target_modules="all-linear" if settings.get("lora_target", "all") == "all" else settings["lora_target"],
        bias="none",
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(model, lora)
    args = Seq2SeqTrainingArguments(
        output_dir=str(out),
        per_device_train_batch_size=settings.get("per_device_train_batch_size", 8),
        gradient_accumulation_steps=settings.get("gradient_accumulation_steps", 1),
        learning_rate=settings.get("learning_rate", 5e-5),
        lr_scheduler_type=settings.get("lr_scheduler_type", "linear"),
        warmup_steps=settings.get("warmup_ratio", 0.0),
        max_steps=settings.get("max_steps", -1),
        bf16=settings.get("bf16", False),
        fp16=settings.get("fp16", False),
        save_strategy="no",
        logging_steps=settings.get("logging_steps", 500),
        report_to="none",
        disable_tqdm=True,
        include_num_input_tokens_seen="non_padding",
        use_cpu=not torch.cuda.is_available(),
        seed=settings.get("seed", 42),
        remove_unused_columns=False,
    )
    collator = DataCollatorForSeq2Seq(tokenizer, pad_to_multiple_of=8, label_pad_token_id=-100)
    return Seq2SeqTrainer(model=model, args=args, train_dataset=data, data_collator=collator)


def peer_encode(tokenizer: Any, messages: list[dict], cutoff_len: int) -> tuple[list[int], list[int]]:
    """A conversation as LLaMA-Factory's `qwen` template encodes it for SFT: each turn's formatted text encoded on
    its own (data/template.py encode_multiturn), prompts masked with -100, cut at cutoff_len."""
    input_ids: list[int] = []
    labels: list[int] = []
    for message in messages:
        text = f"<|im_start|>{message['role']}\n{message.get('content') or ''}<|im_end|>\n"
        ids = tokenizer.encode(text, add_special_tokens=False)
        input_ids += ids
        labels += ids if message["role"] == "assistant" else [-100] * len(ids)
    return input_ids[:cutoff_len], labels[:cutoff_len]


def peer_start(recipe_path: Path, data_path: Path, out: Path) -> None:
    """The peer as a process of its own, from its start to its first optimizer step (`--peer-start`)."""
    import yaml
    from datasets import Dataset
    from transformers import AutoTokenizer, TrainerCallback

    settings = yaml.safe_load(recipe_path.read_text(encoding="utf-8"))
    model_dir = Path(settings["model_name_or_path"])
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    rows: dict[str, list] = {"input_ids": [], "labels": []}
    with data_path.open(encoding="utf-8") as lines:
        for line in lines:
            input_ids, labels = peer_encode(tokenizer, json.loads(line)["messages"], settings.get("cutoff_len", 2048))
            rows["input_ids"].append(input_ids)
            rows["labels"].append(labels)

    class FirstStep(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 1:
                print(FIRST_STEP, flush=True)

    trainer = peer_trainer(settings, model_dir, tokenizer, Dataset.from_dict(rows), out)
    trainer.add_callback(FirstStep())
    trainer.train()


def seconds_to_first_step(command: list[str], marker: str, env: dict[str, str]) -> float:
    """From starting `command` to its first output line that starts with `marker`; the process is then stopped."""
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT)
    assert process.stdout is not None
    tail: list[str] = []
    for line in process.stdout:
        if line.strip().startswith(marker):
            elapsed = time.perf_counter() - started
            process.kill()
            process.wait()
            return elapsed
        tail = [*tail[-20:], line.rstrip()]
    process.wait()
    raise RuntimeError(f"{command[:4]} ended (exit {process.returncode}) before its first step:\n" + "\n".join(tail))


def startup(work: Path, model_dir: Path, samples: list, rounds: int) -> dict[str, float]:
    """Seconds from process start to the first optimizer step, the best of `rounds` interleaved fresh processes."""
    data_path = work / "conversations.jsonl"
    with data_path.open("w", encoding="utf-8") as out:
        for sample in samples:
            messages = [m.model_dump(exclude_none=True) for m in sample.messages]
            out.write(json.dumps({"messages": messages}, ensure_ascii=False) + "\n")
    recipe_path = work / "startup_lora_sft.yaml"
    logged = RECIPE.replace("logging_steps: 1000000", "logging_steps: 1")  # tuneloop train prints a logged step
    recipe_path.write_text(f"{logged}model_name_or_path: {model_dir}\nmax_steps: 2\n", encoding="utf-8")
    env = {**os.environ, "TUNELOOP_HOME": str(work / "home"), "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    env.pop("TUNELOOP_DATABASE_URL", None)  # a database of this bench's own, in its home
    tuneloop = [sys.executable, "-m", "bot.cli"]
    imported = subprocess.run(
        [*tuneloop, "data", "import", str(data_path), "--project", "bench"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    if imported.returncode != 0:
        raise RuntimeError(f"import failed: {imported.stdout}{imported.stderr}")
    commands = {
        "tuneloop train": (
            [*tuneloop, "train", "--project", "bench", "--dataset", "1", "--recipe", str(recipe_path)],
            "step 1/",
        ),
        "peer (LLaMA-Factory's steps)": (
            [sys.executable, __file__, "--peer-start", str(recipe_path), str(data_path), str(work / "peer")],
            FIRST_STEP,
        ),
    }
    best = dict.fromkeys(commands, float("inf"))
    for _ in range(rounds):
        for name, (command, marker) in commands.items():
            best[name] = min(best[name], seconds_to_first_step(command, marker, env))
    return best


def throughput(work: Path, model_dir: Path, samples: list, steps: int, rounds: int) -> dict[str, float]:
    """Real tokens per second after the first step, the best of `rounds` interleaved runs, on identical ids."""
    import yaml

    from bench.train import Throughput
    from engine.train.prepare import PreparedData, load_tokenizer, prepare_data
    from engine.train.recipe import load_recipe
    from engine.train.sft import build_trainer, precision

    recipe_path = work / "lora_sft.yaml"
    recipe_path.write_text(RECIPE, encoding="utf-8")
    recipe = load_recipe(recipe_path, model_name_or_path=str(model_dir), max_steps=steps)
    bf16, fp16 = precision(recipe)  # the same precision on both sides (LLaMA-Factory's unset is fp32)
    settings = {**yaml.safe_load(RECIPE), "max_steps": steps, "bf16": bf16, "fp16": fp16}
    tokenizer = load_tokenizer(model_dir)
    data = prepare_data(samples, [], tokenizer, recipe).train
    runs = {
        "tuneloop": lambda: build_trainer(recipe, tokenizer, PreparedData(data, None), work / "out"),
        "tuneloop, token_metrics (TRL's fused loss)": lambda: build_trainer(
            recipe.model_copy(update={"token_metrics": True}), tokenizer, PreparedData(data, None), work / "out"
        ),
        "peer (LLaMA-Factory's setup)": lambda: peer_trainer(settings, model_dir, tokenizer, data, work / "out"),
    }
    best = dict.fromkeys(runs, 0.0)
    for _ in range(rounds):
        for name, make in runs.items():
            trainer = make()
            meter = Throughput()
            trainer.add_callback(meter)
            trainer.train()
            best[name] = max(best[name], meter.tokens_per_second)
    return best


def main() -> int:
    if sys.argv[1:2] == ["--peer-start"]:
        peer_start(*(Path(arg) for arg in sys.argv[2:5]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=600)
    parser.add_argument("--steps", type=int, default=12, help="optimizer steps per run (the first is warm-up)")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved runs of each trainer; the best counts")
    parser.add_argument("--startup-rounds", type=int, default=4, help="fresh processes of each; the best counts")
    args = parser.parse_args()

    import torch

    from bench.train import example_samples
    from engine.train.tiny import build_tiny_model, sample_texts

    samples = example_samples(args.samples)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model_dir = build_tiny_model(work / "tiny", sample_texts(samples))
        speed = throughput(work, model_dir, samples, args.steps, args.rounds)
        start = startup(work, model_dir, samples, args.startup_rounds)
    elapsed = time.perf_counter() - started

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({os.cpu_count()} cores)"
    print(f"\ndevice: {device}; {len(samples)} samples, {args.steps} steps, best of {args.rounds}; {elapsed:.0f} s\n")
    for name, value in speed.items():
        print(f"{name + ', real tokens/s':<60} {value:>10.0f}")
    print(f"\nstart-up to the first optimizer step, best of {args.startup_rounds} fresh processes:")
    for name, value in start.items():
        print(f"{name + ', s':<60} {value:>10.2f}")
    ratio = speed["tuneloop"] / speed["peer (LLaMA-Factory's setup)"]
    print(f"\nTARGET train_vs_peer_tokens_per_s {ratio:.2f} >= 1.0 {'PASS' if ratio >= 1.0 else 'FAIL'}")
    startup_ratio = start["tuneloop train"] / start["peer (LLaMA-Factory's steps)"]
    print(f"TARGET train_startup_vs_peer {startup_ratio:.2f} <= 1.0 {'PASS' if startup_ratio <= 1.0 else 'FAIL'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
