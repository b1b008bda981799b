"""`tuneloop db`: the database."""

import typer

from bot.cli.common import console
from engine.settings import get_settings, shown_url
from storage.migrate import upgrade

app = typer.Typer(help="The database.", no_args_is_help=True)


@app.command("upgrade")
def upgrade_command(revision: str = "head") -> None:
    """Migrate the database to the latest schema (or to REVISION)."""
    url = get_settings().resolved_database_url
    upgrade(url, revision)
    console.print(f"database at {shown_url(url)} is at {revision}")
