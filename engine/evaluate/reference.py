"""Reference metrics: how close an answer is to the sample's reference answer, and how likely each model
finds the reference.

- ROUGE-L F1 (rouge-score) on our own tokens: every Han character is a token, every other run of letters
  or digits is a word, punctuation and whitespace are dropped, after `normalize_text`. rouge-score's
  default tokenizer keeps only [a-z0-9], so it scores any two Chinese texts 0; it is never used.
- BLEU (sacrebleu, sentence level with effective order) with `tokenize="zh"` when the reference is
  Chinese, `13a` otherwise. 0–100.
- chrF (sacrebleu), character n-grams without whitespace: language-neutral. 0–100.
- Exact match after `normalize_text` (NFKC, whitespace collapsed, case folded): 1.0 or 0.0.
- Perplexity of the reference answer under a model: the mean token negative log-likelihood of the last
  assistant turn, rendered with the model's chat template after its prompt, over the answer's tokens and
  the template's end-of-turn token (exactly the tokens SFT trains on), exponentiated.

A text is Chinese when at least `CHINESE_SHARE` of its letters and digits are Han characters; below that
share the `zh` tokenizer and `13a` agree on the rest anyway, so mixed text is safe either way.
Aggregates are means over samples (macro averages); perplexity is also given over all answer tokens.
"""

from collections.abc import Sequence

import torch
from rouge_score.rouge_scorer import RougeScorer
from sacrebleu.metrics import BLEU, CHRF
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from engine.data.normalize import normalize_text
from engine.evaluate.generate import adapter_disabled
from engine.evaluate.results import (
    AnswerNLL,
    GeneratedSample,
    ReferenceMetrics,
    ReferenceScores,
    SampleMetrics,
    summarize_metrics,
)
from engine.evaluate.text import language_of, tokens
from engine.train.prepare import IGNORE_INDEX, assistant_spans, end_of_turn_token

_BLEU = {"zh": BLEU(tokenize="zh", effective_order=True), "en": BLEU(tokenize="13a", effective_order=True)}
_CHRF = CHRF()


class _Tokenizer:
    """The tokenizer object rouge-score calls."""

    def tokenize(self, text: str) -> list[str]:
        return tokens(text)


_ROUGE = RougeScorer(["rougeL"], tokenizer=_Tokenizer())


def score_answer(answer: str, reference: str) -> ReferenceScores:
    language = language_of(reference)
    if not answer.strip() or not reference.strip():
        match = float(normalize_text(answer) == normalize_text(reference))
        return ReferenceScores(language, match, 100.0 * match, 100.0 * match, match)
    return ReferenceScores(
        language=language,
        rouge_l=_ROUGE.score(reference, answer)["rougeL"].fmeasure,
        bleu=_BLEU[language].sentence_score(answer, [reference]).score,
        chrf=_CHRF.sentence_score(answer, [reference]).score,
        exact_match=float(normalize_text(answer) == normalize_text(reference)),
    )


def answer_labels(
    tokenizer: PreTrainedTokenizerBase,
    prompt: Sequence[dict],
    answer: str,
    eot: str,
    tools: Sequence[dict] | None = None,
) -> tuple[list[int], list[int]]:
    """Token ids of the conversation `prompt` + the answer (with the tool definitions `tools`, as in training), and
    labels that are -100 except on the answer's tokens and its end-of-turn token."""
    messages = [*prompt, {"role": "assistant", "content": answer}]
    text, spans = assistant_spans(tokenizer, messages, eot, tools)
    start, end = spans[-1]
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids: list[int] = encoded["input_ids"]
    labels = [
        token if start <= begin < end else IGNORE_INDEX
        for token, (begin, _) in zip(ids, encoded["offset_mapping"], strict=True)
    ]
    return ids, labels


def answer_nlls(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    pairs: Sequence[tuple[Sequence[dict], str, Sequence[dict] | None]],
    *,
    batch_size: int = 8,
) -> list[AnswerNLL]:
    """The NLL of each (prompt messages, answer, tool definitions) answer under `model` as it stands (adapter on or
    off)."""
    eot = end_of_turn_token(tokenizer)
    rows = [answer_labels(tokenizer, prompt, answer, eot, tools) for prompt, answer, tools in pairs]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    results: list[AnswerNLL] = []
    model.eval()
    for start in range(0, len(rows), batch_size):
        batch = rows[start : start + batch_size]
        width = max(len(ids) for ids, _ in batch)
        input_ids = torch.tensor([ids + [pad] * (width - len(ids)) for ids, _ in batch])
        labels = torch.tensor([lab + [IGNORE_INDEX] * (width - len(lab)) for _, lab in batch])
        mask = torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids, _ in batch])
        with torch.inference_mode():
            logits = model(input_ids=input_ids.to(model.device), attention_mask=mask.to(model.device)).logits
        shifted = labels[:, 1:].to(logits.device)
        losses = torch.nn.functional.cross_entropy(
            logits[:, :-1].float().transpose(1, 2), shifted, ignore_index=IGNORE_INDEX, reduction="none"
        )
        counted = shifted != IGNORE_INDEX
        for row_loss, row_counted in zip(losses, counted, strict=True):
            results.append(AnswerNLL(float(row_loss[row_counted].sum()), int(row_counted.sum())))
    return results


def reference_metrics(
    generated: Sequence[GeneratedSample],
    model: PreTrainedModel | None = None,
    tokenizer: PreTrainedTokenizerBase | None = None,
    *,
    batch_size: int = 8,
) -> ReferenceMetrics:
    """Every reference metric of the base and tuned answers; with a model (a PeftModel: its adapter is
    switched off for the base) and its tokenizer, the perplexity of the references under each too."""
    samples = [
        SampleMetrics(g.index, score_answer(g.base_answer, g.reference), score_answer(g.tuned_answer, g.reference))
        for g in generated
    ]
    if model is not None and tokenizer is not None and generated:
        pairs = [(g.prompt, g.reference, g.tools) for g in generated]
        with adapter_disabled(model) as base:
            base_nlls = answer_nlls(base, tokenizer, pairs, batch_size=batch_size)
        tuned_nlls = answer_nlls(model, tokenizer, pairs, batch_size=batch_size)
        for sample, base_nll, tuned_nll in zip(samples, base_nlls, tuned_nlls, strict=True):
            sample.base_nll, sample.tuned_nll = base_nll, tuned_nll
    return summarize_metrics(samples)
