"""Samples out, in a format another tool reads back.

Export formats (`EXPORT_FORMATS`):

- "sharegpt": a JSON array of {conversations, system, tools, chosen, rejected, tags} records.
- "alpaca": a JSON array of {instruction, input, output | chosen + rejected, system, history, tags}.
- "openai": JSON Lines of {messages, tools, tags}; preference samples as TRL's {prompt, chosen,
  rejected} message lists.
- "llamafactory": `out` is a folder; writes `<name>.json` (sharegpt) and adds a `<name>` entry,
  with columns, tags mapping and ranking, to the folder's dataset_info.json.

Every sample is checked before anything is written: one that the format cannot hold (tool calls
in alpaca, a system turn in the middle for sharegpt, ...) raises DataError naming the sample, so
nothing is lost silently. Files are written to a temporary name and renamed into place.
Importing what was exported gives samples with the same `content_key()` and tags, except for the ids that the
openai format gives tool calls without one (and the tool results answering them), as OpenAI requires.
Files get the permissions any new file gets (0644 under the usual umask)."""

import json
from collections.abc import Iterable, Sequence
from contextlib import suppress
from pathlib import Path
from typing import Any

from engine.data import bounded_json
from engine.data.errors import DataError, RecordProblem
from engine.data.formats import SHAREGPT_TAGS
from engine.data.readers import fatal
from engine.data.sample import Message, Sample
from engine.files import write_atomic

EXPORT_FORMATS = ("sharegpt", "alpaca", "openai", "llamafactory")


class _Cannot(Exception):
    """The format has no place for something in the sample."""


def export_samples(samples: Sequence[Sample], fmt: str, out: Path, *, name: str = "tuneloop") -> list[Path]:
    """Write `samples` as `fmt` to `out`: a file if it ends in .json / .jsonl, else a folder that
    gets `<name>.json` / `<name>.jsonl` (and, for llamafactory, dataset_info.json).
    Returns the paths written. Raises DataError if a sample cannot be represented."""
    out = Path(out)
    if fmt not in EXPORT_FORMATS:
        raise fatal(_problem(out, f"unknown export format '{fmt}', expected one of {', '.join(EXPORT_FORMATS)}"))
    if not name or "/" in name or "\\" in name or name.startswith("."):
        raise fatal(_problem(out, f"'{name}' is not a usable dataset name"))
    to_record = {"sharegpt": _sharegpt, "llamafactory": _sharegpt, "alpaca": _alpaca, "openai": _openai}[fmt]
    records, problems = [], []
    for i, sample in enumerate(samples, 1):
        try:
            records.append(to_record(sample))
        except _Cannot as e:
            text = f"sample {i} ({sample.content_hash[:12]}) cannot be exported as {fmt}: {e}"
            problems.append(_problem(out, text, record=i))
    if fmt == "llamafactory" and len({s.rejected is not None for s in samples}) > 1:
        problems.append(_problem(out, "a LLaMA-Factory dataset is all preference data or none; these are mixed"))
    if problems:
        headline = f"{len(problems)} sample(s) cannot be exported as {fmt}; first: {problems[0].problem}"
        raise DataError(problems, headline)

    if fmt == "openai":
        target = _target(out, name, ".jsonl")
        write_atomic(target, (json.dumps(r, ensure_ascii=False) + "\n" for r in records))
        return [target]
    if fmt != "llamafactory":
        target = _target(out, name, ".json")
        write_atomic(target, _json_array(_uniform(records)))
        return [target]
    out.mkdir(parents=True, exist_ok=True)
    data = out / f"{name}.json"
    write_atomic(data, _json_array(_uniform(records)))
    info_path = out / "dataset_info.json"
    info = _read_info(info_path)
    info[name] = _info_entry(data.name, records, ranking=bool(samples) and samples[0].rejected is not None)
    write_atomic(info_path, [json.dumps(info, ensure_ascii=False, indent=2) + "\n"])
    return [data, info_path]


def _target(out: Path, name: str, suffix: str) -> Path:
    # a path ending in .json / .jsonl is the file itself; anything else is a folder to write into
    if out.suffix.lower() in (".json", ".jsonl") and not out.is_dir():
        return out
    return out / f"{name}{suffix}"


def _problem(out: Path, text: str, record: int | None = None) -> RecordProblem:
    return RecordProblem(str(out), text, record=record, kind="cannot_export")


# --- writing -------------------------------------------------------------------------------------


def _json_array(records: list[dict[str, Any]]) -> Iterable[str]:
    # one record per line: small, and a problem's line number points at its record
    yield "[\n"
    for i, record in enumerate(records):
        yield json.dumps(record, ensure_ascii=False) + (",\n" if i < len(records) - 1 else "\n")
    yield "]\n"


def _uniform(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Give every record the optional keys any record has: `datasets` (which LLaMA-Factory reads
    with) infers columns from the data, and a column mapped in dataset_info.json must exist."""
    optional = {"system": "", "tools": "", "tags": []}
    present = {k for r in records for k in optional if k in r}
    return [{**{k: optional[k] for k in present}, **r} for r in records]


def _read_info(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    try:
        info = bounded_json.loads(path.read_text(encoding="utf-8-sig"))
    except (ValueError, UnicodeDecodeError) as e:
        raise fatal(_problem(path, f"existing dataset_info.json is not valid JSON: {e}")) from None
    if not isinstance(info, dict):
        raise fatal(_problem(path, "existing dataset_info.json is not an object"))
    return info


def _info_entry(file_name: str, records: list[dict[str, Any]], *, ranking: bool) -> dict[str, Any]:
    columns = {"messages": "conversations"}
    for key in ("system", "tools"):
        if any(key in r for r in records):
            columns[key] = key
    if ranking:
        columns |= {"chosen": "chosen", "rejected": "rejected"}
    return {
        "file_name": file_name,
        "formatting": "sharegpt",
        "ranking": ranking,
        "columns": columns,
        "tags": dict(SHAREGPT_TAGS),
    }


# --- one record per sample -----------------------------------------------------------------------


def _split_system(sample: Sample) -> tuple[str | None, list[Message]]:
    messages = list(sample.messages)
    system = messages.pop(0).content if messages and messages[0].role == "system" else None
    for i, m in enumerate(messages):
        if m.role == "system":
            raise _Cannot(f"turn {i + 1} is a system turn after the start; only a leading one is kept")
        if m.name is not None:
            raise _Cannot(f"turn {i + 1} has a name ('{m.name}'), which this format cannot hold")
    return system, messages


def _chosen(sample: Sample, body: list[Message]) -> tuple[list[Message], Message | None]:
    """For preference data, split off the chosen (last) turn; both it and rejected must be text."""
    if sample.rejected is None:
        return body, None
    chosen = body[-1]
    for label, m in (("chosen", chosen), ("rejected", sample.rejected)):
        if m.role != "assistant" or m.tool_calls or m.content is None:
            raise _Cannot(f"the {label} answer must be a plain assistant text turn at the end")
    return body[:-1], chosen


def _common(record: dict[str, Any], sample: Sample, system: str | None) -> dict[str, Any]:
    if system is not None:
        record["system"] = system
    if sample.tools:
        record["tools"] = json.dumps([_bare_tool(t) for t in sample.tools], ensure_ascii=False)
    if sample.tags:
        record["tags"] = list(sample.tags)
    return record


def _bare_tool(tool: dict[str, Any]) -> dict[str, Any]:
    # LLaMA-Factory's tools are bare function definitions; the importer wraps them back
    if set(tool) == {"type", "function"} and tool["type"] == "function" and isinstance(tool["function"], dict):
        return tool["function"]
    return tool


def _call_value(m: Message) -> str:
    calls = []
    for call in m.tool_calls or []:
        arguments = call.function.get("arguments", "{}")
        with suppress(ValueError, TypeError):
            parsed = bounded_json.loads(arguments)
            if isinstance(parsed, dict):  # LLaMA-Factory wants the arguments as an object
                arguments = parsed
        entry: dict[str, Any] = {"name": call.function.get("name"), "arguments": arguments}
        if call.id is not None:
            entry["id"] = call.id
        calls.append(entry)
    return json.dumps(calls[0] if len(calls) == 1 else calls, ensure_ascii=False)


def _sharegpt_turn(m: Message, i: int) -> dict[str, Any]:
    if m.role == "user":
        return {"from": "human", "value": m.content}
    if m.role == "tool":
        turn = {"from": "observation", "value": m.content}
        if m.tool_call_id is not None:
            turn["tool_call_id"] = m.tool_call_id
        return turn
    if m.tool_calls:
        if m.content:
            raise _Cannot(f"turn {i + 1} has both text and tool calls; sharegpt holds one or the other")
        return {"from": "function_call", "value": _call_value(m)}
    return {"from": "gpt", "value": m.content}


def _sharegpt(sample: Sample) -> dict[str, Any]:
    system, body = _split_system(sample)
    body, chosen = _chosen(sample, body)
    turns = [_sharegpt_turn(m, i) for i, m in enumerate(body)]
    # LLaMA-Factory drops a conversation whose turns do not alternate human side / model side
    for i, turn in enumerate(turns):
        if (turn["from"] in ("gpt", "function_call")) != (i % 2 == 1):
            raise _Cannot(f"turn {i + 1} breaks the alternation of human/observation and gpt/function_call turns")
    if len(turns) % 2 != (1 if chosen else 0):
        raise _Cannot("the conversation must end with a gpt turn (with the human turn for preference data)")
    record: dict[str, Any] = {"conversations": turns}
    if chosen is not None and sample.rejected is not None:
        record["chosen"] = {"from": "gpt", "value": chosen.content}
        record["rejected"] = {"from": "gpt", "value": sample.rejected.content}
    return _common(record, sample, system)


def _alpaca(sample: Sample) -> dict[str, Any]:
    system, body = _split_system(sample)
    for i, m in enumerate(body):
        if m.role == "tool" or m.tool_calls:
            raise _Cannot(f"turn {i + 1} is a tool call or tool result, which alpaca cannot hold")
        if m.role != ("user" if i % 2 == 0 else "assistant"):
            raise _Cannot(f"turn {i + 1} breaks the alternation of user and assistant turns alpaca needs")
    if len(body) % 2:
        raise _Cannot("the conversation must end with an assistant turn")
    _, chosen = _chosen(sample, body)
    pairs = [(body[i].content, body[i + 1].content) for i in range(0, len(body), 2)]
    question, answer = pairs[-1]
    record: dict[str, Any] = {"instruction": question, "input": ""}
    original = sample.original or {}
    instruction, query = original.get("instruction"), original.get("input")
    if isinstance(instruction, str) and isinstance(query, str) and query and f"{instruction}\n{query}" == question:
        record |= {"instruction": instruction, "input": query}  # as it came in: the importer joined the two
    if chosen is not None and sample.rejected is not None:
        record |= {"chosen": answer, "rejected": sample.rejected.content}
    else:
        record["output"] = answer
    if len(pairs) > 1:
        record["history"] = [list(p) for p in pairs[:-1]]
    return _common(record, sample, system)


def _with_call_ids(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """OpenAI's format links each tool result to its call by id: calls without one get `call_<n>`, and a tool
    result without a `tool_call_id` answers the earliest call not yet answered."""
    waiting: list[str] = []
    taken = {c["id"] for m in messages for c in m.get("tool_calls", []) if c.get("id")}
    number = 0
    for message in messages:
        for call in message.get("tool_calls", []):
            while not call.get("id"):
                number += 1
                call["id"] = f"call_{number}" if f"call_{number}" not in taken else None
            waiting.append(call["id"])
        if message["role"] == "tool":
            if message.get("tool_call_id") in waiting:
                waiting.remove(message["tool_call_id"])
            elif not message.get("tool_call_id") and waiting:
                message["tool_call_id"] = waiting.pop(0)
    return messages


def _openai(sample: Sample) -> dict[str, Any]:
    messages = _with_call_ids([m.model_dump(exclude_none=True) for m in sample.messages])
    if sample.rejected is not None:
        if sample.messages[-1].role != "assistant":
            raise _Cannot("preference data must end with the chosen assistant turn")
        record: dict[str, Any] = {
            "prompt": messages[:-1],
            "chosen": messages[-1:],
            "rejected": [sample.rejected.model_dump(exclude_none=True)],
        }
    else:
        record = {"messages": messages}
    if sample.tools:
        record["tools"] = sample.tools
    if sample.tags:
        record["tags"] = list(sample.tags)
    return record
