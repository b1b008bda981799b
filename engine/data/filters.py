"""Quality filters for training samples: length, degenerate answers, sensitive content, duplicates.

`apply_filters` runs the rules below in this order; a sample is removed by the FIRST rule that
removes it and later rules never see it (cheap rules first, dedup last, so a sample dropped for
length does not "use up" a duplicate group and a masked sample is deduplicated as masked):

    rule name             what it removes
    empty_answer          the last assistant turn is empty or whitespace
    too_short             prompt or answer below `min_prompt_chars` / `min_answer_chars` (by default 2,
                          except a number ("3") or a Chinese word ("嗨"): whole answers; not "嗯")
    too_long              prompt or answer above `max_prompt_chars` / `max_answer_chars`
    too_few_tokens        answer below `min_answer_tokens`
    too_many_tokens       prompt above `max_prompt_tokens`, answer above `max_answer_tokens`,
                          or the whole conversation above `max_total_tokens`
    repetitive_answer     the answer is one sentence/phrase repeated ("好的。好的。好的。")
    answer_copies_prompt  the answer repeats the question (same after normalisation, or
                          shingle Jaccard >= `copy_threshold`)
    id_card, bank_card, phone, email, api_key, blocked_word
                          sensitive content; each rule's action is "drop", "mask" or "off"
    copies_test_prompt    the question is a near copy (shingle Jaccard >= `test_prompt_threshold`) of
                          a `held_out` sample's question: new data must leave the test split unseen
    exact_duplicate       same normalised text, tool calls and tools as an earlier sample or an
                          `existing` one
    near_duplicate        shingle Jaccard >= `near_dup_threshold` with an `existing` sample or an
                          earlier kept sample of the batch

Characters are counted on the stripped text. Tokens are counted with the given tokenizer, or
else ESTIMATED (see `estimate_tokens`). Duplicate rules compare the conversation without its
system prompt (a shared system prompt would make every sample look alike).

Masking replaces each finding with a fixed ASCII placeholder: `[ID_CARD]`, `[BANK_CARD]`,
`[PHONE]`, `[EMAIL]`, `[API_KEY]`, `[BLOCKED]` (configurable in `FilterConfig.placeholders`).
One scheme for Chinese and English text alike; placeholders contain no digits or "@", so later
detectors never re-match them. Masking applies to every message (and the rejected answer).
Sensitive rules run in the order above: an 18-digit resident ID would otherwise also look like a
bank card.
"""

import itertools
import json
import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from engine.data.dedup import NearDuplicateIndex, first_kept, jaccard, near_duplicate_pairs
from engine.data.normalize import normalize_text
from engine.data.sample import Message, Sample

Action = Literal["drop", "mask", "off"]

_NUMBER = re.compile(r"[+-]?\d+(?:[.,]\d+)*%?")
_FILLERS = frozenset("嗯哦噢喔啊呃额唔哼嘛呀哎诶")
_HAN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]+[。！？!?.]?")

SENSITIVE_RULES = ("id_card", "bank_card", "phone", "email", "api_key", "blocked_word")
RULE_ORDER = (
    "empty_answer",
    "too_short",
    "too_long",
    "too_few_tokens",
    "too_many_tokens",
    "repetitive_answer",
    "answer_copies_prompt",
    *SENSITIVE_RULES,
    "copies_test_prompt",
    "exact_duplicate",
    "near_duplicate",
)

_DEFAULT_PLACEHOLDERS = {
    "id_card": "[ID_CARD]",
    "bank_card": "[BANK_CARD]",
    "phone": "[PHONE]",
    "email": "[EMAIL]",
    "api_key": "[API_KEY]",
    "blocked_word": "[BLOCKED]",
}
_LABELS = {
    "id_card": "a resident ID number",
    "bank_card": "a bank card number",
    "phone": "a mobile phone number",
    "email": "an e-mail address",
    "api_key": "an API key or token",
    "blocked_word": "a blocked word",
}


class FilterConfig(BaseModel):
    """Every rule's knobs. Set a limit to None (or an action to "off") to disable that check."""

    model_config = ConfigDict(extra="forbid")

    drop_empty_answers: bool = True
    # "auto": 2, except that a number ("3") or Chinese characters ("嗨") are whole answers however short
    min_prompt_chars: int | Literal["auto"] | None = "auto"
    max_prompt_chars: int | None = 16_000
    min_answer_chars: int | Literal["auto"] | None = "auto"
    max_answer_chars: int | None = 16_000
    min_answer_tokens: int | None = 1
    max_prompt_tokens: int | None = None
    max_answer_tokens: int | None = None
    max_total_tokens: int | None = 4096  # the training sequence length: longer samples get truncated
    # Degenerate answers.
    drop_repetitive_answers: bool = True
    repeat_min_count: int = 3  # a sentence must occur at least this often ...
    repeat_min_share: float = 0.5  # ... and make up at least this share of the answer's sentences
    drop_prompt_copies: bool = True
    copy_threshold: float = 0.9
    # Sensitive content.
    id_card: Action = "mask"
    bank_card: Action = "mask"
    phone: Action = "mask"
    email: Action = "mask"
    api_key: Action = "mask"
    blocked_word: Action = "drop"
    blocked_words: list[str] = Field(default_factory=list)
    placeholders: dict[str, str] = Field(default_factory=lambda: dict(_DEFAULT_PLACEHOLDERS))
    secret_min_length: int = 32  # generic high-entropy strings: length, ...
    secret_min_entropy: float = 4.0  # ... Shannon entropy in bits per character
    # Duplicates.
    exact_dedup: bool = True
    near_dup_threshold: float | None = Field(default=0.9, gt=0.0, le=1.0)
    # A question this close to a held-out (test) question is a copy of it: far below near_dup_threshold, since
    # questions are short (a short Chinese question reworded by three characters scores ~0.55) and a reworded
    # copy still leaks the test; a false alarm costs one new sample.
    test_prompt_threshold: float = Field(default=0.5, gt=0.0, le=1.0)


@dataclass(frozen=True)
class Removal:
    rule: str
    reason: str


@dataclass
class FilterOutcome:
    samples: list[Sample]  # same length and order as the input; masked copies where masked
    removed: dict[int, Removal] = field(default_factory=dict)
    masked_counts: dict[str, int] = field(default_factory=dict)  # rule -> findings masked in kept samples

    @property
    def kept_indices(self) -> list[int]:
        return [i for i in range(len(self.samples)) if i not in self.removed]

    def kept(self) -> list[Sample]:
        return [self.samples[i] for i in self.kept_indices]

    def counts_by_rule(self) -> dict[str, int]:
        """Removed samples per rule, in rule order, only rules that removed something."""
        counts = Counter(r.rule for r in self.removed.values())
        return {rule: counts[rule] for rule in RULE_ORDER if counts[rule]}


# --- tokens ------------------------------------------------------------------------------------

_CJK = (
    "\u2e80-\u2fdf\u3040-\u30ff\u3100-\u312f\u3190-\u31ff\u3400-\u4dbf\u4e00-\u9fff"
    "\uac00-\ud7af\uf900-\ufaff\U00020000-\U0002fa1f"
)
_TOKEN_PIECES = re.compile(rf"(?P<cjk>[{_CJK}])|(?P<word>[^\W_{_CJK}]+)|(?P<sym>[^\s\w{_CJK}]|_)")


def estimate_tokens(text: str) -> int:
    """An ESTIMATE of a BPE tokenizer's count, for when no tokenizer is configured: each CJK
    character is one token, each run of letters/digits 1.3 tokens (English BPE averages ~1.3 per
    word), each punctuation mark or symbol one token. Typically within ~30% of real tokenizers."""
    cjk = words = syms = 0
    for m in _TOKEN_PIECES.finditer(text):
        if m.lastgroup == "cjk":
            cjk += 1
        elif m.lastgroup == "word":
            words += 1
        else:
            syms += 1
    return cjk + syms + math.ceil(words * 1.3)


def count_tokens(text: str, tokenizer: Any | None = None) -> int:
    """Tokens in `text` with `tokenizer` (a `tokenizers.Tokenizer`, a transformers tokenizer or
    anything with `.encode(text)`), without special tokens; `estimate_tokens` if None."""
    if tokenizer is None:
        return estimate_tokens(text)
    try:
        encoded = tokenizer.encode(text, add_special_tokens=False)
    except TypeError:
        encoded = tokenizer.encode(text)
    return len(getattr(encoded, "ids", encoded))


def load_tokenizer(path: str | Path) -> Any:
    """A tokenizer from LOCAL files only: a `tokenizer.json` file, or a folder holding either a
    transformers tokenizer (tokenizer_config.json, ...) or just a tokenizer.json. Never a hub."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no tokenizer at {path} (only local tokenizers are supported)")
    if path.is_file():
        from tokenizers import Tokenizer

        return Tokenizer.from_file(str(path))
    if (path / "tokenizer_config.json").exists():
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    if (path / "tokenizer.json").exists():
        from tokenizers import Tokenizer

        return Tokenizer.from_file(str(path / "tokenizer.json"))
    raise FileNotFoundError(f"{path} holds neither tokenizer.json nor tokenizer_config.json")


# --- sensitive content -------------------------------------------------------------------------
# Digit runs are delimited with (?<!\d) / (?!\d) rather than \b: between a Chinese character and a
# digit there is no \b (both are \w), and we must not flag digits inside a longer number.

Span = tuple[int, int]

_PHONE = re.compile(r"(?<![\d+])(?:(?:\+|00)86[- ]?|86[- ]?)?1[3-9]\d(?:[- ]?\d{4}){2}(?!\d)")
_ID_CARD = re.compile(r"(?<![\dA-Za-z])\d{17}[\dXx](?![\dA-Za-z])")
_BANK_CARD = re.compile(r"(?<![\d-])(?:\d{16,19}|\d{4}(?:[ -]\d{4}){3}(?:[ -]?\d{1,3})?)(?!\d)")
_EMAIL = re.compile(r"(?<![A-Za-z0-9._%+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
_KNOWN_KEYS = re.compile(
    r"(?<![A-Za-z0-9])(?:sk-(?:proj-|ant-)?[A-Za-z0-9_-]{20,}"  # OpenAI / Anthropic style
    r"|gh[pousr]_[A-Za-z0-9]{36,}"  # GitHub tokens
    r"|github_pat_[A-Za-z0-9_]{40,}"
    r"|xox[abposr]-[A-Za-z0-9-]{10,}"  # Slack tokens
    r"|(?:AKIA|ASIA)[0-9A-Z]{16}(?![0-9A-Z])"  # AWS access key ids
    r"|AIza[0-9A-Za-z_-]{35})"  # Google API keys
)
_BEARER = re.compile(r"\bBearer\s+([A-Za-z0-9._~+/-]{16,}=*)", re.IGNORECASE)
_LONG_TOKEN = re.compile(r"(?<![A-Za-z0-9+/_-])[A-Za-z0-9+/_-]{20,}={0,2}")
_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)


def is_valid_resident_id(text: str) -> bool:
    """An 18-character mainland China resident ID with a plausible birth date and a correct
    ISO 7064 MOD 11-2 check character."""
    if len(text) != 18 or not text[:17].isdigit():
        return False
    year, month, day = int(text[6:10]), int(text[10:12]), int(text[12:14])
    if not (1900 <= year <= 2100 and 1 <= month <= 12 and 1 <= day <= 31):
        return False
    total = sum(int(c) * w for c, w in zip(text[:17], _ID_WEIGHTS, strict=True))
    return "10X98765432"[total % 11] == text[17].upper()


def luhn_valid(digits: str) -> bool:
    if not digits.isdigit():
        return False
    total = 0
    for pos, c in enumerate(reversed(digits)):
        d = int(c)
        if pos % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _entropy(text: str) -> float:
    n = len(text)
    return -sum(c / n * math.log2(c / n) for c in Counter(text).values())


def _looks_like_secret(token: str, min_length: int, min_entropy: float) -> bool:
    # Precision first: needs length, upper AND lower case AND digits, and high per-character
    # entropy, and frequent character-class switches (CamelCaseIdentifiers2024 switch rarely;
    # random keys switch on most characters). Hex digests and UUIDs have no upper case: not flagged.
    if len(token) < min_length:
        return False
    core = token.rstrip("=")
    if not (
        sum(c.isupper() for c in core) >= 2
        and sum(c.islower() for c in core) >= 2
        and sum(c.isdigit() for c in core) >= 2
    ):
        return False

    def cls(c: str) -> int:
        return 0 if c.isdigit() else 1 if c.isupper() else 2 if c.islower() else 3

    switches = sum(cls(a) != cls(b) for a, b in itertools.pairwise(core))
    return _entropy(core) >= min_entropy and switches >= 0.4 * (len(core) - 1)


def find_sensitive(text: str, rule: str, config: FilterConfig | None = None) -> list[Span]:
    """Spans of `text` that sensitive `rule` flags (validated: checksums, Luhn, entropy)."""
    config = config or FilterConfig()
    if rule == "id_card":
        return [m.span() for m in _ID_CARD.finditer(text) if is_valid_resident_id(m.group())]
    if rule == "bank_card":
        spans = []
        for m in _BANK_CARD.finditer(text):
            digits = re.sub(r"[ -]", "", m.group())
            if 16 <= len(digits) <= 19 and luhn_valid(digits) and not is_valid_resident_id(digits):
                spans.append(m.span())
        return spans
    if rule == "phone":
        return [m.span() for m in _PHONE.finditer(text)]
    if rule == "email":
        return [m.span() for m in _EMAIL.finditer(text)]
    if rule == "api_key":
        spans = [m.span() for m in _KNOWN_KEYS.finditer(text)]
        spans += [m.span(1) for m in _BEARER.finditer(text)]
        spans += [
            m.span()
            for m in _LONG_TOKEN.finditer(text)
            if _looks_like_secret(m.group(), config.secret_min_length, config.secret_min_entropy)
        ]
        return _merge_spans(spans)
    if rule == "blocked_word":
        words = [w for w in config.blocked_words if w.strip()]
        if not words:
            return []
        # Longest first so "foobar" wins over "foo" at the same position.
        pattern = "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))
        return [m.span() for m in re.finditer(pattern, text, re.IGNORECASE)]
    raise ValueError(f"unknown sensitive rule {rule!r}")


def _merge_spans(spans: list[Span]) -> list[Span]:
    merged: list[Span] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(end, merged[-1][1]))
        else:
            merged.append((start, end))
    return merged


def _replace(text: str, spans: list[Span], placeholder: str) -> str:
    for start, end in reversed(spans):
        text = text[:start] + placeholder + text[end:]
    return text


# --- degenerate answers ------------------------------------------------------------------------

_SENTENCE_END = re.compile(r"[。！？!?；;…\n]+|\.(?:\s+|$)")
_PUNCT = re.compile(r"[^\w]+")


def _repetition(answer: str, config: FilterConfig) -> str | None:
    """Why the answer is degenerate repetition, or None."""
    norm = _PUNCT.sub("", normalize_text(answer))
    if len(norm) >= 4:
        # The whole answer is one unit repeated ("哈哈哈哈", "okokok"): smallest period via the
        # doubled-string trick, linear time.
        period = (norm + norm).find(norm, 1)
        if period < len(norm) and len(norm) // period >= config.repeat_min_count:
            return f"the answer is {norm[:period]!r} repeated {len(norm) // period} times"
    sentences = [_PUNCT.sub("", normalize_text(s)) for s in _SENTENCE_END.split(answer)]
    sentences = [s for s in sentences if s]
    if len(sentences) >= config.repeat_min_count:
        _top, count = Counter(sentences).most_common(1)[0]
        if count >= config.repeat_min_count and count / len(sentences) >= config.repeat_min_share:
            return f"the same sentence is repeated {count} of {len(sentences)} times"
    return None


def _copies_prompt(sample: Sample, config: FilterConfig) -> str | None:
    answer = normalize_text(sample.answer_text())
    last = sample.last_assistant_index()
    users = [m.content or "" for m in sample.messages[:last] if m.role == "user"]
    last_user, prompt = (users[-1] if users else ""), sample.prompt_text()
    for name, question in (("the question", last_user), ("the prompt", prompt if prompt != last_user else "")):
        if not question.strip():
            continue
        if normalize_text(question) == answer:
            return f"the answer is identical to {name} after normalisation"
        sim = jaccard(question, answer)
        if sim >= config.copy_threshold:
            return f"the answer is a near copy of {name} (similarity {sim:.2f} >= {config.copy_threshold:.2f})"
    return None


# --- the pipeline ------------------------------------------------------------------------------


def dedup_text(sample: Sample) -> str:
    """What duplicate rules compare: the conversation without system prompts, tool calls included."""
    parts = []
    for m in sample.messages:
        if m.role != "system":
            parts.append(m.content or "")
            parts += [json.dumps(c.function, ensure_ascii=False, sort_keys=True) for c in m.tool_calls or []]
    return "\n".join(parts)


def exact_key(sample: Sample) -> str:
    """Two samples are exact duplicates when this is equal: the normalised conversation and the tools offered."""
    tools = json.dumps(sample.tools, ensure_ascii=False, sort_keys=True) if sample.tools else ""
    return normalize_text(dedup_text(sample)) + "\n" + tools


def _complete_short(text: str) -> bool:
    """A short text that is still a whole answer: a number ("3", "42%") or a Chinese word ("嗨", "对"), not a
    filler sound ("嗯", "哦"), which answers nothing."""
    return bool(_NUMBER.fullmatch(text) or (_HAN.fullmatch(text) and not _FILLERS.issuperset(text.rstrip("。！？!?."))))


def _length_removal(sample: Sample, config: FilterConfig, tokenizer: Any | None) -> Removal | None:
    prompt, answer = sample.prompt_text().strip(), sample.answer_text().strip()
    if config.drop_empty_answers and not answer:
        return Removal("empty_answer", "the answer is empty")
    chars = {"prompt": len(prompt), "answer": len(answer)}
    for part, lo in (("prompt", config.min_prompt_chars), ("answer", config.min_answer_chars)):
        whole = lo == "auto" and _complete_short(prompt if part == "prompt" else answer)
        lo = 2 if lo == "auto" else lo
        if lo is not None and chars[part] < lo and not whole:
            return Removal("too_short", f"{part} has {chars[part]} characters, minimum is {lo}")
    for part, hi in (("prompt", config.max_prompt_chars), ("answer", config.max_answer_chars)):
        if hi is not None and chars[part] > hi:
            return Removal("too_long", f"{part} has {chars[part]} characters, maximum is {hi}")
    unit = "tokens" if tokenizer is not None else "tokens (estimated)"
    counted: dict[str, int] = {}

    def tokens(part: str) -> int:
        if part not in counted:
            text = {"prompt": prompt, "answer": answer, "conversation": sample.full_text()}[part]
            counted[part] = count_tokens(text, tokenizer)
        return counted[part]

    if config.min_answer_tokens is not None and tokens("answer") < config.min_answer_tokens:
        return Removal("too_few_tokens", f"answer has {tokens('answer')} {unit}, minimum is {config.min_answer_tokens}")
    for part, hi in (
        ("prompt", config.max_prompt_tokens),
        ("answer", config.max_answer_tokens),
        ("conversation", config.max_total_tokens),
    ):
        if hi is not None and tokens(part) > hi:
            return Removal("too_many_tokens", f"{part} has {tokens(part)} {unit}, maximum is {hi}")
    return None


def _mask_or_drop(sample: Sample, config: FilterConfig) -> tuple[Sample, Removal | None, Counter[str]]:
    n = len(sample.messages)
    parts: list[Message] = [*sample.messages, *([sample.rejected] if sample.rejected else [])]
    found: Counter[str] = Counter()
    for rule in SENSITIVE_RULES:
        action: Action = getattr(config, rule)
        if action == "off":
            continue
        for idx, msg in enumerate(parts):
            spans = find_sensitive(msg.content, rule, config) if msg.content else []
            if not spans:
                continue
            if action == "drop":
                where = "the rejected answer" if idx >= n else f"a {msg.role} message"
                return sample, Removal(rule, f"{where} contains {_LABELS[rule]}"), Counter()
            placeholder = config.placeholders.get(rule, _DEFAULT_PLACEHOLDERS[rule])
            parts[idx] = msg.model_copy(update={"content": _replace(msg.content, spans, placeholder)})
            found[rule] += len(spans)
    if found:
        sample = sample.model_copy(update={"messages": parts[:n], "rejected": parts[n] if len(parts) > n else None})
    return sample, None, found


def _remove_test_prompt_copies(
    samples: Sequence[Sample], held_out: Sequence[Sample], threshold: float, removed: dict[int, Removal]
) -> None:
    index = NearDuplicateIndex(threshold)
    index.add_many(range(len(held_out)), [s.prompt_text() for s in held_out])
    order = [i for i in range(len(samples)) if i not in removed]
    for i, hits in zip(order, index.query_many([samples[i].prompt_text() for i in order]), strict=True):
        if hits:
            key, sim = hits[0]
            why = f"the question is a near copy of test sample #{key + 1}'s (similarity {sim:.2f} >= {threshold:.2f})"
            removed[i] = Removal("copies_test_prompt", why)


@dataclass(frozen=True)
class Screened:
    """A sample after the rules that judge it alone: as it goes on (masked), or why it is removed."""

    sample: Sample
    removal: Removal | None
    masked: Counter[str]


def screen(sample: Sample, config: FilterConfig, tokenizer: Any | None = None) -> Screened:
    """The rules that look at one sample alone (length, repetition, copied prompt, sensitive content), in order."""
    removal = _length_removal(sample, config, tokenizer)
    if removal is None and config.drop_repetitive_answers:
        why = _repetition(sample.answer_text(), config)
        removal = Removal("repetitive_answer", why) if why else None
    if removal is None and config.drop_prompt_copies:
        why = _copies_prompt(sample, config)
        removal = Removal("answer_copies_prompt", why) if why else None
    if removal is not None:
        return Screened(sample, removal, Counter())
    return Screened(*_mask_or_drop(sample, config))


def apply_filters(
    samples: Sequence[Sample],
    config: FilterConfig,
    *,
    existing: Sequence[Sample] = (),
    held_out: Sequence[Sample] = (),
    tokenizer: Any | None = None,
    numbers: Sequence[int] | None = None,
    screened: Sequence["Screened"] | None = None,
    near_pairs: Sequence[tuple[int, int, float]] | None = None,
) -> FilterOutcome:
    """Run every rule (order in the module docstring) over `samples`; `existing` are samples
    already in the dataset, kept as they are, that new samples must not duplicate; `held_out` are
    the test samples whose questions new samples must not copy.

    Reasons name a duplicated sample by `numbers[i]` (what the user knows it by, e.g. its position
    in the dataset version), by default its 1-based position in `samples`. `screened`: `screen` of each of
    `samples` with this config and tokenizer, done earlier (synthesis screens each batch as it arrives);
    `near_pairs`: the near-duplicate pairs (i, j, similarity) among the screened samples at this config's threshold,
    found earlier (synthesis compares each batch with the ones before it as it arrives: dedup.ArrivingPairs)."""
    label = (lambda i: numbers[i]) if numbers is not None else (lambda i: i + 1)
    if screened is None:
        screened = [screen(sample, config, tokenizer) for sample in samples]
    out = [one.sample for one in screened]
    removed = {i: one.removal for i, one in enumerate(screened) if one.removal is not None}
    masked = {i: one.masked for i, one in enumerate(screened)}

    if held_out:
        _remove_test_prompt_copies(out, held_out, config.test_prompt_threshold, removed)
    texts = {i: dedup_text(out[i]) for i in range(len(out)) if i not in removed}
    if config.exact_dedup:
        seen = {exact_key(s): k for k, s in reversed(list(enumerate(existing)))}
        first: dict[str, int] = {}
        for i in texts:
            key = exact_key(out[i])
            if key in seen:
                removed[i] = Removal("exact_duplicate", f"same text as existing sample #{seen[key] + 1}")
            elif key in first:
                removed[i] = Removal("exact_duplicate", f"same text as sample #{label(first[key])}")
            else:
                first[key] = i
        texts = {i: t for i, t in texts.items() if i not in removed}

    threshold = config.near_dup_threshold
    if threshold is not None and texts:
        # Existing samples count as earlier than the whole batch, so check against them first.
        if existing:
            index = NearDuplicateIndex(threshold)
            index.add_many(range(len(existing)), [dedup_text(s) for s in existing])
            order = list(texts)
            for i, hits in zip(order, index.query_many([texts[i] for i in order]), strict=True):
                if hits:
                    key, sim = hits[0]
                    removed[i] = Removal(
                        "near_duplicate",
                        f"near-duplicate of existing sample #{key + 1} (similarity {sim:.2f} >= {threshold:.2f})",
                    )
            texts = {i: t for i, t in texts.items() if i not in removed}
        order = list(texts)
        if near_pairs is None:
            found = near_duplicate_pairs([texts[i] for i in order], threshold)
        else:  # the pairs among the samples still in, by their place among them
            rank = {i: r for r, i in enumerate(order)}
            found = [
                (min(rank[a], rank[b]), max(rank[a], rank[b]), sim)
                for a, b, sim in near_pairs
                if a in rank and b in rank
            ]
        for pos, dup in enumerate(first_kept(len(order), found)):
            if dup is not None:
                i, j = order[pos], order[dup]
                sim = jaccard(texts[i], texts[j])
                removed[i] = Removal(
                    "near_duplicate", f"near-duplicate of sample #{label(j)} (similarity {sim:.2f} >= {threshold:.2f})"
                )
    # Masks count only where they reach the output: a masked sample later removed as a
    # duplicate contributes nothing.
    masked_counts: Counter[str] = Counter()
    for i, found in masked.items():
        if i not in removed:
            masked_counts.update(found)
    return FilterOutcome(samples=out, removed=dict(sorted(removed.items())), masked_counts=dict(masked_counts))
