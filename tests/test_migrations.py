"""The migrations build exactly the schema the models describe, on SQLite and PostgreSQL."""

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect
from sqlmodel import SQLModel

import storage.models  # noqa: F401  (registers every table)
from storage.db import make_engine
from storage.migrate import alembic_config, current, downgrade, head, upgrade


def _schema_diff(url: str) -> list:
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(
                connection, opts={"compare_type": True, "compare_server_default": True}
            )
            return compare_metadata(context, SQLModel.metadata)
    finally:
        engine.dispose()


def _tables(url: str) -> set[str]:
    engine = make_engine(url)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_one_linear_history() -> None:
    script = ScriptDirectory.from_config(alembic_config("sqlite://"))
    assert len(script.get_heads()) == 1
    assert head() == script.get_current_head()


def test_head_matches_models(db_url: str) -> None:
    assert current(db_url) is None
    upgrade(db_url)
    assert current(db_url) == head()
    assert _schema_diff(db_url) == []
    assert _tables(db_url) == set(SQLModel.metadata.tables) | {"alembic_version"}


def test_upgrade_twice_is_a_no_op(db_url: str) -> None:
    upgrade(db_url)
    tables = _tables(db_url)
    upgrade(db_url)
    assert current(db_url) == head()
    assert _tables(db_url) == tables
    assert _schema_diff(db_url) == []


def test_downgrade_to_base_and_back(db_url: str) -> None:
    upgrade(db_url)
    downgrade(db_url, "base")
    assert current(db_url) is None
    assert _tables(db_url) <= {"alembic_version"}
    upgrade(db_url)
    assert current(db_url) == head()
    assert _schema_diff(db_url) == []


def test_url_with_percent_sign_survives_config() -> None:
    # ConfigParser interpolation would otherwise choke on a URL-encoded password.
    url = "postgresql+psycopg://user:p%40ss@db:5432/tuneloop"
    assert alembic_config(url).get_main_option("sqlalchemy.url") == url


def test_comparison_sees_drift(db_url: str) -> None:
    # Guards the tests above: an empty diff must mean "same schema", not "nothing compared".
    upgrade(db_url)
    engine = make_engine(db_url)
    try:
        with engine.begin() as connection:
            connection.exec_driver_sql("DROP INDEX ix_runs_state")
    finally:
        engine.dispose()
    diff = _schema_diff(db_url)
    assert [(op[0], op[1].name) for op in diff] == [("add_index", "ix_runs_state")]


def test_upgrade_creates_the_sqlite_folder(tmp_path) -> None:
    # `tuneloop db upgrade` on a fresh machine: TUNELOOP_HOME does not exist yet.
    url = f"sqlite:///{tmp_path / 'new' / 'home' / 'tuneloop.db'}"
    upgrade(url)
    assert current(url) == head()
