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
    results.py       what the steps produce, as plain dataclasses
    text.py          whether a text is Chinese, and its tokens for comparing answers

Only generate.py, reference.py, stability.py and forgetting.py import torch and transformers: the gate, the judges
and the report stages load without them (a cpu worker and the bots start light), so this package imports nothing.
"""
