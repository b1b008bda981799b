"""The canonical sample: OpenAI-style `messages`, plus tags, origin and the original record.

Every importer produces these and every exporter consumes them; a sample's `content_hash` is what
makes dataset versions content-addressed.
"""

import hashlib
import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Role = Literal["system", "user", "assistant", "tool"]


class ToolCall(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str | None = None
    type: Literal["function"] = "function"
    function: dict[str, Any]  # {"name": str, "arguments": str (JSON text)}


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Role
    content: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None
    name: str | None = None

    @model_validator(mode="after")
    def _has_something(self) -> "Message":
        if self.tool_calls == []:
            self.tool_calls = None  # `[]` and absent mean the same; one spelling keeps round trips exact
        if self.content is None and not self.tool_calls:
            raise ValueError("a message needs content or tool_calls")
        return self


class Sample(BaseModel):
    """One training example. For preference data, the last assistant turn of `messages` is the
    chosen answer and `rejected` the rejected one. `label` is KTO's tag (LLaMA-Factory's `kto_tag`):
    True for an answer to learn from, False for one labelled bad, which supervised training skips."""

    model_config = ConfigDict(extra="forbid")

    messages: list[Message] = Field(min_length=1)
    rejected: Message | None = None
    tools: list[dict[str, Any]] | None = None
    label: bool | None = None
    tags: list[str] = Field(default_factory=list)
    origin: Literal["upload", "synthetic", "review"] = "upload"
    original: dict[str, Any] | None = None
    original_format: str | None = None

    @model_validator(mode="after")
    def _well_formed(self) -> "Sample":
        roles = [m.role for m in self.messages]
        if "assistant" not in roles:
            raise ValueError("a conversation needs at least one assistant turn")
        if not any(r == "user" for r in roles):
            raise ValueError("a conversation needs at least one user turn")
        if self.rejected is not None and self.rejected.role != "assistant":
            raise ValueError("the rejected answer must be an assistant turn")
        return self

    def content_key(self) -> dict[str, Any]:
        """What the sample *says*: the part that identity, dedup and round trips compare."""
        key: dict[str, Any] = {"messages": [m.model_dump(exclude_none=True) for m in self.messages]}
        if self.rejected is not None:
            key["rejected"] = self.rejected.model_dump(exclude_none=True)
        if self.tools:
            key["tools"] = self.tools
        if self.label is not None:
            key["label"] = self.label
        return key

    @property
    def content_hash(self) -> str:
        return content_hash_of(self.content_key())

    def prompt_text(self) -> str:
        """Everything before the last assistant turn, as plain text (for filters and dedup)."""
        last = self.last_assistant_index()
        return "\n".join(m.content or "" for m in self.messages[:last] if m.role != "system")

    def answer_text(self) -> str:
        """The last assistant turn, as plain text."""
        return self.messages[self.last_assistant_index()].content or ""

    def full_text(self) -> str:
        return "\n".join(m.content or "" for m in self.messages)

    def last_assistant_index(self) -> int:
        return max(i for i, m in enumerate(self.messages) if m.role == "assistant")


def content_hash_of(key: dict[str, Any]) -> str:
    """The hash of a sample's `content_key()`: for a caller that needs the key too (a version stores its messages)."""
    text = json.dumps(key, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
