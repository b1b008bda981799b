"""What every command shares: the consoles, option types, and turning a user's mistakes into plain
messages with the right exit code, never tracebacks."""

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn, TypeVar

import typer
import yaml
from rich.console import Console
from rich.markup import escape
from sqlmodel import Session

from engine.data.errors import DataError
from engine.data.split import SplitError
from engine.database import DatabaseNotReadyError, get_engine
from engine.events import EventSink
from engine.loop.projects import NotFoundError, ProjectNameError
from storage.db import ConflictError, session_scope

if TYPE_CHECKING:
    import redis

console = Console(soft_wrap=True)  # messages stay whole lines; tables still fit the width
errors = Console(stderr=True, soft_wrap=True)

ProjectOption = Annotated[str, typer.Option("--project", "-p", help="Project name, e.g. customer_service.")]
DatasetOption = Annotated[str, typer.Option("--dataset", help="Dataset within the project.")]
VersionOption = Annotated[int | None, typer.Option("--version", "-v", help="Dataset version; latest if unset.")]
ApiKeyOption = Annotated[
    list[str] | None,
    typer.Option(
        help="A key clients send as 'Authorization: Bearer KEY'; repeat for more. TUNELOOP_API_KEYS if unset."
    ),
]
MaxRequestBytesOption = Annotated[
    int, typer.Option(min=1, help="Largest request body accepted; larger ones get a 413.")
]

EXIT_NOT_FOUND = 1
EXIT_INVALID_DATA = 2
Value = TypeVar("Value")


@contextmanager
def open_session() -> Iterator[Session]:
    """A unit of work with the user's mistakes turned into plain messages, never tracebacks."""
    try:
        with session_scope(get_engine()) as session:
            yield session
    except DataError as error:
        print_data_error(error)
        raise typer.Exit(EXIT_INVALID_DATA) from None
    except SplitError as error:
        errors.print(f"[red]error:[/red] cannot split: {escape(str(error))}")
        raise typer.Exit(EXIT_INVALID_DATA) from None
    except ProjectNameError as error:
        errors.print(f"[red]error:[/red] {escape(str(error))}")
        raise typer.Exit(EXIT_INVALID_DATA) from None
    except (NotFoundError, DatabaseNotReadyError, ConflictError) as error:
        errors.print(f"[red]error:[/red] {escape(str(error))}")
        raise typer.Exit(EXIT_NOT_FOUND) from None


@contextmanager
def announcing(show: EventSink) -> Iterator[EventSink]:
    """`show` (the terminal) plus the engine's own announcement of every event: kept in the database, and on the
    event stream when Redis answers, so that a run started here is followed (`tuneloop follow`, the chat front
    ends) and its story read back (`tuneloop run show`) like one a worker runs. What did not reach the stream (Redis
    away for a moment) is relayed at the end, as a worker would; the run's moves relay themselves as they commit."""
    from engine.events.stream import Announcer, fan_out, relay_events

    with redis_client() as client:
        announcer = Announcer(get_engine(), client)
        try:
            yield fan_out(show, announcer)
        finally:
            announcer.close()
            if client is not None:
                relay_events(get_engine(), client)


@contextmanager
def redis_client() -> Iterator["redis.Redis | None"]:
    """A client of the configured Redis, or None when it does not answer (a laptop without one)."""
    import redis

    from engine.settings import get_settings
    from engine.work.local import redis_reachable

    url = get_settings().redis_url
    client = redis.Redis.from_url(url) if redis_reachable(url) else None
    try:
        yield client
    finally:
        if client is not None:
            client.close()


def print_data_error(error: DataError, shown: int = 20) -> None:
    errors.print(f"[red]error:[/red] {escape(error.headline)}")
    if [str(p) for p in error.problems] == [error.headline]:
        return
    for problem in error.problems[:shown]:
        errors.print(f"  {problem}", markup=False, highlight=False)
    if len(error.problems) > shown:
        errors.print(f"  … and {len(error.problems) - shown} more")
    summary = error.summary()
    if len(error.problems) > 1 and summary:
        errors.print("problems by kind: " + ", ".join(f"{kind} {n}" for kind, n in summary.most_common()))


def load_yaml(path: Path) -> dict:
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as error:
        fail(f"{path}: cannot read the settings: {error}")
    if not isinstance(loaded, dict):
        fail(f"{path}: expected a mapping of settings, got {type(loaded).__name__}")
    return loaded


def fail(message: str) -> NoReturn:
    errors.print(f"[red]error:[/red] {escape(message)}")  # user text inside: never read as markup
    raise typer.Exit(EXIT_INVALID_DATA)


def quiet_training_libraries() -> None:
    """Silence the libraries' own progress bars and deprecation notices: in a terminal they would bury
    the run's progress lines, which say the same and more. Call it before importing the training stack:
    bitsandbytes speaks at import."""
    import logging
    import warnings

    from datasets.utils.logging import disable_progress_bar as disable_datasets_bars
    from huggingface_hub.utils import disable_progress_bars as disable_hub_bars
    from transformers.utils import logging as transformers_logging

    # Its CPU backend would fetch faster kernels from a hub; the built-in ones are what runs here.
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    disable_datasets_bars()
    disable_hub_bars()
    transformers_logging.disable_progress_bar()
    transformers_logging.set_verbosity_error()
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message="Paged optimizers are not supported on CPU")


def positional_or_old(value: Value | None, old: Value | None, name: str, option: str) -> Value:
    """A positional argument that used to be an option: the old spelling still works, with a notice."""
    if old is not None:
        errors.print(f"notice: {option} is now positional: {name}", highlight=False)
    chosen = value if value is not None else old
    if chosen is None:
        raise typer.BadParameter(f"missing {name}", param_hint=name)
    return chosen
