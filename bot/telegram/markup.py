"""Core messages as Telegram messages: HTML parse mode, every piece of text escaped with html.escape (so a sample
holding `<b>` or `<a href=…>` shows as typed), within Telegram's limits (core.telegram.org/bots/api#sendmessage:
4,096 characters of text after entity parsing, 1,024 of a caption; 64 bytes of callback data). A long message is
split at line ends into parts; one too long for a few parts is sent as a file after its first part."""

import html

from aiogram.types import InlineKeyboardButton, InlineKeyboardMarkup

from bot.core.messages import Button, Message

MESSAGE_TEXT = 4096
CAPTION = 1024
CALLBACK_DATA = 64  # bytes
PLACEHOLDER = 64  # a force-reply's input field placeholder
BUTTONS_PER_ROW = 3
MOST_PARTS = 3  # parts of a split message; a longer one goes as a file
# Callback data: what a press does, then the button's stored key (16 characters).
DO, ASK, CONFIRM, DISMISS = "d", "a", "c", "x"


def escape(text: str) -> str:
    return html.escape(text, quote=False)


def length(text: str) -> int:
    """Telegram's count of a text: UTF-16 code units (its entity offsets count so; never fewer than characters)."""
    return len(text.encode("utf-16-le")) // 2


def cut(text: str, limit: int) -> str:
    """`text` within `limit` as Telegram counts, ending in … when cut."""
    return text if length(text) <= limit else _head(text, limit - 1) + "…"


def parts(message: Message, limit: int = MESSAGE_TEXT) -> list[str]:
    """The message as HTML texts of at most `limit` visible characters each: the title in bold, the lines, the
    fields as `label: value`, then the tables and code blocks, monospaced; split between lines (a block stays whole),
    a line or block longer than a part cut into slices."""
    pieces = [(f"<b>{escape(message.title)}</b>", message.title)] if message.title else []
    for line in message.lines:
        pieces += [(escape(s), s) for s in _slices(line, limit)]
    for label, value in message.fields:
        plain = f"{label}: {value}"
        if length(plain) <= limit:
            pieces.append((f"<b>{escape(label)}</b>: {escape(value)}", plain))
        else:
            pieces += [(escape(s), s) for s in _slices(plain, limit)]
    for block in [*(table.aligned() for table in message.tables), *message.code]:
        pieces += [(f"<pre>{escape(s)}</pre>", s) for s in _slices(block, limit)]
    texts: list[str] = []
    shown, size = [], 0
    for markup, plain in pieces:
        grown = size + (1 if shown else 0) + length(plain)
        if shown and grown > limit:
            texts.append("\n".join(shown))
            shown, grown = [], length(plain)
        shown.append(markup)
        size = grown
    if shown:
        texts.append("\n".join(shown))
    return texts or ["."]


def card_text(message: Message) -> str:
    """A message edited in place (a run's card, a message whose buttons went stale) is one part: its first."""
    return parts(message)[0]


def keyboard(buttons: list[Button]) -> InlineKeyboardMarkup | None:
    """The buttons as an inline keyboard, a few to a row; None when there are none (an edit then removes them)."""
    rows: list[list[InlineKeyboardButton]] = []
    for button in (b for b in buttons if b.key):
        if not rows or len(rows[-1]) == BUTTONS_PER_ROW:
            rows.append([])
        rows[-1].append(InlineKeyboardButton(text=button.label, callback_data=callback_data(button)))
    return InlineKeyboardMarkup(inline_keyboard=rows) if rows else None


def callback_data(button: Button) -> str:
    """`d:KEY` acts, `a:KEY` asks for text first, `c:KEY` asks to confirm first; the key stands for the action
    kept server-side, so the data stays far below 64 bytes whatever the action holds."""
    kind = ASK if button.asks_for_text else CONFIRM if button.confirm else DO
    data = f"{kind}:{button.key}"
    assert len(data.encode()) <= CALLBACK_DATA
    return data


def _slices(text: str, limit: int) -> list[str]:
    slices = []
    while length(text) > limit:
        slices.append(_head(text, limit))
        text = text[len(slices[-1]) :]
    return [*slices, text]


def _head(text: str, limit: int) -> str:
    """The longest start of `text` within `limit` UTF-16 code units."""
    size = 0
    for index, char in enumerate(text):
        size += 2 if ord(char) > 0xFFFF else 1
        if size > limit:
            return text[:index]
    return text
