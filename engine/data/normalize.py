"""Text normalisation: the key under which two texts count as exact duplicates.

NFKC folds full-width/half-width forms ("ＡＢＣ１２３" -> "ABC123", "，" -> ","), compatibility
characters and ligatures; whitespace runs collapse to one space; casefold is a stronger lower()
(e.g. "ß" -> "ss"). Chinese text is unchanged apart from full-width punctuation becoming ASCII.
"""

import re
import unicodedata

_WHITESPACE = re.compile(r"\s+")


def normalize_text(text: str) -> str:
    """NFKC, whitespace collapsed and stripped, case folded."""
    text = unicodedata.normalize("NFKC", text)
    return _WHITESPACE.sub(" ", text).strip().casefold()
