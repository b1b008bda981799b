"""The general-ability probe: did fine-tuning make the model forget what it knew before?

A probe is a short general question with short, checkable answers (arithmetic, capitals, common knowledge,
units, simple reasoning, a word translated, days and months), half Chinese and half English; the shipped
set is probes/general.jsonl, one JSON object per line:

    {"id": "zh-arith-1", "language": "zh", "question": "7加5等于多少？", "accepted": ["12", "十二"]}

Both models answer every probe, greedily, the base with the adapter switched off. An answer passes when
any accepted answer occurs in it as a run of whole tokens: `text.tokens` (NFKC, case folded,
punctuation and spaces dropped, every Han character a token, other words whole), with digits split from
letters ("12kg" → "12", "kg"). So "答案是十二。" passes ["12", "十二"] without any spaces, "The capital is
ROME." passes ["Rome"], and "12" does not pass inside "120" nor "cat" inside "category". A Chinese numeral
must not run on into another ("十二" does not pass inside "二十二").

A score is the share of probes passed; the drop is `gate.forgetting_drop(base, tuned)`, which the gate
compares with the project's allowance. A base model that passes none gives no drop: forgetting cannot be
measured on it, and the note says so.
"""

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from engine.evaluate.gate import forgetting_drop
from engine.evaluate.generate import LoadedModels, adapter_disabled, generate_answers
from engine.evaluate.results import ForgettingReport, GenerationSettings, ProbeResult
from engine.evaluate.text import tokens

PROBES_FILE = Path(__file__).parent / "probes" / "general.jsonl"
# Short answers suffice; greedy, so the probe is repeatable.
PROBE_SETTINGS = GenerationSettings(max_new_tokens=48, batch_size=8)

_DIGITS_OR_NOT = re.compile(r"\d+|\D+")
_CHINESE_NUMERALS = frozenset("零〇一二两三四五六七八九十百千万亿")


@dataclass
class Probe:
    id: str
    language: str  # "zh" | "en"
    question: str
    accepted: list[str]


class ProbeFileError(ValueError):
    """A probe file that cannot be read as probes; the message names the file, the line and the field."""


def load_probes(path: Path | None = None) -> list[Probe]:
    """The probes in a JSONL file, by default the shipped general set."""
    path = Path(path) if path is not None else PROBES_FILE
    probes: list[Probe] = []
    seen: dict[str, int] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}, line {number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise ProbeFileError(f"{where}: not valid JSON ({error.msg})") from None
        if not isinstance(record, dict):
            raise ProbeFileError(f"{where}: expected a JSON object, found {type(record).__name__}")
        for field in ("id", "language", "question"):
            value = record.get(field)
            if not isinstance(value, str) or not value.strip():
                raise ProbeFileError(f"{where}: field {field!r} must be a non-empty string")
        accepted = record.get("accepted")
        if (
            not isinstance(accepted, list)
            or not accepted
            or not all(isinstance(a, str) and _words(a) for a in accepted)
        ):
            # An accepted answer of only punctuation or spaces would pass every answer.
            raise ProbeFileError(
                f"{where}: field 'accepted' must be a non-empty list of answers that contain letters or digits"
            )
        probe_id = record["id"].strip()
        if probe_id in seen:
            raise ProbeFileError(f"{where}: field 'id' repeats {probe_id!r} from line {seen[probe_id]}")
        seen[probe_id] = number
        probes.append(Probe(probe_id, record["language"].strip(), record["question"], list(accepted)))
    if not probes:
        raise ProbeFileError(f"{path}: no probes")
    return probes


def _words(text: str) -> list[str]:
    """`text.tokens`, with runs of digits split from letters."""
    return [part for token in tokens(text) for part in _DIGITS_OR_NOT.findall(token)]


def _is_chinese_numeral(word: str | None) -> bool:
    return word is not None and word in _CHINESE_NUMERALS


def passes(answer: str, accepted: Sequence[str]) -> bool:
    """Whether any accepted answer occurs in `answer` as a run of whole tokens (see the module's docstring)."""
    words = _words(answer)
    for option in accepted:
        wanted = _words(option)
        if not wanted:
            continue
        width = len(wanted)
        for start in range(len(words) - width + 1):
            if words[start : start + width] != wanted:
                continue
            before = words[start - 1] if start else None
            after = words[start + width] if start + width < len(words) else None
            if _is_chinese_numeral(wanted[0]) and _is_chinese_numeral(before):
                continue
            if _is_chinese_numeral(wanted[-1]) and _is_chinese_numeral(after):
                continue
            return True
    return False


def _share(passed: Sequence[bool]) -> float:
    return sum(passed) / len(passed) if passed else 0.0


def _note(total: int, base_score: float, tuned_score: float, drop: float | None) -> str:
    if drop is None:
        return (
            f"The base model passed none of the {total} probes, so forgetting cannot be measured on this model "
            f"(the tuned model scored {tuned_score:.2f})."
        )
    change = f"drop {drop:.1%}" if drop > 0 else "no change" if drop == 0 else f"{-drop:.1%} higher than the base model"
    return f"Probe score {base_score:.2f} → {tuned_score:.2f} ({change}) over {total} general-ability probes."


def forgetting_probe(
    loaded: LoadedModels,
    probes: Sequence[Probe] | None = None,
    settings: GenerationSettings | None = None,
    system: str | None = None,
) -> ForgettingReport:
    """Every probe answered by the base model (adapter off) and the tuned model, scored and compared.
    `system`, when given, is sent before each question (the project's system prompt, say)."""
    probes = list(probes) if probes is not None else load_probes()
    if not probes:
        raise ValueError("the forgetting probe needs at least one probe")
    settings = settings or PROBE_SETTINGS
    head = [{"role": "system", "content": system}] if system else []
    prompts = [[*head, {"role": "user", "content": p.question}] for p in probes]
    with adapter_disabled(loaded.model) as base:
        base_answers, _ = generate_answers(base, loaded.tokenizer, prompts, settings)
    if loaded.adapter_dir is None:  # no adapter: the tuned model is the base model
        tuned_answers = base_answers
    else:
        tuned_answers, _ = generate_answers(loaded.model, loaded.tokenizer, prompts, settings)
    return forgetting_report(probes, [a.text for a in base_answers], [a.text for a in tuned_answers])


def forgetting_report(
    probes: Sequence[Probe], base_answers: Sequence[str], tuned_answers: Sequence[str]
) -> ForgettingReport:
    """The report on the two models' answers to `probes`, in the probes' order."""
    results = [
        ProbeResult(
            id=p.id,
            language=p.language,
            question=p.question,
            accepted=list(p.accepted),
            base_answer=base,
            tuned_answer=tuned,
            base_pass=passes(base, p.accepted),
            tuned_pass=passes(tuned, p.accepted),
        )
        for p, base, tuned in zip(probes, base_answers, tuned_answers, strict=True)
    ]
    base_score = _share([r.base_pass for r in results])
    tuned_score = _share([r.tuned_pass for r in results])
    drop = forgetting_drop(base_score, tuned_score)
    by_language = {
        language: (
            _share([r.base_pass for r in results if r.language == language]),
            _share([r.tuned_pass for r in results if r.language == language]),
        )
        for language in sorted({r.language for r in results})
    }
    return ForgettingReport(
        probes=results,
        base_score=base_score,
        tuned_score=tuned_score,
        drop=drop,
        by_language=by_language,
        lost=[r for r in results if r.base_pass and not r.tuned_pass],
        gained=[r for r in results if r.tuned_pass and not r.base_pass],
        note=_note(len(results), base_score, tuned_score, drop),
    )
