"""Evaluation: tuned vs base on a dataset version's test split.

This slice: generation (`generate`) and reference metrics (`reference`). A run's evaluation stage does

    loaded = load_models(base_model, adapter_dir)               # the base once, the adapter on top
    generation = generate_pairs(loaded, held_out_samples(entries), GenerationSettings(...))
    metrics = reference_metrics(generation.samples, loaded.model, loaded.tokenizer)

and the judge, the gate and the report (later slices) read `generation.samples` and `metrics`.
"""

from engine.evaluate.generate import (
    Answer,
    GeneratedSample,
    Generation,
    GenerationSettings,
    LoadedModels,
    PassStats,
    adapter_disabled,
    generate_answers,
    generate_pairs,
    held_out_samples,
    load_models,
    prompt_messages,
)
from engine.evaluate.reference import (
    AnswerNLL,
    ReferenceMetrics,
    ReferenceScores,
    SampleMetrics,
    answer_nlls,
    cjk_share,
    corpus_perplexity,
    language_of,
    mean_scores,
    reference_metrics,
    score_answer,
    tokens,
)

__all__ = [
    "Answer",
    "AnswerNLL",
    "GeneratedSample",
    "Generation",
    "GenerationSettings",
    "LoadedModels",
    "PassStats",
    "ReferenceMetrics",
    "ReferenceScores",
    "SampleMetrics",
    "adapter_disabled",
    "answer_nlls",
    "cjk_share",
    "corpus_perplexity",
    "generate_answers",
    "generate_pairs",
    "held_out_samples",
    "language_of",
    "load_models",
    "mean_scores",
    "prompt_messages",
    "reference_metrics",
    "score_answer",
    "tokens",
]
