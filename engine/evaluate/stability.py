"""Stability: does the model give the same answer when asked the same question twice?

The seed's complaint is "同一个问题两次答案不同". For a seeded sample of prompts, each prompt is answered `k`
times with sampling (the settings' temperature and top_p, a different seed per draw), and the k answers are
compared with one another:

- agreement: the mean ROUGE-L F1 over the k·(k-1)/2 pairs of answers, on `text.tokens` (every Han
  character a token, other words whole, punctuation dropped), so Chinese is compared on characters, never on
  whitespace; 1.0 when all k answers say the same thing;
- exact share: the share of those pairs whose answers are equal after `normalize_text`;
- distinct: how many different answers (after normalisation) the k draws gave.

The report gives the means over the sampled prompts and the least stable prompts, lowest agreement first.

A draw is one `generate_answers` pass over all sampled prompts (batched as the settings say), seeded with
`seed * k + draw`, so the whole measurement is repeatable from `seed` (the settings' own seed is replaced).
The settings are used as given: with `do_sample=False` every draw is the greedy answer and agreement is 1.0
by construction, a control rather than a measurement; `STABILITY_SETTINGS` sample. The model is measured as
it stands: pass `loaded.model` for base+adapter, or use `base_and_tuned_stability` for both.
"""

import random
from collections.abc import Sequence
from dataclasses import replace
from itertools import combinations

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from engine.data.normalize import normalize_text
from engine.evaluate.generate import LoadedModels, adapter_disabled, generate_answers
from engine.evaluate.results import GenerationSettings, PromptStability, StabilityReport
from engine.evaluate.text import tokens

# Sampling as a chat deployment typically serves: what a user asking twice would see.
STABILITY_SETTINGS = GenerationSettings(max_new_tokens=128, batch_size=8, do_sample=True, temperature=0.7, top_p=0.9)


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence of two token lists."""
    if len(a) < len(b):
        a, b = b, a
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b):
            current.append(previous[j] + 1 if x == y else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]


def similarity(a: str, b: str) -> float:
    """ROUGE-L F1 of two answers on `text.tokens` (symmetric). Two answers without tokens count as equal
    when their normalised texts are."""
    ta, tb = tokens(a), tokens(b)
    if not ta or not tb:
        return float(not ta and not tb and normalize_text(a) == normalize_text(b))
    common = lcs_length(ta, tb)
    return 2 * common / (len(ta) + len(tb))  # F1 of precision common/len(tb) and recall common/len(ta)


def agreement_of(answers: Sequence[str]) -> tuple[float, float, int]:
    """(mean pairwise similarity, share of exactly equal pairs, distinct answers) of one prompt's answers."""
    normalized = [normalize_text(a) for a in answers]
    pairs = list(combinations(range(len(answers)), 2))
    if not pairs:
        return 1.0, 1.0, len(set(normalized))
    mean = sum(similarity(answers[i], answers[j]) for i, j in pairs) / len(pairs)
    exact = sum(normalized[i] == normalized[j] for i, j in pairs) / len(pairs)
    return mean, exact, len(set(normalized))


def sample_indices(count: int, sample_size: int | None, seed: int) -> list[int]:
    """A seeded choice of `sample_size` of `count` prompts (all of them when None or larger), in order."""
    if sample_size is None or sample_size >= count:
        return list(range(count))
    return sorted(random.Random(seed).sample(range(count), sample_size))


def stability(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[Sequence[dict]],
    *,
    k: int = 5,
    sample_size: int | None = 20,
    settings: GenerationSettings = STABILITY_SETTINGS,
    seed: int = 0,
    worst: int = 5,
    tools: Sequence[Sequence[dict] | None] | None = None,
) -> StabilityReport:
    """How much `k` sampled answers to each of a seeded sample of `prompts` (lists of chat messages) agree."""
    if k < 2:
        raise ValueError("k must be at least 2: agreement compares answers with one another")
    if sample_size is not None and sample_size < 1:
        raise ValueError("sample_size must be at least 1 (or None for every prompt)")
    chosen = sample_indices(len(prompts), sample_size, seed)
    asked = [list(prompts[i]) for i in chosen]
    offered = [tools[i] for i in chosen] if tools is not None else None
    draws: list[list[str]] = []
    total_tokens, total_seconds = 0, 0.0
    for draw in range(k):
        answers, stats = generate_answers(
            model, tokenizer, asked, replace(settings, seed=seed * k + draw), tools=offered
        )
        draws.append([a.text for a in answers])
        total_tokens += stats.tokens
        total_seconds += stats.seconds
    rows = []
    for n, index in enumerate(chosen):
        answers = [draw[n] for draw in draws]
        mean, exact, distinct = agreement_of(answers)
        question = str(prompts[index][-1].get("content") or "") if prompts[index] else ""
        rows.append(PromptStability(index, question, answers, mean, exact, distinct))
    report = StabilityReport(rows, settings, k, seed, tokens=total_tokens, seconds=total_seconds)
    if rows:
        report.mean_agreement = sum(r.agreement for r in rows) / len(rows)
        report.mean_exact_share = sum(r.exact_share for r in rows) / len(rows)
        report.least_stable = sorted(rows, key=lambda r: (r.agreement, r.exact_share, r.index))[:worst]
    return report


def base_and_tuned_stability(
    loaded: LoadedModels, prompts: Sequence[Sequence[dict]], **options
) -> tuple[StabilityReport, StabilityReport]:
    """Stability of the base model (adapter off) and of base+adapter on the same prompts, draws and seeds.

    Without an adapter both reports are the base model's (one measurement, returned twice)."""
    with adapter_disabled(loaded.model) as base:
        base_report = stability(base, loaded.tokenizer, prompts, **options)
    if loaded.adapter_dir is None:
        return base_report, base_report
    return base_report, stability(loaded.model, loaded.tokenizer, prompts, **options)
