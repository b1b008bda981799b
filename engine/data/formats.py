"""Record shapes in, canonical `Sample`s out.

Format names (`FORMATS`), following LLaMA-Factory's data/README.md where it defines one:

- "alpaca": instruction / input / output, optional system and history [[q, a], ...], tools; with
  chosen / rejected strings instead of output it is preference data.
- "sharegpt": conversations [{from, value}] with from = human / gpt / system / function_call /
  observation, optional system and tools keys; with chosen / rejected ({from, value}) it is
  preference data. Extension: a message may carry `tool_call_id`, a function_call value an `id`.
- "openai": messages [{role, content, tool_calls, tool_call_id, name}] plus optional tools.
- "prompt_completion": prompt / completion, each a string or a list of OpenAI messages.
- "preference": prompt / chosen / rejected, each a string or a list of OpenAI messages (TRL's
  shape); without prompt, chosen and rejected are whole conversations that differ in the last turn.
- "dataset_info": a LLaMA-Factory dataset_info.json; `entry` names the dataset (or the only one),
  whose file_name is read with its formatting, ranking, columns and tags mappings.

"auto" picks by the keys of the records; a file mixing shapes gets a `mixed_format` problem per
record that differs from the majority. A record's tags / tag / category / scenario field (string or
list of strings) becomes `Sample.tags`. Field paths in problems index from 0:
"conversations[2].value" is the third turn.

`load_file` never raises for bad records, it reports them in `LoadResult.problems`. It raises
`DataError` only for the file as a whole: missing, too large, too many records, undecodable,
unknown format or encoding name, a dataset_info.json entry that is absent or not a local file.
"""

import json
import re
from collections import Counter
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from engine.data import bounded_json
from engine.data.errors import DataError, RecordProblem
from engine.data.readers import RawRecord, ReadLimits, fatal, open_records
from engine.data.sample import Sample

FORMATS = ("alpaca", "sharegpt", "openai", "prompt_completion", "preference", "dataset_info")
ROLES = ("system", "user", "assistant", "tool")
TAG_FIELDS = ("tags", "tag", "category", "scenario")
MEDIA_COLUMNS = ("images", "videos", "audios")  # LLaMA-Factory's multimodal columns

# LLaMA-Factory's defaults for the sharegpt `tags` mapping
SHAREGPT_TAGS = {
    "role_tag": "from",
    "content_tag": "value",
    "user_tag": "human",
    "assistant_tag": "gpt",
    "observation_tag": "observation",
    "function_tag": "function_call",
    "system_tag": "system",
}


@dataclass
class LoadResult:
    samples: list[tuple[int, Sample]]  # (record number, sample)
    problems: list[RecordProblem]
    format: str
    encoding: str
    records: int
    path: Path
    warnings: list[str] = field(default_factory=list)  # things imported as they are that a person should look at
    detected: str | None = None  # the format the records look like, when --format named another


@dataclass(frozen=True)
class Spec:
    """How a record's fields are named. `explicit` (from dataset_info.json): optional columns
    are read only when mapped, as LLaMA-Factory does."""

    columns: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    ranking: bool | None = None  # None: decided by the record's keys
    explicit: bool = False

    def column(self, name: str, default: str | None) -> str | None:
        return self.columns.get(name, default)


class _Bad(Exception):
    """The first thing wrong with a record; becomes one RecordProblem."""

    def __init__(self, where: str | None, problem: str, kind: str) -> None:
        super().__init__(problem)
        self.where, self.problem, self.kind = where, problem, kind


# --- small checks --------------------------------------------------------------------------------


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _absent(value: Any) -> bool:
    return value is None or value == "" or value == []


def _required(record: dict[str, Any], key: str) -> Any:
    if key not in record or record[key] is None:
        raise _Bad(key, f"missing field '{key}'", "missing_field")
    return record[key]


def _string(value: Any, where: str, *, allow_empty: bool = False) -> str:
    if not isinstance(value, str):
        raise _Bad(where, f"expected a string, got {_type_name(value)}", "wrong_type")
    if not allow_empty and not value.strip():
        raise _Bad(where, "expected text, got an empty string", "empty_value")
    return value


def _maybe_json(value: Any, from_text: bool) -> Any:
    """CSV and TSV cells are text; a cell holding a JSON list or object is read as one."""
    if from_text and isinstance(value, str) and value.lstrip()[:1] in ("[", "{"):
        try:
            return bounded_json.loads(value)
        except ValueError:
            return value
    return value


def _list(value: Any, where: str, from_text: bool) -> list[Any]:
    value = _maybe_json(value, from_text)
    if from_text and isinstance(value, str) and value.lstrip()[:1] in ("[", "{"):
        raise _Bad(where, "expected a JSON list in this cell, but it does not parse", "bad_json")
    if not isinstance(value, list):
        raise _Bad(where, f"expected a list, got {_type_name(value)}", "wrong_type")
    return value


def _object(value: Any, where: str, expected: str = "an object") -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _Bad(where, f"expected {expected}, got {_type_name(value)}", "wrong_type")
    return value


def _tags(record: dict[str, Any], from_text: bool) -> list[str]:
    tags: list[str] = []
    for key in TAG_FIELDS:
        value = _maybe_json(record.get(key), from_text)
        if _absent(value):
            continue
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list):
            raise _Bad(key, f"expected a string or a list of strings, got {_type_name(value)}", "wrong_type")
        for i, tag in enumerate(items):
            text = _string(tag, key if isinstance(value, str) else f"{key}[{i}]").strip()
            if text not in tags:
                tags.append(text)
    return tags


def _tools(value: Any, where: str, from_text: bool) -> list[dict[str, Any]] | None:
    """Tool definitions, normalised to OpenAI's {"type": "function", "function": {...}}.
    LLaMA-Factory keeps them as JSON text of bare {"name", "description", "parameters"}."""
    if _absent(value):
        return None
    if isinstance(value, str):
        try:
            value = bounded_json.loads(value)
        except ValueError:
            raise _Bad(where, "expected JSON text of a list of tools, but it does not parse", "bad_json") from None
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list):
        raise _Bad(where, f"expected a list of tools, got {_type_name(value)}", "wrong_type")
    tools = []
    for i, tool in enumerate(value):
        tool = _object(tool, f"{where}[{i}]", "a tool definition (an object)")
        if "function" not in tool and "name" in tool:
            tool = {"type": "function", "function": tool}
        tools.append(tool)
    return tools or None


def _tool_calls(value: Any, where: str) -> list[dict[str, Any]]:
    calls = [value] if isinstance(value, dict) else value
    if not isinstance(calls, list) or not calls:
        raise _Bad(where, f"expected a function call or a list of them, got {_type_name(value)}", "wrong_type")
    out = []
    for i, call in enumerate(calls):
        here = where if isinstance(value, dict) else f"{where}[{i}]"
        call = _object(call, here, "a function call (an object)")
        function = call.get("function", call)  # OpenAI nests it, LLaMA-Factory does not
        function = _object(function, f"{here}.function")
        name = _string(function.get("name"), f"{here}.name")
        arguments = function.get("arguments", {})
        if isinstance(arguments, str):  # one spelling of the same arguments, so round trips compare equal
            with suppress(ValueError):
                arguments = json.dumps(bounded_json.loads(arguments), ensure_ascii=False)
        else:
            arguments = json.dumps(arguments, ensure_ascii=False)
        entry: dict[str, Any] = {"type": "function", "function": {"name": name, "arguments": arguments}}
        if call.get("id") is not None:
            entry["id"] = _string(call["id"], f"{here}.id")
        out.append(entry)
    return out


# --- OpenAI-style messages (also the lists inside prompt/completion and preference records) --------


def _content(value: Any, where: str) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, list):  # content parts: only text ones can be kept
        texts = []
        for i, part in enumerate(value):
            part = _object(part, f"{where}[{i}]", "a content part (an object)")
            if part.get("type") != "text":
                raise _Bad(
                    f"{where}[{i}].type", f"only text parts are supported, got '{part.get('type')}'", "bad_value"
                )
            texts.append(_string(part.get("text"), f"{where}[{i}].text", allow_empty=True))
        return "".join(texts)
    raise _Bad(where, f"expected a string, got {_type_name(value)}", "wrong_type")


def _openai_message(item: Any, where: str) -> dict[str, Any]:
    item = _object(item, where, "a message (an object with 'role' and 'content')")
    if "role" not in item:
        raise _Bad(f"{where}.role", f"missing field '{where}.role'", "missing_field")
    role = item["role"]
    if role not in ROLES:
        raise _Bad(f"{where}.role", f"unknown role {role!r}, expected one of {', '.join(ROLES)}", "bad_value")
    message: dict[str, Any] = {"role": role, "content": _content(item.get("content"), f"{where}.content")}
    if item.get("tool_calls"):
        message["tool_calls"] = _tool_calls(item["tool_calls"], f"{where}.tool_calls")
    elif message["content"] is None:
        raise _Bad(f"{where}.content", f"missing field '{where}.content'", "missing_field")
    for key in ("tool_call_id", "name"):
        if item.get(key) is not None:
            message[key] = _string(item[key], f"{where}.{key}")
    return message


def _openai_messages(value: Any, where: str, from_text: bool) -> list[dict[str, Any]]:
    return [_openai_message(m, f"{where}[{i}]") for i, m in enumerate(_list(value, where, from_text))]


def _turns(value: Any, where: str, from_text: bool, role: str) -> list[dict[str, Any]]:
    """A string (one turn in `role`), one message object, or a list of messages."""
    value = _maybe_json(value, from_text)
    if isinstance(value, str):
        return [{"role": role, "content": _string(value, where)}]
    if isinstance(value, dict):
        return [_openai_message(value, where)]
    if isinstance(value, list):
        return _openai_messages(value, where, from_text)
    raise _Bad(where, f"expected a string or a list of messages, got {_type_name(value)}", "wrong_type")


# --- one converter per shape: record -> (messages, rejected, tools) --------------------------------

Converted = tuple[list[dict[str, Any]], dict[str, Any] | None, list[dict[str, Any]] | None]


def _system(record: dict[str, Any], key: str | None) -> list[dict[str, Any]]:
    if key is None or _absent(record.get(key)):
        return []
    return [{"role": "system", "content": _string(record[key], key)}]


def _ranking(record: dict[str, Any], spec: Spec) -> bool:
    if spec.ranking is not None:
        return spec.ranking
    return any(spec.column(k, k) in record for k in ("chosen", "rejected"))


def _alpaca(record: dict[str, Any], spec: Spec, from_text: bool) -> Converted:
    messages = _system(record, spec.column("system", None if spec.explicit else "system"))
    history_key = spec.column("history", None if spec.explicit else "history")
    if history_key is not None and not _absent(record.get(history_key)):
        for i, pair in enumerate(_list(record[history_key], history_key, from_text)):
            where = f"{history_key}[{i}]"
            if not isinstance(pair, list) or len(pair) != 2:
                raise _Bad(where, f"expected a [question, answer] pair, got {_type_name(pair)}", "wrong_type")
            messages.append({"role": "user", "content": _string(pair[0], f"{where}[0]")})
            messages.append({"role": "assistant", "content": _string(pair[1], f"{where}[1]")})
    prompt_key, query_key = spec.column("prompt", "instruction"), spec.column("query", "input")
    instruction = _string(_required(record, prompt_key), prompt_key, allow_empty=True)
    query = record.get(query_key)
    query = "" if query is None else _string(query, query_key, allow_empty=True)
    prompt = "\n".join(part for part in (instruction, query) if part)  # LLaMA-Factory joins them so
    if not prompt.strip():
        raise _Bad(prompt_key, "expected text, got an empty string", "empty_value")
    messages.append({"role": "user", "content": prompt})
    rejected = None
    if _ranking(record, spec):
        chosen_key, rejected_key = spec.column("chosen", "chosen"), spec.column("rejected", "rejected")
        messages.append({"role": "assistant", "content": _string(_required(record, chosen_key), chosen_key)})
        rejected = {"role": "assistant", "content": _string(_required(record, rejected_key), rejected_key)}
    else:
        key = spec.column("response", "output")
        messages.append({"role": "assistant", "content": _string(_required(record, key), key)})
    tools_key = spec.column("tools", None if spec.explicit else "tools")
    tools = _tools(record.get(tools_key), tools_key, from_text) if tools_key else None
    return messages, rejected, tools


def _sharegpt_turn(item: Any, where: str, tags: dict[str, str], first: bool) -> dict[str, Any]:
    role_tag, content_tag = tags["role_tag"], tags["content_tag"]
    item = _object(item, where, f"an object with '{role_tag}' and '{content_tag}'")
    if item.get(role_tag) is None:
        raise _Bad(f"{where}.{role_tag}", f"missing field '{where}.{role_tag}'", "missing_field")
    roles = {
        tags["user_tag"]: "user",
        tags["assistant_tag"]: "assistant",
        tags["observation_tag"]: "tool",
        tags["function_tag"]: "function",
        tags["system_tag"]: "system",
    }
    role = roles.get(item[role_tag])
    if role is None:
        raise _Bad(
            f"{where}.{role_tag}", f"unknown role {item[role_tag]!r}, expected one of {', '.join(roles)}", "bad_value"
        )
    if content_tag not in item or item[content_tag] is None:
        raise _Bad(f"{where}.{content_tag}", f"missing field '{where}.{content_tag}'", "missing_field")
    value = _string(item[content_tag], f"{where}.{content_tag}", allow_empty=role == "system")
    if role == "system" and not first:
        raise _Bad(f"{where}.{role_tag}", "a system turn can only come first", "bad_value")
    if role == "function":
        try:
            calls = bounded_json.loads(value)
        except ValueError:
            raise _Bad(
                f"{where}.{content_tag}", 'expected JSON text of a call: {"name": ..., "arguments": {...}}', "bad_json"
            ) from None
        return {"role": "assistant", "content": None, "tool_calls": _tool_calls(calls, f"{where}.{content_tag}")}
    message: dict[str, Any] = {"role": role, "content": value}
    if role == "tool" and item.get("tool_call_id") is not None:
        message["tool_call_id"] = _string(item["tool_call_id"], f"{where}.tool_call_id")
    return message


def _sharegpt(record: dict[str, Any], spec: Spec, from_text: bool) -> Converted:
    tags = {**SHAREGPT_TAGS, **spec.tags}
    key = spec.column("messages", "conversations")
    turns = _list(_required(record, key), key, from_text)
    messages = [_sharegpt_turn(t, f"{key}[{i}]", tags, i == 0) for i, t in enumerate(turns)]
    if not messages or messages[0]["role"] != "system":  # a system turn overrides the system column
        messages = _system(record, spec.column("system", None if spec.explicit else "system")) + messages
    rejected = None
    if _ranking(record, spec):
        chosen_key, rejected_key = spec.column("chosen", "chosen"), spec.column("rejected", "rejected")
        chosen = _maybe_json(_required(record, chosen_key), from_text)
        messages.append(_sharegpt_turn(chosen, chosen_key, tags, False))
        rejected = _sharegpt_turn(_maybe_json(_required(record, rejected_key), from_text), rejected_key, tags, False)
    tools_key = spec.column("tools", None if spec.explicit else "tools")
    tools = _tools(record.get(tools_key), tools_key, from_text) if tools_key else None
    return messages, rejected, tools


def _openai(record: dict[str, Any], spec: Spec, from_text: bool) -> Converted:
    messages = _openai_messages(_required(record, "messages"), "messages", from_text)
    return messages, None, _tools(record.get("tools"), "tools", from_text)


def _prompt_completion(record: dict[str, Any], spec: Spec, from_text: bool) -> Converted:
    messages = _system(record, "system")
    messages += _turns(_required(record, "prompt"), "prompt", from_text, "user")
    messages += _turns(_required(record, "completion"), "completion", from_text, "assistant")
    return messages, None, _tools(record.get("tools"), "tools", from_text)


def _preference(record: dict[str, Any], spec: Spec, from_text: bool) -> Converted:
    chosen = _turns(_required(record, "chosen"), "chosen", from_text, "assistant")
    rejected = _turns(_required(record, "rejected"), "rejected", from_text, "assistant")
    if rejected[:-1] != chosen[:-1]:
        raise _Bad("rejected", "chosen and rejected must agree on every turn but the last", "bad_value")
    prompt = []
    if not _absent(record.get("prompt")):
        prompt = _turns(record["prompt"], "prompt", from_text, "user")
    messages = _system(record, "system") + prompt + chosen
    return messages, rejected[-1], _tools(record.get("tools"), "tools", from_text)


CONVERTERS: dict[str, Callable[[dict[str, Any], Spec, bool], Converted]] = {
    "alpaca": _alpaca,
    "sharegpt": _sharegpt,
    "openai": _openai,
    "prompt_completion": _prompt_completion,
    "preference": _preference,
}


def detect_shape(record: Any) -> str | None:
    """The format a record's keys say it is in; None if they do not say."""
    if not isinstance(record, dict):
        return None
    keys = set(record)
    if "conversations" in keys:
        return "sharegpt"
    if "messages" in keys:
        return "openai"
    if "instruction" in keys:
        return "alpaca"
    if {"prompt", "completion"} <= keys:
        return "prompt_completion"
    if {"chosen", "rejected"} <= keys:
        return "preference"
    return None


def _label(record: dict[str, Any], spec: Spec, from_text: bool) -> bool | None:
    """KTO's tag: the `kto_tag` column of a dataset_info.json entry, else a boolean `label` field (TRL's KTO
    shape); a `label` that is not a boolean is a field of the user's own and is left alone."""
    key = spec.column("kto_tag", None if spec.explicit else "label")
    value = record.get(key) if key else None
    if from_text and isinstance(value, str) and value.strip().lower() in ("true", "false"):
        value = value.strip().lower() == "true"
    if value is None or isinstance(value, bool):
        return value
    if "kto_tag" in spec.columns:
        raise _Bad(key, f"expected true or false (the kto_tag column), got {_type_name(value)}", "wrong_type")
    return None


def _refuse_media(record: dict[str, Any], spec: Spec) -> None:
    for name in MEDIA_COLUMNS:
        key = spec.column(name, name)
        if key is not None and not _absent(record.get(key)):
            raise _Bad(
                key,
                f"{name} are not supported: tuneloop fine-tunes text models only, and would drop the {name} "
                "and train their <image>/<video>/<audio> tags as text",
                "multimodal",
            )


def _to_sample(record: Any, shape: str, spec: Spec | None = None, *, from_text: bool = False) -> Sample:
    """One record to a Sample; raises _Bad for the first thing wrong with it."""
    if not isinstance(record, dict):
        raise _Bad(None, f"expected an object (one record), got {_type_name(record)}", "wrong_type")
    spec = spec or Spec()
    _refuse_media(record, spec)
    messages, rejected, tools = CONVERTERS[shape](record, spec, from_text)
    where = spec.column("messages", "conversations") if shape == "sharegpt" else None
    if shape == "openai":
        where = "messages"
    if not messages:
        raise _Bad(where, "empty conversation", "empty_conversation")
    roles = [m["role"] for m in messages]
    if "assistant" not in roles:
        raise _Bad(where, "conversation has no assistant turn", "no_assistant")
    if "user" not in roles:
        raise _Bad(where, "conversation has no user turn", "no_user")
    if rejected is not None and rejected["role"] != "assistant":
        raise _Bad(spec.column("rejected", "rejected"), "the rejected answer must be an assistant turn", "bad_value")
    try:
        return Sample(
            messages=messages,
            rejected=rejected,
            tools=tools,
            label=_label(record, spec, from_text),
            tags=_tags(record, from_text),
            original=record,
            original_format=shape,
        )
    except ValidationError as e:
        first = e.errors()[0]
        raise _Bad(where, first["msg"].removeprefix("Value error, "), "invalid") from None


def convert_record(
    record: Any,
    shape: str,
    path: Path,
    *,
    number: int | None = None,
    line: int | None = None,
    spec: Spec | None = None,
    from_text: bool = False,
) -> Sample | RecordProblem:
    """One record in `shape` (a FORMATS name other than dataset_info) to a Sample, or the first
    problem with it. `from_text`: the record came from CSV/TSV, whose cells may hold JSON."""
    try:
        return _to_sample(record, shape, spec, from_text=from_text)
    except _Bad as bad:
        return RecordProblem(str(path), bad.problem, record=number, line=line, field=bad.where, kind=bad.kind)


# --- files -----------------------------------------------------------------------------------------


def load_file(
    path: Path,
    *,
    fmt: str = "auto",
    encoding: str | None = None,
    entry: str | None = None,
    limits: ReadLimits | None = None,
) -> LoadResult:
    """Read a data file into Samples. Bad records become problems; see the module docstring for
    what raises DataError."""
    path = Path(path)
    if fmt != "auto" and fmt not in FORMATS:
        text = f"unknown format '{fmt}', expected auto or one of {', '.join(FORMATS)}"
        raise fatal(RecordProblem(str(path), text, kind="unknown_format"))
    spec = Spec()
    shape = fmt
    if fmt == "dataset_info" or (fmt == "auto" and (entry is not None or path.name == "dataset_info.json")):
        path, shape, spec = _dataset_info(path, entry, limits)
    opened = open_records(path, encoding=encoding, limits=limits)
    raws: list[RawRecord] = []
    problems: list[RecordProblem] = []
    records = 0
    for item in opened.records():
        if isinstance(item, RawRecord):
            raws.append(item)
            records = max(records, item.number)
        else:
            problems.append(item)
            records = max(records, item.record or 0)
    _refuse_pretraining_text(raws, path, spec)
    if shape == "auto":
        shape, skipped = _majority(raws, path, problems)
        raws = [r for r in raws if r.number not in skipped]
    samples: list[tuple[int, Sample]] = []
    from_text = opened.kind in ("csv", "tsv")
    for raw in raws:
        result = convert_record(raw.data, shape, path, number=raw.number, line=raw.line, spec=spec, from_text=from_text)
        if isinstance(result, Sample):
            samples.append((raw.number, result))
        else:
            problems.append(result)
    problems.sort(key=lambda p: (p.record or 0, p.line or 0))
    media = [p for p in problems if p.kind == "multimodal"]
    if media:
        text = (
            f"multimodal data ({media[0].field} in {len(media)} of {records} records): tuneloop fine-tunes text "
            "models only; use a dataset without images, videos or audio"
        )
        raise DataError(media, f"{path.name}: {text}")
    detected = None
    if fmt not in ("auto", "dataset_info") and len(problems) == records:  # not one record read as that format
        counts = Counter(detect_shape(r.data) for r in raws)
        counts.pop(None, None)
        detected = counts.most_common(1)[0][0] if counts else None
        detected = detected if detected != fmt else None
    warnings = _placeholders(samples) + _training_kinds(samples)
    return LoadResult(samples, problems, shape, opened.encoding, records, path, warnings, detected)


_PLACEHOLDER = re.compile(r"\{\{\s*\w+\s*\}\}")


def _placeholders(samples: list[tuple[int, Sample]]) -> list[str]:
    """LLaMA-Factory's identity.json holds {{name}} and {{author}} for its users to fill in; trained as they are,
    the model would introduce itself as "{{name}}"."""
    found = [(n, m) for n, s in samples for m in _PLACEHOLDER.findall(s.full_text())]
    if not found:
        return []
    names = ", ".join(sorted({m for _, m in found}))
    records = sorted({n for n, _ in found})
    which = ", ".join(map(str, records[:10])) + (", ..." if len(records) > 10 else "")
    return [
        f"{len(records)} record(s) hold placeholders ({names}; records {which}): replace them with real text "
        "before training, or the model learns to say them"
    ]


def _training_kinds(samples: list[tuple[int, Sample]]) -> list[str]:
    """What supervised fine-tuning will do with data made for preference or KTO training."""
    bad = sum(1 for _, s in samples if s.label is False)
    preference = sum(1 for _, s in samples if s.rejected is not None)
    notes = []
    if bad:
        notes.append(
            f"{bad} answer(s) are labelled bad (KTO label false): kept with their label; "
            "supervised fine-tuning never trains on them"
        )
    if preference:
        notes.append(
            f"{preference} preference sample(s): supervised fine-tuning trains on the chosen answers; "
            "the rejected ones are kept for preference training"
        )
    return notes


def _refuse_pretraining_text(raws: list[RawRecord], path: Path, spec: Spec) -> None:
    """Records of one text field (LLaMA-Factory's c4_demo: {"text": ...}, read with stage: pt) are pretraining
    text, not conversations."""
    text_key = spec.column("prompt", "text") if spec.explicit else "text"
    keys = {frozenset(r.data) for r in raws if isinstance(r.data, dict)}
    if raws and keys == {frozenset([text_key])}:
        raise fatal(
            RecordProblem(
                str(path),
                f"pretraining text (records of one '{text_key}' field) is not supported: tuneloop fine-tunes on "
                "conversations; give it questions and answers (alpaca, sharegpt, openai, ...)",
                kind="pretraining_text",
            )
        )


def _majority(raws: list[RawRecord], path: Path, problems: list[RecordProblem]) -> tuple[str, set[int]]:
    """The format most records are in; the numbers of records in another one get problems."""
    shapes = {r.number: detect_shape(r.data) for r in raws}
    counts = Counter(s for s in shapes.values() if s)
    if not counts:
        for r in raws:
            keys = ", ".join(sorted(r.data)) if isinstance(r.data, dict) else _type_name(r.data)
            problems.append(
                RecordProblem(
                    str(path),
                    f"cannot tell the format from the keys ({keys}); expected instruction/output (alpaca), "
                    "conversations (sharegpt), messages (openai), prompt/completion or prompt/chosen/rejected",
                    record=r.number,
                    line=r.line,
                    kind="unknown_format",
                )
            )
        return "unknown", set(shapes)
    majority, n = counts.most_common(1)[0]
    odd = [r for r in raws if shapes[r.number] not in (None, majority)]
    if odd:
        numbers = ", ".join(str(r.number) for r in odd[:10]) + (", ..." if len(odd) > 10 else "")
        for r in odd:
            problems.append(
                RecordProblem(
                    str(path),
                    f"mixed formats: this record looks like {shapes[r.number]}, but most records ({n} of {len(raws)}) "
                    f"are {majority}; records that differ: {numbers}. Keep one format per file, or name it "
                    "with --format to check every record against it",
                    record=r.number,
                    line=r.line,
                    kind="mixed_format",
                )
            )
    return majority, {r.number for r in odd}


def _dataset_info(path: Path, entry: str | None, limits: ReadLimits | None) -> tuple[Path, str, Spec]:
    """Resolve a dataset_info.json entry to (data file, shape, spec)."""

    def fail(text: str) -> DataError:
        return fatal(RecordProblem(str(path), text, field=entry, kind="dataset_info"))

    items = list(open_records(path, kind="json", limits=limits).records())
    bad = [i for i in items if isinstance(i, RecordProblem)]
    if bad:
        raise DataError(bad)
    info = items[0].data if items else None
    if not isinstance(info, dict):
        raise fail("expected an object mapping dataset names to descriptions")
    if entry is None:
        local = [name for name, d in info.items() if isinstance(d, dict) and "file_name" in d]
        if len(local) != 1:
            raise fail(f"name the dataset to read; this file describes: {', '.join(info) or 'nothing'}")
        entry = local[0]
    if entry not in info:
        raise fail(f"no dataset named '{entry}'; this file describes: {', '.join(info)}")
    desc = info[entry]
    if not isinstance(desc, dict) or not isinstance(desc.get("file_name"), str):
        raise fail(f"dataset '{entry}' has no local file_name (hub and script datasets are not read)")
    base = path.resolve().parent
    data_path = (base / desc["file_name"]).resolve()
    # an uploaded dataset_info.json must not point the server at files outside its folder
    if not data_path.is_relative_to(base):
        raise fail(f"file_name '{desc['file_name']}' points outside the folder of dataset_info.json")
    shape = desc.get("formatting", "alpaca")
    if shape not in ("alpaca", "sharegpt"):
        raise fail(f"formatting '{shape}' is not supported, expected alpaca or sharegpt")
    columns, tags = desc.get("columns") or {}, desc.get("tags") or {}
    if not isinstance(columns, dict) or not isinstance(tags, dict):
        raise fail("columns and tags must be objects")
    return data_path, shape, Spec(columns=columns, tags=tags, ranking=bool(desc.get("ranking", False)), explicit=True)
