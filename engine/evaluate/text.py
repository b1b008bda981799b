"""How evaluation reads text, free of the model stack: whether it is Chinese, and its tokens for comparing answers
(every Han character a token, other words whole, punctuation and spaces dropped).

A text is Chinese when at least `CHINESE_SHARE` of its letters and digits are Han characters."""

import re

from engine.data.normalize import normalize_text

CHINESE_SHARE = 0.2
# CJK Unified Ideographs, Extension A, Compatibility Ideographs, Extensions B–F and the supplement.
_HAN = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002fa1f"
_HAN_CHAR = re.compile(f"[{_HAN}]")
_TOKEN = re.compile(f"[{_HAN}]|[^\\W{_HAN}]+")  # one Han character, or a run of other word characters


def cjk_share(text: str) -> float:
    """The share of Han characters among a text's letters and digits (0.0 for a text with none)."""
    letters = [ch for ch in text if ch.isalnum()]
    if not letters:
        return 0.0
    return sum(1 for ch in letters if _HAN_CHAR.match(ch)) / len(letters)


def language_of(text: str) -> str:
    """ "zh" for Chinese text, else "en" (standing for every whitespace-delimited language)."""
    return "zh" if cjk_share(text) >= CHINESE_SHARE else "en"


def tokens(text: str) -> list[str]:
    """Han characters one by one, other words whole, after normalisation; punctuation and spaces dropped."""
    return _TOKEN.findall(normalize_text(text))
