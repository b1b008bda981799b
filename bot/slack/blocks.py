"""Core messages as Block Kit, and the modals the bot opens. Every piece of user text is escaped for mrkdwn (`&`,
`<`, `>`), so a sample holding `<!channel>`, `<@U…>` or `<https://x|click>` shows as typed and can never ping
anyone or hide a link. Slack's limits (docs.slack.dev/reference/block-kit; slack_sdk's validators) are kept by
cutting text, never by a refused message."""

import json
from typing import Any

from bot.core.catalogue import say
from bot.core.messages import Button, Message

MAX_BLOCKS = 50
SECTION_TEXT = 3000
FIELD_TEXT = 2000
FIELDS_PER_SECTION = 10
BUTTON_TEXT = 75
ELEMENTS_PER_ACTIONS = 25
CONFIRM_TEXT = 300
MODAL_TITLE = 24
METADATA = 3000  # a modal's private_metadata
FALLBACK_TEXT = 3000  # the notification text; Slack cuts a message's text at 40,000
ASK = "ask"  # action_id prefix of a button that asks for text first
DO = "do"  # action_id prefix of a button that acts at once
TEXT_MODAL = "tuneloop:text"
UPLOAD_MODAL = "tuneloop:upload"
TEXT_BLOCK, TEXT_INPUT = "text", "value"
FILE_BLOCK, FILE_INPUT = "file", "file"
OPTIONS_BLOCK, OPTIONS_INPUT = "options", "options"
TITLE = "title:"  # block_id prefix of a message's title section, then its kind (a run's card: title:card)


def escape(text: str) -> str:
    """User text for mrkdwn: the three characters Slack reads as markup (api.slack.com/reference/surfaces/formatting
    #escaping)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def blocks_of(message: Message) -> list[dict[str, Any]]:
    """The message's blocks: its title in bold, its lines, its code blocks and tables (monospaced), its fields two
    abreast, then its buttons."""
    title = _section(f"*{escape(message.title)}*" if message.title else "")
    blocks: list[dict[str, Any]] = [{**title, "block_id": f"{TITLE}{message.kind}"}]
    if message.lines:
        blocks += [_section(chunk) for chunk in _chunks("\n".join(escape(line) for line in message.lines))]
    blocks += [_section(f"```{escape(code)}```") for code in message.code]
    blocks += [_section(f"```{escape(table.aligned())}```") for table in message.tables]
    fields = [
        {"type": "mrkdwn", "text": cut(f"*{escape(label)}*\n{escape(value)}", FIELD_TEXT)}
        for label, value in message.fields
    ]
    for start in range(0, len(fields), FIELDS_PER_SECTION):
        blocks.append({"type": "section", "fields": fields[start : start + FIELDS_PER_SECTION]})
    buttons = [_button(button) for button in message.buttons if button.key]
    blocks = blocks[: MAX_BLOCKS - 1 - (len(buttons) + ELEMENTS_PER_ACTIONS - 1) // ELEMENTS_PER_ACTIONS]
    for start in range(0, len(buttons), ELEMENTS_PER_ACTIONS):
        blocks.append({"type": "actions", "elements": buttons[start : start + ELEMENTS_PER_ACTIONS]})
    return blocks


def fallback_text(message: Message) -> str:
    """The `text` Slack shows in notifications, mrkdwn too, so escaped as well."""
    return cut(escape(message.text), FALLBACK_TEXT) or " "


def with_outcome(blocks: list[dict[str, Any]], outcome: str) -> list[dict[str, Any]]:
    """A posted message's blocks with its buttons replaced by what was done."""
    kept = [block for block in blocks if block.get("type") != "actions"]
    return [*kept, {"type": "context", "elements": [{"type": "mrkdwn", "text": cut(escape(outcome), SECTION_TEXT)}]}]


def text_modal(prompt: str, label: str, submit: str, metadata: dict[str, str]) -> dict[str, Any]:
    """The modal a button that needs text opens: a Fix's corrected answer, an override's reason."""
    return {
        "type": "modal",
        "callback_id": TEXT_MODAL,
        "private_metadata": json.dumps(metadata),
        "title": _plain(cut(label, MODAL_TITLE)),
        "submit": _plain(cut(submit, MODAL_TITLE)),
        "blocks": [
            {
                "type": "input",
                "block_id": TEXT_BLOCK,
                "label": _plain(cut(prompt, FIELD_TEXT)),
                "element": {"type": "plain_text_input", "action_id": TEXT_INPUT, "multiline": True},
            }
        ],
    }


def upload_modal(project: str, metadata: dict[str, str], language: str) -> dict[str, Any]:
    """`/finetune <project>` without data: a file to train on (files:read), and recipe options in the grammar's
    words. The file is optional: without one the project's latest dataset version is used."""
    return {
        "type": "modal",
        "callback_id": UPLOAD_MODAL,
        "private_metadata": json.dumps(metadata),
        "title": _plain(cut(say(language, "modal.upload_title", project=project), MODAL_TITLE)),
        "submit": _plain(cut(say(language, "modal.start"), MODAL_TITLE)),
        "blocks": [
            {
                "type": "input",
                "block_id": FILE_BLOCK,
                "optional": True,
                "label": _plain(say(language, "modal.data")),
                "element": {"type": "file_input", "action_id": FILE_INPUT, "max_files": 1},
            },
            {
                "type": "input",
                "block_id": OPTIONS_BLOCK,
                "optional": True,
                "label": _plain(say(language, "modal.options")),
                "hint": _plain(say(language, "modal.options_hint")),
                "element": {"type": "plain_text_input", "action_id": OPTIONS_INPUT},
            },
        ],
    }


def _button(button: Button) -> dict[str, Any]:
    element: dict[str, Any] = {
        "type": "button",
        "text": _plain(cut(button.label, BUTTON_TEXT)),
        "action_id": f"{ASK if button.asks_for_text else DO}:{button.key}",
        "value": button.key,
    }
    if button.style != "default":
        element["style"] = button.style
    if button.confirm:
        element["confirm"] = {
            "title": _plain(cut(button.label, 100)),
            "text": _plain(cut(button.confirm, CONFIRM_TEXT)),
            "confirm": _plain(cut(button.label, 30)),
            "deny": _plain(cut(button.cancel or "✕", 30)),
        }
    return element


def _section(text: str) -> dict[str, Any]:
    return {"type": "section", "text": {"type": "mrkdwn", "text": cut(text, SECTION_TEXT) or " "}}


def _chunks(text: str) -> list[str]:
    return [text[start : start + SECTION_TEXT] for start in range(0, len(text), SECTION_TEXT)]


def _plain(text: str) -> dict[str, Any]:
    return {"type": "plain_text", "text": text or " ", "emoji": False}


def is_card(blocks: list[dict[str, Any]]) -> bool:
    """Whether a posted message is a run's card, which the relay keeps up to date itself."""
    return bool(blocks) and blocks[0].get("block_id") == f"{TITLE}card"
