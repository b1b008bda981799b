"""The terminal as a face of the core: an action for the person at the keyboard, its messages printed with rich.
User text is never read as rich markup: every string of a message is printed as it is."""

import shlex
from typing import NoReturn

import typer
from rich import box
from rich.table import Table
from rich.text import Text

from bot.cli.common import EXIT_INVALID_DATA, EXIT_NOT_FOUND, console, errors
from bot.core.actions import Action
from bot.core.catalogue import DEFAULT_LANGUAGE
from bot.core.errors import UserError
from bot.core.identity import Actor
from bot.core.messages import Message
from bot.core.perform import Core
from bot.core.render import event_message, progress_text
from engine.data.versions import current_actor
from engine.events import Event, EventSink


def terminal_actor(by: str | None = None) -> Actor:
    """The person at the keyboard: `--by NAME`, else the OS user."""
    return Actor("cli", by or current_actor())


def act(action: Action, by: str | None = None, events: EventSink | None = None) -> list[Message]:
    """Carry out `action` for the person at the keyboard and print what the core answers; a mistake or refusal is
    printed as its sentence, with exit code 2 (1 when it names something that does not exist, or could not be done
    now). What the engine announces while the action works here goes to `events` (a progress display)."""
    try:
        core, actor = Core.from_settings(), terminal_actor(by)
        messages = core.perform(action, actor, events) if events else core.perform(action, actor)
    except UserError as error:
        fail_plain(str(error), EXIT_NOT_FOUND if error.not_found or error.transient else EXIT_INVALID_DATA)
    print_messages(messages)
    return messages


def fail_plain(message: str, code: int = EXIT_INVALID_DATA) -> NoReturn:
    """Print `message` (user text included: never read as markup) as the error, and exit with `code`."""
    errors.print(Text("error: ", style="red") + Text(message), highlight=False)
    raise typer.Exit(code)


def print_messages(messages: list[Message]) -> None:
    for message in messages:
        print_message(message)


def print_message(message: Message) -> None:
    style = {"refusal": "red", "error": "red", "card": "bold", "report": "bold", "review": "bold"}.get(message.kind, "")
    console.print(Text(message.title, style=style), highlight=False)
    for line in message.lines:
        console.print(Text(f"  {line}"), highlight=False)
    for label, value in message.fields:
        console.print(Text(f"  {label}: ", style="dim") + Text(value), highlight=False)
    for table in message.tables:
        shown = Table(*table.columns, box=box.SIMPLE)
        for row in table.rows:
            shown.add_row(*(Text(cell) for cell in row))  # user text, never markup
        console.print(shown)
    for code in message.code:
        console.print(Text(code, style="green"), highlight=False)
    for path in message.images:
        console.print(Text(f"  chart: {path}"), highlight=False)
    for path in message.files:
        console.print(Text(f"  {'report' if message.kind == 'report' else 'file'}: {path}"), highlight=False)
    if message.buttons:
        choices = [f"[{button.label}] tuneloop chat {shlex.quote(button.command)}" for button in message.buttons]
        console.print(Text("  " + "   ".join(choices), style="cyan"), highlight=False)


def print_event(event: Event) -> None:
    """An event the engine announced, as one line: progress with its numbers, everything else as the core words it;
    warnings and failures on stderr."""
    if event.type == "progress":
        console.print(Text(f"  {progress_text(event)}"), highlight=False)
        return
    message = event_message(event, DEFAULT_LANGUAGE)
    assert message is not None
    (errors if event.type in ("failure", "warning") else console).print(Text(message.title), highlight=False)
