"""The engine's way to the database named by the settings."""

from functools import cache

from sqlalchemy.engine import Engine

from engine.event_stream import relay_moves_of
from engine.settings import Settings, get_settings
from storage.db import make_engine
from storage.migrate import current, head, upgrade


class DatabaseNotReadyError(RuntimeError):
    pass


@cache
def _engine_for(url: str) -> Engine:
    if url.startswith("sqlite"):
        # A laptop's database migrates itself; a shared server is migrated once, by `tuneloop db upgrade`.
        upgrade(url)
    elif current(url) != head():
        raise DatabaseNotReadyError(f"the database at {url} is not at the latest schema; run `tuneloop db upgrade`")
    engine = make_engine(url)
    relay_moves_of(engine)  # the configured database's moves reach the configured Redis as they are committed
    return engine


def get_engine(settings: Settings | None = None) -> Engine:
    return _engine_for((settings or get_settings()).resolved_database_url)
