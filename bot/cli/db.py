"""`tuneloop db`: the database."""

import typer
from sqlalchemy.engine import make_url

from bot.cli.common import console
from engine.settings import get_settings
from storage.migrate import upgrade

app = typer.Typer(help="The database.", no_args_is_help=True)


@app.command("upgrade")
def upgrade_command(revision: str = "head") -> None:
    """Migrate the database to the latest schema (or to REVISION)."""
    url = get_settings().resolved_database_url
    upgrade(url, revision)
    console.print(f"database at {_redact(url)} is at {revision}")


def _redact(url: str) -> str:
    """Hide a password in a database URL before printing it."""
    return make_url(url).render_as_string(hide_password=True)
