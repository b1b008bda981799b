"""Preference learning from reviews, measured: does a DPO run on reviewers' pairs lower the log-probability of the
rejected answers relative to the chosen ones on pairs it never trained on?

Run: .venv/bin/python bench/dpo.py [--per-topic 16] [--held-out 0.3]

The loop as the product runs it, on a tiny model built here (no pretraining: seconds, not minutes) and a shop's
short questions on four topics (shipping, returns, invoices, postage), numbered so that no two are the same; half
of each topic's questions train, the other half are the test split:

1. Iteration 1: SFT on the train split (engine/train/sft.py).
2. Its tuned model answers the test questions; a scripted reviewer fixes every answer (engine.loop.reviews.
   record_review, what the core's Review action calls) with the reference and the closing line the team always
   uses, as the demo's reviewer does, which makes the preference pairs (the corrected answer chosen, the tuned
   answer rejected). The fixes of a held-out share of the questions are left out of the project; they are the
   held-out pairs, built the same way.
3. Iteration 2: Retrain with SFT + DPO (start_next_iteration(dpo=True)), trained by engine/train/dpo.py: SFT, then
   DPO on the project's pairs, the SFT policy as the reference.
4. On the held-out pairs (and, for comparison, the training pairs): the margin log π(chosen) − log π(rejected) of
   iteration 2's SFT adapter (the reference) and of its DPO adapter, side by side. The gain is the DPO adapter's
   mean margin minus the SFT adapter's, in nats per pair.

Iteration 1's recipe (carried to iteration 2) sets the DPO keys for a 360K-parameter model: pref_learning_rate
5e-4 and 3 epochs. The recipe's defaults (5e-5, 1 epoch) are meant for real models; on this one they move the
held-out margin by about 0.4 nats.

The target: a held-out gain of at least 1 nat per pair (the rejected answer becomes e times less likely relative to
the chosen one than under the SFT policy on questions DPO never saw).
"""

import argparse
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TOPICS = [
    ("第{n}号订单发货了吗？", "第{n}号订单已于{d}日发出，请留意物流短信。"),
    ("第{n}号订单能退货吗？", "第{n}号订单签收后7天内可以退货。"),
    ("第{n}号订单怎么开发票？", "请在第{n}号订单页点击申请发票。"),
    ("第{n}号订单的运费谁出？", "第{n}号订单的运费由本店承担。"),
]
TARGET_GAIN = 1.0  # nats per held-out pair
CLOSING = "如还有其他问题，欢迎随时联系我们。"  # the reviewers' closing line (bot/cli/demo.py's)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--per-topic", type=int, default=16, help="questions per topic (half train, half test)")
    parser.add_argument("--held-out", type=float, default=0.3, help="share of the pairs DPO never trains on")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    home = Path(tempfile.mkdtemp(prefix="bench-dpo-"))
    os.environ["TUNELOOP_DATABASE_URL"] = f"sqlite:///{home / 'tuneloop.db'}"
    os.environ["TUNELOOP_ARTIFACT_ROOT"] = str(home / "artifacts")
    try:
        measure(home, args.per_topic, args.held_out)
    finally:
        shutil.rmtree(home, ignore_errors=True)


def measure(home: Path, per_topic: int, held_out: float) -> None:
    started = time.monotonic()

    from engine.data.sample import Sample
    from engine.train.tiny import build_tiny_model

    train, test = [], []
    for question, answer in TOPICS:
        for n in range(1, per_topic + 1):
            number = 100 + 7 * n
            messages = [
                {"role": "user", "content": question.format(n=number)},
                {"role": "assistant", "content": answer.format(n=number, d=n)},
            ]
            (train if n % 2 else test).append(Sample(messages=messages))
    model = build_tiny_model(home / "model")

    first, pairs_held = iteration_one(model, train, test, held_out)
    print(f"iteration 1 (run {first}) trained and reviewed ({time.monotonic() - started:.0f}s)")
    second = iteration_two(first)
    print(f"iteration 2 (run {second.run_id}): SFT + DPO on {second.pairs} pairs ({time.monotonic() - started:.0f}s)")

    rows = []
    for name, pairs in (("training pairs", second.trained), ("held-out pairs", pairs_held)):
        sft = margins(second.sft_adapter, model, pairs)
        dpo = margins(second.dpo_adapter, model, pairs)
        gain = sum(d - s for d, s in zip(dpo, sft, strict=True)) / len(pairs)
        rose = sum(d > s for d, s in zip(dpo, sft, strict=True))
        rows.append((name, len(pairs), _mean(sft), _mean(dpo), gain, rose))
    print(f"\n{'pairs':<16}{'n':>4}{'SFT margin':>12}{'DPO margin':>12}{'gain':>8}{'rose':>8}")
    for name, n, sft_mean, dpo_mean, gain, rose in rows:
        print(f"{name:<16}{n:>4}{sft_mean:>12.2f}{dpo_mean:>12.2f}{gain:>8.2f}{rose:>5}/{n}")
    print("(margin: mean log π(chosen) − log π(rejected) in nats; gain: DPO's minus SFT's, per pair)")
    print(f"\nmeasured in {time.monotonic() - started:.0f}s")
    held_gain = rows[1][4]
    verdict = "PASS" if held_gain > TARGET_GAIN else "FAIL"
    print(f"TARGET dpo_heldout_margin_gain {held_gain:.2f} > {TARGET_GAIN} {verdict}")


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def iteration_one(model: Path, train: list, test: list, held_out: float) -> tuple[int, list]:
    """Run 1: SFT, its answers to the test questions, a reviewer's fixes; returns the run and the held-out pairs."""
    from sqlmodel import col, select

    from engine.data.sample import Message
    from engine.data.versions import Entry, get_or_create_dataset, save_version
    from engine.database import get_engine
    from engine.loop.projects import get_or_create_project
    from engine.loop.reviews import record_review
    from engine.train.recipe import Recipe
    from engine.train.sft import train as train_run
    from storage.db import session_scope
    from storage.models import Evaluation, Judgement, Run
    from storage.models import Sample as SampleRow

    entries = [Entry(s, "train") for s in train] + [Entry(s, "test") for s in test]
    with session_scope(get_engine()) as session:
        project = get_or_create_project(session, "bench")
        project.base_model, project.settings = str(model), {"dpo_min_pairs": 1}
        dataset = get_or_create_dataset(session, project)
        save_version(session, dataset, entries, kind="split", summary="bench", parent=None)
    recipe = Recipe(
        num_train_epochs=6,
        learning_rate=5e-3,
        per_device_train_batch_size=4,
        logging_steps=5,
        cutoff_len=96,
        save_steps=1000,
        pref_learning_rate=5e-4,
        pref_num_train_epochs=3,
    )
    with session_scope(get_engine()) as session:
        outcome = train_run(session, "bench", None, recipe)
        assert outcome is not None
        run_id = outcome.run.id
    answers = generate(outcome.adapter_dir, model, test)
    held = set(random.Random(1).sample(range(len(test)), round(held_out * len(test))))
    held_pairs = []
    with session_scope(get_engine()) as session:
        evaluation = Evaluation(run_id=run_id, judge_kind="metric")
        session.add(evaluation)
        session.flush()
        rows = session.exec(
            select(SampleRow)
            .where(SampleRow.version_id == outcome.run.dataset_version_id, SampleRow.split == "test")
            .order_by(col(SampleRow.position))
        ).all()
        for index, (row, sample, answer) in enumerate(zip(rows, test, answers, strict=True)):
            judgement = Judgement(
                evaluation_id=evaluation.id,
                sample_id=row.id,
                position=index,
                question=sample.prompt_text(),
                reference=sample.answer_text(),
                tuned_answer=answer,
            )
            session.add(judgement)
            session.flush()
            corrected = f"{sample.answer_text()}{CLOSING}"
            if index in held:
                chosen = [*sample.messages[:-1], Message(role="assistant", content=corrected)]
                rejected = Message(role="assistant", content=answer)
                held_pairs.append(sample.model_copy(update={"messages": chosen, "rejected": rejected}))
                continue
            record_review(
                session, judgement_id=judgement.id, reviewer="bench-reviewer", verdict="fix", corrected_answer=corrected
            )
        session.get(Run, run_id).state = "reviewing"
    return run_id, held_pairs


class IterationTwo:
    def __init__(self, run_id: int, out: Path, trained: list) -> None:
        self.run_id, self.trained = run_id, trained
        self.pairs = len(trained)
        self.sft_adapter, self.dpo_adapter = out / "sft_adapter", out / "adapter"


def iteration_two(first: int) -> IterationTwo:
    from engine.database import get_engine
    from engine.loop.preferences import PAIRS_FILE, read_pairs_file
    from engine.loop.reviews import start_next_iteration
    from engine.train.sft import train as train_run
    from storage.db import session_scope

    with session_scope(get_engine()) as session:
        run_id = start_next_iteration(session, first, by="bench-reviewer", dpo=True).run.id
    with session_scope(get_engine()) as session:
        outcome = train_run(session, "bench", None, None, run_id=run_id)
        assert outcome is not None
    out = outcome.adapter_dir.parent
    return IterationTwo(run_id, out, read_pairs_file(out / PAIRS_FILE))


def generate(adapter: Path, model: Path, samples: list) -> list[str]:
    """The tuned model's greedy answers (what a reviewer sees on a card)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from engine.train.merge import generation_config_for
    from engine.train.prepare import message_dicts

    tokenizer = AutoTokenizer.from_pretrained(str(adapter))
    policy = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(model)), str(adapter)).eval()
    config = generation_config_for(adapter)
    answers = []
    for sample in samples:
        prompt = message_dicts(sample)[: sample.last_assistant_index()]
        inputs = tokenizer.apply_chat_template(
            prompt, add_generation_prompt=True, return_tensors="pt", return_dict=True
        )
        with torch.no_grad():
            out = policy.generate(**inputs, max_new_tokens=64, do_sample=False, generation_config=config)
        answers.append(tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True).strip())
    return answers


def margins(adapter: Path, model: Path, pairs: list) -> list[float]:
    """log π(chosen) − log π(rejected) per pair, over the answer tokens DPO trains on (answer + end-of-turn)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from engine.train.dpo import tokenize_pair
    from engine.train.prepare import end_of_turn_token, load_tokenizer

    tokenizer = load_tokenizer(adapter)
    eot = end_of_turn_token(tokenizer)
    policy = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(model)), str(adapter)).eval()

    def logprob(prompt: list[int], answer: list[int]) -> float:
        ids = torch.tensor([prompt + answer])
        with torch.no_grad():
            logits = policy(input_ids=ids).logits[0, :-1].log_softmax(-1)
        targets = ids[0, 1:]
        picked = logits.gather(-1, targets[:, None])[:, 0]
        return float(picked[len(prompt) - 1 :].sum())

    result = []
    for pair in pairs:
        ids = tokenize_pair(pair, tokenizer, eot)
        result.append(logprob(ids["prompt_ids"], ids["chosen_ids"]) - logprob(ids["prompt_ids"], ids["rejected_ids"]))
    return result


if __name__ == "__main__":
    main()
