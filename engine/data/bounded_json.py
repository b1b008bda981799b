"""JSON we did not write (uploaded files, cells, model replies), read with its nesting bounded.

Python's reader recurses once per level and raises RecursionError, not ValueError, past about a thousand levels, and
a value nested nearly that deep breaks the steps after reading (validation, hashing). A value nested deeper than
MAX_DEPTH is a TooDeepError: a ValueError like any JSON that does not parse, so a caller's `except ValueError` covers
it, and it names the record's field where it can."""

import json
from typing import Any

MAX_DEPTH = 64  # levels of arrays and objects; a conversation, its tools and their schemas need far fewer

_DECODER = json.JSONDecoder()


class TooDeepError(ValueError):
    def __init__(self, field: str | None = None) -> None:
        self.field = field
        super().__init__(f"JSON nested deeper than {MAX_DEPTH} levels of arrays and objects")


def loads(text: str) -> Any:
    """json.loads, nesting bounded."""
    try:
        value = json.loads(text)
    except RecursionError:
        raise TooDeepError() from None
    return _checked(value, text, 0, len(text))


def raw_decode(text: str, start: int) -> tuple[Any, int]:
    """JSONDecoder.raw_decode: the value that starts at `start` and where it ends, nesting bounded."""
    try:
        value, end = _DECODER.raw_decode(text, start)
    except RecursionError:
        raise TooDeepError() from None
    return _checked(value, text, start, end), end


def _checked(value: Any, text: str, start: int, end: int) -> Any:
    # Fewer brackets than MAX_DEPTH cannot nest deeper: the count (C speed) spares the walk for nearly every record.
    if text.count("[", start, end) + text.count("{", start, end) > MAX_DEPTH:
        check_depth(value)
    return value


def check_depth(value: Any) -> None:
    """Raise TooDeepError when `value` nests deeper than MAX_DEPTH, naming the top-level field it is under."""
    stack: list[tuple[Any, int, str | None]] = [(value, 1, None)]
    while stack:  # a loop, not recursion: the value may be nested about as deep as recursion allows
        item, depth, field = stack.pop()
        if isinstance(item, dict):
            children = [(child, str(key)) for key, child in item.items()]
        elif isinstance(item, list):
            children = [(child, f"[{index}]") for index, child in enumerate(item)]
        else:
            continue
        if depth > MAX_DEPTH:
            raise TooDeepError(field)
        stack.extend((child, depth + 1, field or key) for child, key in children)
