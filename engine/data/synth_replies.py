"""Samples out of whatever a model replied: JSON, fenced JSON, JSON inside prose, or the complete
samples of a truncated reply; each checked against the canonical schema. Never raises."""

import re
from typing import Any

from pydantic import ValidationError

from engine.data import bounded_json
from engine.data.sample import Message, Sample

_FENCE = re.compile(r"```[ \t]*(?:json[c5]?|JSON)?[ \t]*\n?(.*?)```", re.DOTALL)


def extract_json(text: str) -> tuple[Any, str | None]:
    """The JSON in a reply and how it was found: "json" (the whole reply), "fenced" (a ```json
    block), "embedded" (inside prose), "salvaged" (the complete sample objects of a truncated
    reply); (None, None) when there is none."""
    stripped = text.strip()
    try:
        return bounded_json.loads(stripped), "json"
    except ValueError:
        pass
    for block in _FENCE.findall(text):
        try:
            return bounded_json.loads(block.strip()), "fenced"
        except ValueError:
            continue
    unreadable_before = False
    for match in re.finditer(r"[\[{]", text):
        try:
            value, _ = bounded_json.raw_decode(text, match.start())
        except ValueError:
            unreadable_before = True
            continue
        if unreadable_before and isinstance(value, dict) and "messages" in value:
            break  # one sample inside a cut-off document: salvage them all below
        if isinstance(value, list) or (isinstance(value, dict) and value):
            return value, "embedded"
    # Truncated (max_tokens, a dropped stream): keep every complete {"messages": ...} object.
    salvaged = []
    position = 0
    for match in re.finditer(r"\{\s*\"messages\"", text):
        if match.start() < position:
            continue
        try:
            value, position = bounded_json.raw_decode(text, match.start())
        except ValueError:
            continue
        salvaged.append(value)
    if salvaged:
        return {"samples": salvaged}, "salvaged"
    return None, None


def items_of(data: Any) -> list[Any] | None:
    if isinstance(data, list):
        return data
    if not isinstance(data, dict):
        return None
    if "messages" in data:
        return [data]
    for key in ("samples", "conversations", "data", "examples", "items"):
        if isinstance(data.get(key), list):
            return data[key]
    lists = [v for v in data.values() if isinstance(v, list)]
    return lists[0] if len(lists) == 1 else None


def to_sample(item: Any, tag: str) -> tuple[Sample | None, str | None]:
    """A canonical synthetic sample, or None and why not."""
    if not isinstance(item, dict):
        return None, "not_an_object"
    messages = item.get("messages")
    if messages is None:
        return None, "missing_messages"
    if not isinstance(messages, list) or not messages:
        return None, "empty_messages"
    parsed = []
    for message in messages:
        if not isinstance(message, dict):
            return None, "message_not_an_object"
        role, content = message.get("role"), message.get("content")
        if role is None:
            return None, "missing_role"
        if role not in ("system", "user", "assistant"):
            return None, "unknown_role"
        if content is None:
            return None, "missing_content"
        if not isinstance(content, str):
            return None, "content_not_text"
        if not content.strip():
            return None, "empty_content"
        parsed.append({"role": role, "content": content.strip()})
    if parsed[-1]["role"] != "assistant":
        return None, "no_final_answer"
    try:
        sample = Sample(
            messages=[Message(**m) for m in parsed], tags=[tag], origin="synthetic", original_format="synthetic"
        )
    except ValidationError as error:
        return None, "no_user_turn" if "user turn" in str(error) else "invalid_sample"
    return sample, None
