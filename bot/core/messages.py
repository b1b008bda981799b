"""The neutral message model every face renders: plain text only, no markup, so that a face escapes all of it for
its own format (Slack's mrkdwn, Telegram's HTML, the terminal's rich) and user text can never turn into markup."""

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from rich.cells import cell_len

if TYPE_CHECKING:
    from bot.core.actions import Action

Style = Literal["default", "primary", "danger"]
Kind = Literal["reply", "card", "review", "report", "event", "refusal", "error"]


@dataclass
class Button:
    """A button that performs `action` for whoever presses it. A chat face stores the action under `key`, a short
    server-side key that fits Telegram's 64-byte callback data; `command` is the same thing typed as chat text."""

    label: str
    action: "Action"
    command: str
    style: Style = "default"
    key: str | None = None
    asks_for_text: str | None = None  # a prompt for text the action needs first (a Fix asks for the answer)
    confirm: str | None = None  # a question to confirm before acting (deploying)
    cancel: str | None = None  # the confirmation's label for not acting


@dataclass
class Table:
    """Rows under column headings (a dataset's versions, a gate's checks). The terminal draws it as a table; a chat
    face shows `aligned`, in a monospaced block."""

    columns: list[str]
    rows: list[list[str]]

    def aligned(self) -> str:
        """The table as monospaced text, columns padded to their widest cell as a terminal shows it (a Chinese
        character takes two cells)."""
        lines = [self.columns, *self.rows]
        widths = [max(cell_len(line[i]) for line in lines) for i in range(len(self.columns))]
        return "\n".join(
            "  ".join(cell + " " * (width - cell_len(cell)) for cell, width in zip(line, widths, strict=True)).rstrip()
            for line in lines
        )


@dataclass
class Message:
    title: str
    lines: list[str] = field(default_factory=list)
    fields: list[tuple[str, str]] = field(default_factory=list)
    images: list[Path] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)
    code: list[str] = field(default_factory=list)  # blocks shown verbatim, to copy (a face shows them monospaced)
    tables: list[Table] = field(default_factory=list)
    buttons: list[Button] = field(default_factory=list)
    kind: Kind = "reply"
    run_id: int | None = None  # the run it is about: a chat face posts it in that run's thread
    project: str | None = None

    @property
    def text(self) -> str:
        """The whole message as plain text: the title, the lines, the fields, the tables, then the code."""
        fields = (f"{label}: {value}" for label, value in self.fields)
        parts = [self.title, *self.lines, *fields, *(table.aligned() for table in self.tables), *self.code]
        return "\n".join(part for part in parts if part)
