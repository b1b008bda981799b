"""Alembic environment for tuneloop: the URL comes from the Config built by `storage.migrate`."""

from alembic import context
from sqlmodel import SQLModel

import storage.models  # noqa: F401  (registers every table on SQLModel.metadata)
from storage.db import make_engine

config = context.config
target_metadata = SQLModel.metadata


def _options(url: str) -> dict:
    # SQLite cannot ALTER most things in place; batch mode rebuilds the table instead.
    return {
        "target_metadata": target_metadata,
        "render_as_batch": url.startswith("sqlite"),
        "compare_type": True,
        "compare_server_default": True,
    }


def run_migrations_offline() -> None:
    url = config.get_main_option("sqlalchemy.url")
    assert url, "storage.migrate.alembic_config(url) sets sqlalchemy.url"
    context.configure(url=url, literal_binds=True, dialect_opts={"paramstyle": "named"}, **_options(url))
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:  # a caller that already holds a connection (tests, embedding code)
        _run(connection)
        return
    url = config.get_main_option("sqlalchemy.url")
    assert url, "storage.migrate.alembic_config(url) sets sqlalchemy.url"
    engine = make_engine(url)  # the app's own engine: creates a SQLite file's folder, enforces FKs
    try:
        with engine.connect() as connection:
            _run(connection)
    finally:
        engine.dispose()


def _run(connection) -> None:  # type: ignore[no-untyped-def]
    context.configure(connection=connection, **_options(connection.engine.url.drivername))
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
