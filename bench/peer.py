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
"""

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from datasets import Dataset  # noqa: E402
from transformers import (  # noqa: E402
    AutoModelForCausalLM,
    DataCollatorForSeq2Seq,
    PreTrainedTokenizerBase,
    Seq2SeqTrainer,
    Seq2SeqTrainingArguments,
    Trainer,
)

from bench.train import Throughput, example_samples  # noqa: E402
from engine.train.prepare import PreparedData, load_tokenizer, prepare_data  # noqa: E402
from engine.train.recipe import Recipe, load_recipe  # noqa: E402
from engine.train.sft import build_trainer, lora_config, precision  # noqa: E402
from engine.train.tiny import build_tiny_model, sample_texts  # noqa: E402

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


def tuneloop_trainer(recipe: Recipe, tokenizer: PreTrainedTokenizerBase, data: Dataset, out: Path) -> Trainer:
    return build_trainer(recipe, tokenizer, PreparedData(data, None), out)


def peer_trainer(recipe: Recipe, tokenizer: PreTrainedTokenizerBase, data: Dataset, out: Path) -> Trainer:
    """transformers' Seq2SeqTrainer over a PEFT model, as LLaMA-Factory's SFT workflow builds it."""
    from peft import get_peft_model

    assert recipe.model_name_or_path is not None
    model = AutoModelForCausalLM.from_pretrained(recipe.model_name_or_path, dtype=torch.float32)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
    model.enable_input_require_grads()
    model.config.use_cache = False
    model = get_peft_model(model, lora_config(recipe))
    bf16, fp16 = precision(recipe)
    args = Seq2SeqTrainingArguments(
        output_dir=str(out),
        per_device_train_batch_size=recipe.per_device_train_batch_size,
        gradient_accumulation_steps=recipe.gradient_accumulation_steps,
        learning_rate=recipe.learning_rate,
        lr_scheduler_type=recipe.lr_scheduler_type,
        warmup_steps=recipe.warmup_ratio,
        max_steps=recipe.max_steps or -1,
        bf16=bf16,
        fp16=fp16,
        save_strategy="no",
        logging_steps=recipe.logging_steps,
        report_to="none",
        disable_tqdm=True,
        include_num_input_tokens_seen="non_padding",
        use_cpu=not torch.cuda.is_available(),
        seed=recipe.seed,
        remove_unused_columns=False,
    )
    collator = DataCollatorForSeq2Seq(tokenizer, pad_to_multiple_of=8, label_pad_token_id=-100)
    return Seq2SeqTrainer(model=model, args=args, train_dataset=data, data_collator=collator)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=600)
    parser.add_argument("--steps", type=int, default=12, help="optimizer steps per run (the first is warm-up)")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved runs of each trainer; the best counts")
    args = parser.parse_args()

    samples = example_samples(args.samples)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model_dir = build_tiny_model(work / "tiny", sample_texts(samples))
        recipe_path = work / "lora_sft.yaml"
        recipe_path.write_text(RECIPE, encoding="utf-8")
        recipe = load_recipe(recipe_path, model_name_or_path=str(model_dir), max_steps=args.steps)
        tokenizer = load_tokenizer(model_dir)
        data = prepare_data(samples, [], tokenizer, recipe).train
        runs = {
            "tuneloop": (tuneloop_trainer, recipe),
            "tuneloop, token_metrics (TRL's fused loss)": (
                tuneloop_trainer,
                recipe.model_copy(update={"token_metrics": True}),
            ),
            "peer (LLaMA-Factory's setup)": (peer_trainer, recipe),
        }
        best = dict.fromkeys(runs, 0.0)
        for _ in range(args.rounds):
            for name, (make, chosen) in runs.items():
                trainer = make(chosen, tokenizer, data, work / "out")
                meter = Throughput()
                trainer.add_callback(meter)
                trainer.train()
                best[name] = max(best[name], meter.tokens_per_second)
    elapsed = time.perf_counter() - started

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({os.cpu_count()} cores)"
    print(f"\ndevice: {device}; {len(samples)} samples, {args.steps} steps, best of {args.rounds}; {elapsed:.0f} s\n")
    for name, value in best.items():
        print(f"{name + ', real tokens/s':<60} {value:>10.0f}")
    ratio = best["tuneloop"] / best["peer (LLaMA-Factory's setup)"]
    print(f"\nTARGET train_vs_peer_tokens_per_s {ratio:.2f} >= 1.0 {'PASS' if ratio >= 1.0 else 'FAIL'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
