"""Database migrations: alembic, packaged inside `storage` so an installed tuneloop can migrate itself.

No alembic.ini is read: the configuration is built here and the database URL is handed to env.py
through it, so the URL always comes from the caller (settings, CLI or a test).

Whether a database is at the latest revision is answered without alembic (a third of a second to import, paid
by every command that opens the database): the revision is read from alembic's own table, and the newest one
from the migration files. Alembic loads when there is something to migrate.
"""

import re
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import inspect, text

from storage.db import make_engine

if TYPE_CHECKING:
    from alembic.config import Config

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
_REVISION_LINE = re.compile(r"^(revision|down_revision)\b[^=\n]*=\s*[\"'](\w+)[\"']", re.MULTILINE)


def alembic_config(url: str) -> "Config":
    """An alembic `Config` for `url`, pointing at the migrations shipped in the `storage` package."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("path_separator", "os")
    # ConfigParser interpolates '%', which may appear in a URL-encoded password.
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def upgrade(url: str, revision: str = "head") -> None:
    """Bring the database at `url` up to `revision`; a database already there is left alone."""
    from alembic import command

    command.upgrade(alembic_config(url), revision)


def downgrade(url: str, revision: str) -> None:
    """Take the database at `url` down to `revision` (`"base"` drops every table)."""
    from alembic import command

    command.downgrade(alembic_config(url), revision)


def current(url: str) -> str | None:
    """The revision the database at `url` is at (alembic's `alembic_version` table), or None when it was never
    migrated."""
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            if not inspect(connection).has_table("alembic_version"):
                return None
            return connection.execute(text("SELECT version_num FROM alembic_version")).scalar()
    finally:
        engine.dispose()


def head() -> str | None:
    """The newest revision shipped with this version of tuneloop: the one no migration file names as its
    down_revision (tests/test_migrations.py checks it against alembic's own answer)."""
    revisions, parents = set(), set()
    for path in (MIGRATIONS_DIR / "versions").glob("*.py"):
        found = dict(_REVISION_LINE.findall(path.read_text(encoding="utf-8")))
        if "revision" in found:
            revisions.add(found["revision"])
            parents.add(found.get("down_revision"))
    heads = revisions - parents
    return heads.pop() if len(heads) == 1 else None
