"""Evaluation: tuned vs base on a dataset version's test split.

A run's evaluation is three restartable stages (run.py): `generate_for_run` (gpu queue), `judge_for_run` and
`report_for_run` (cpu queue), handing on generated.json and judged.json in the run's artifacts; `evaluate_run(session,
run_id, EvaluationOptions(...))` runs the three in turn. They compose the modules below and store an `Evaluation`
row, a `Judgement` row per test sample and the report:

    generate.py      base and base+adapter answers from one loaded model, batched
    reference.py     ROUGE-L, BLEU, chrF, exact match (Chinese on characters or jieba words), perplexity
    stability.py     how much k sampled answers to one prompt agree
    forgetting.py    the general-ability probe set (Chinese and English) answered by both models
    judge.py         the LLM judge: graded on a rubric and compared pairwise in both orders
    metric_judge.py  the judge when no endpoint is configured: reference metrics mapped to 1-5
    gate.py          the project's bar for deployment, with its reasons
    weakest.py       the lowest-scoring samples grouped by sub-scenario
    agreement.py     how often the judge agreed with people's reviews
    report.py        Markdown, self-contained HTML and the chat summary, with charts.py's PNGs
"""

from engine.evaluate.gate import GateConfig, GateDecision, GateInputs, decide
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
from engine.evaluate.run import (
    EvaluationError,
    EvaluationOptions,
    EvaluationOutcome,
    evaluate_run,
    generate_for_run,
    judge_for_run,
    report_for_run,
)

__all__ = [
    "Answer",
    "AnswerNLL",
    "EvaluationError",
    "EvaluationOptions",
    "EvaluationOutcome",
    "GateConfig",
    "GateDecision",
    "GateInputs",
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
    "decide",
    "evaluate_run",
    "generate_answers",
    "generate_for_run",
    "generate_pairs",
    "held_out_samples",
    "judge_for_run",
    "language_of",
    "load_models",
    "mean_scores",
    "prompt_messages",
    "reference_metrics",
    "report_for_run",
    "score_answer",
    "tokens",
]
