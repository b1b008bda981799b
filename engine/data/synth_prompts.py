"""The texts and JSON schemas that synthesis sends to the model.

Kept apart from the engine so that a prompt change is one reviewable diff; `PROMPT_VERSION` goes
into every batch fingerprint, so a changed prompt never reuses batches paid for under the old one.

Each batch request carries its plan as a ```json block (one line per conversation to write: persona,
mood, difficulty, turns): precise for the model, and parseable by the test server.
"""

import json
from typing import Any

from engine.llm import schema_format

PROMPT_VERSION = "synth-v1"

_MESSAGE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "role": {"type": "string", "enum": ["user", "assistant"]},
        "content": {"type": "string"},
    },
    "required": ["role", "content"],
    "additionalProperties": False,
}

SAMPLES_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "samples": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"messages": {"type": "array", "items": _MESSAGE_SCHEMA}},
                "required": ["messages"],
                "additionalProperties": False,
            },
        }
    },
    "required": ["samples"],
    "additionalProperties": False,
}

SCENARIOS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "scenarios": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "name": {"type": "string"},
                    "description": {"type": "string"},
                    "weight": {"type": "number"},
                },
                "required": ["name", "description", "weight"],
                "additionalProperties": False,
            },
        }
    },
    "required": ["scenarios"],
    "additionalProperties": False,
}

SCHEMA_NAMES = {"samples": "training_samples", "scenarios": "sub_scenarios"}

_SYSTEM = (
    "You write training data for fine-tuning a chat assistant. Write every conversation in the "
    "language of the task description (Chinese task → natural, idiomatic Simplified Chinese). "
    "The assistant's answers must be correct, helpful, specific and in the assistant's own voice; "
    "never mention that the data is synthetic. Vary wording, length and details between "
    "conversations: no two users may ask the same thing the same way. Invent plausible details "
    "(order numbers, dates, products) but never real personal data: no real phone numbers, ID "
    "numbers, bank cards or e-mail addresses. Reply with JSON only."
)


def scenario_messages(task: str, count: int) -> list[dict[str, str]]:
    """Ask for the task's sub-scenarios with their share of real traffic."""
    user = (
        f"Task description:\n{task}\n\n"
        f"List the {count} most important sub-scenarios a user of this assistant brings up, as "
        'JSON {"scenarios": [{"name": ..., "description": ..., "weight": ...}]}. `name` is a short '
        "label (2-8 words, in the task's language), `description` one sentence, `weight` the share "
        "of real conversations this sub-scenario accounts for (weights sum to 1). Cover the "
        "frequent cases and a few rare but important ones."
    )
    return [{"role": "system", "content": _SYSTEM}, {"role": "user", "content": user}]


def batch_messages(
    task: str,
    scenario: str,
    plan: list[dict[str, Any]],
    *,
    scenario_description: str | None = None,
    examples: list[list[dict[str, Any]]] | None = None,
    wanted_answers: list[str] | None = None,
) -> list[dict[str, str]]:
    """Ask for one conversation per line of `plan` (persona, mood, difficulty, turns). `wanted_answers`
    are answers people wrote for this sub-scenario, shown without their questions."""
    parts = [f"Task description:\n{task}", f"Sub-scenario: {scenario}"]
    if scenario_description:
        parts.append(f"About this sub-scenario: {scenario_description}")
    if examples:
        shown = "\n".join(json.dumps({"messages": e}, ensure_ascii=False) for e in examples)
        parts.append("Examples of the style and quality wanted (do not copy their content or wording):\n" + shown)
    if wanted_answers:
        shown = "\n".join(json.dumps(answer, ensure_ascii=False) for answer in wanted_answers)
        parts.append(
            "Answers reviewers wrote for this sub-scenario: the assistant's answers should be this correct and "
            "complete, in this tone (write new conversations; do not reuse these answers):\n" + shown
        )
    parts.append(
        f"Write exactly {len(plan)} conversations, one per entry of this plan, in order. `turns` is "
        "the number of user→assistant exchanges; `persona`, `mood` and `difficulty` describe the "
        "user and how hard the request is to handle well:\n```json\n" + json.dumps(plan, ensure_ascii=False) + "\n```"
    )
    parts.append(
        'Reply as JSON {"samples": [{"messages": [{"role": "user", "content": ...}, '
        '{"role": "assistant", "content": ...}, ...]}, ...]}: roles alternate user/assistant, '
        "starting with the user and ending with the assistant."
    )
    return [{"role": "system", "content": _SYSTEM}, {"role": "user", "content": "\n\n".join(parts)}]


def response_format(mode: str, kind: str) -> dict[str, Any] | None:
    """The `response_format` for `mode` (json_schema, json_object, text) and `kind` (samples,
    scenarios); None for text, where the JSON is extracted from the reply."""
    return schema_format(mode, SCHEMA_NAMES[kind], SAMPLES_SCHEMA if kind == "samples" else SCENARIOS_SCHEMA)
