"""The Slack app manifest asks for exactly the scopes the bot's Web API calls need, and names its command."""

import re
from pathlib import Path

import yaml

from bot.slack.app import COMMAND

ROOT = Path(__file__).resolve().parent.parent
MANIFEST = yaml.safe_load((ROOT / "bot" / "slack" / "manifest.yaml").read_text(encoding="utf-8"))
# The bot token scope each Web API method needs (docs.slack.dev/reference/methods/<method>); None: none needed.
SCOPE_OF = {
    "auth_test": None,
    "chat_postMessage": "chat:write",
    "chat_update": "chat:write",
    "chat_postEphemeral": "chat:write",
    "views_open": None,
    "files_info": "files:read",
    "files_upload_v2": "files:write",
}


# The scope each event subscription needs (docs.slack.dev/reference/events/<event>), and the events Bolt's
# app.event("message") receives in channels: public ones, private ones.
SCOPE_OF_EVENT = {"message.channels": "channels:history", "message.groups": "groups:history"}
EVENTS_OF_LISTENER = {"message": {"message.channels", "message.groups"}}


def test_the_manifest_asks_for_the_scopes_the_bot_uses_and_no_more() -> None:
    source = "\n".join(path.read_text(encoding="utf-8") for path in (ROOT / "bot" / "slack").glob("*.py"))
    called = set(re.findall(r"client\.(\w+)\(", source))
    listened = set(re.findall(r"app\.event\(\"(\w+)\"\)", source))
    events = set(MANIFEST["settings"]["event_subscriptions"]["bot_events"])
    assert events == set().union(*(EVENTS_OF_LISTENER[name] for name in listened))
    assert called, "no Web API calls found in bot/slack"
    unknown = called - SCOPE_OF.keys()
    assert not unknown, f"add the scope of {sorted(unknown)} to SCOPE_OF and, if it needs one, to the manifest"
    needed = {"commands"} | {SCOPE_OF[method] for method in called if SCOPE_OF[method]}
    needed |= {"files:read"}  # downloading url_private_download with the bot token
    needed |= {SCOPE_OF_EVENT[event] for event in events}
    assert set(MANIFEST["oauth_config"]["scopes"]["bot"]) == needed


def test_the_manifest_names_the_command_the_bot_listens_to() -> None:
    (command,) = MANIFEST["features"]["slash_commands"]
    assert command["command"] == COMMAND
    assert MANIFEST["settings"]["interactivity"]["is_enabled"] and MANIFEST["settings"]["socket_mode_enabled"]
