"""The engine's way to the database named by the settings."""

from functools import cache

from sqlalchemy.engine import Engine

from engine.events.stream import relay_moves_of
from engine.loop.projects import warn_about_project_names
from engine.settings import Settings, get_settings, shown_url
from storage.db import make_engine
from storage.migrate import current, head, upgrade


class DatabaseNotReadyError(RuntimeError):
    pass


@cache
def _engine_for(url: str) -> Engine:
    if current(url) != head():
        # A laptop's database migrates itself; a shared server is migrated once, by `tuneloop db upgrade`.
        if not url.startswith("sqlite"):
            raise DatabaseNotReadyError(
                f"the database at {shown_url(url)} is not at the latest schema; run `tuneloop db upgrade`"
            )
        upgrade(url)
    engine = make_engine(url)
    warn_about_project_names(engine)
    relay_moves_of(engine)  # the configured database's moves reach the configured Redis as they are committed
    return engine


def get_engine(settings: Settings | None = None) -> Engine:
    return _engine_for((settings or get_settings()).resolved_database_url)
