"""Shared fixtures.

- `tuneloop_home` (autouse): `TUNELOOP_HOME` points at a fresh tmp folder and the settings cache is
  cleared around every test, so no test reads another's settings or writes into the repository.
- `db_url`: a URL to an empty database, parametrised over `sqlite` (a file in tmp_path) and
  `postgresql` (a freshly created, uniquely named database, dropped afterwards). A test taking it
  runs once per engine.
- `db_engine`: an Engine on `db_url` with every migration applied; use it for anything that needs
  the tables.

PostgreSQL is reached through `TUNELOOP_TEST_POSTGRES_URL` (default: the `test` database on
127.0.0.1 as `postgres`). When it cannot be reached the PostgreSQL cases are skipped locally but
fail under CI (any truthy `CI`: true, 1, yes), so a broken CI service never passes as green.

- `synth_server`: tests/openai_server.py's scripted server as the synthesis endpoint (TUNELOOP_SYNTH_*).

- `redis_url`: the Redis server at `TUNELOOP_TEST_REDIS_URL` (default 127.0.0.1:6379, db 0), skipped
  locally and failed under CI when unreachable like PostgreSQL. Other tests share the server: use
  uniquely named keys, delete them afterwards, and flush only a database of your own.

  `make test` runs two files at once (pytest-xdist), so a file that needs a logical database of its own (arq's job
  ids such as 2:train:1 are global in one) takes one no other file uses: 3 test_core_local, 5 test_event_log,
  7 test_telegram_loop, 8 test_preferences, 9 test_slack_loop, 10 test_telegram_app, 11 test_demo, 12 test_core,
  13 test_worker, 14 test_slack_app, 15 test_event_stream. Free: 1, 2, 4, 6.
"""

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NoReturn

import pytest
import redis
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.pool import NullPool

from engine.settings import get_settings
from storage.db import make_engine
from storage.migrate import upgrade
from tests.openai_server import OpenAIServer

POSTGRES_URL = os.environ.get("TUNELOOP_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("TUNELOOP_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
SERVICE_MISSING = "service missing"


def under_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def missing_service(message: str, service: str) -> NoReturn:
    """Skip a test whose server is away, locally; fail it under CI, where the server is part of the job. The skip
    reason starts with SERVICE_MISSING, which .ci/run looks for in pytest's summary."""
    if under_ci():
        pytest.fail(f"{message} (CI is set: {service} tests must run in CI)", pytrace=False)
    pytest.skip(f"{SERVICE_MISSING}: {message}")


@pytest.fixture(autouse=True)
def tuneloop_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    home = tmp_path / "tuneloop-home"
    monkeypatch.setenv("TUNELOOP_HOME", str(home))
    # A developer's shell may point these at a real database or store; tests derive them from home.
    monkeypatch.delenv("TUNELOOP_DATABASE_URL", raising=False)
    monkeypatch.delenv("TUNELOOP_ARTIFACT_ROOT", raising=False)
    get_settings.cache_clear()
    yield home
    get_settings.cache_clear()


@pytest.fixture(scope="session")
def postgres_admin() -> Iterator[Engine]:
    """An AUTOCOMMIT engine on the PostgreSQL maintenance database (CREATE/DROP DATABASE need it)."""
    engine = create_engine(
        POSTGRES_URL, isolation_level="AUTOCOMMIT", poolclass=NullPool, connect_args={"connect_timeout": 5}
    )
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except Exception as exc:  # any failure to connect means "no PostgreSQL here"
        engine.dispose()
        message = f"PostgreSQL is not reachable at {make_url(POSTGRES_URL)!r}: {exc.__class__.__name__}: {exc}"
        missing_service(message, "PostgreSQL")
    yield engine
    engine.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'test.db'}"
        return
    with fresh_postgres_database(request.getfixturevalue("postgres_admin")) as url:
        yield url


@contextmanager
def fresh_postgres_database(admin: Engine) -> Iterator[str]:
    """A new, uniquely named PostgreSQL database's URL; dropped afterwards."""
    name = f"tuneloop_test_{uuid.uuid4().hex[:12]}"
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            # FORCE: a test that leaked a connection must not leave its database behind.
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
def db_engine(db_url: str) -> Iterator[Engine]:
    upgrade(db_url)
    engine = make_engine(db_url)
    yield engine
    engine.dispose()


@pytest.fixture(scope="session")
def redis_url() -> str:
    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=5)
    try:
        client.ping()
    except redis.RedisError as exc:
        message = f"Redis is not reachable at {REDIS_URL!r}: {exc.__class__.__name__}: {exc}"
        missing_service(message, "Redis")
    finally:
        client.close()
    return REDIS_URL


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    """A client of the test Redis."""
    connection = redis.Redis.from_url(redis_url)
    yield connection
    connection.close()


@pytest.fixture
def stream(client: redis.Redis) -> Iterator[str]:
    """An event stream of this test's own on the shared server, deleted with its dedup keys afterwards."""
    name = f"tuneloop:test:{uuid.uuid4().hex}"
    yield name
    keys = list(client.scan_iter(f"{name}*"))
    if keys:
        client.delete(*keys)


@pytest.fixture
def synth_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[OpenAIServer]:
    """The scripted OpenAI server as the synthesis endpoint; one request at a time, so a script meets batches in
    order."""
    with OpenAIServer() as running:
        for name in ("OPENAI_BASE_URL", "OPENAI_API_KEY"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("TUNELOOP_SYNTH_BASE_URL", running.base_url)
        monkeypatch.setenv("TUNELOOP_SYNTH_API_KEY", "test")
        monkeypatch.setenv("TUNELOOP_SYNTH_CONCURRENCY", "1")
        monkeypatch.setenv("TUNELOOP_SYNTH_BACKOFF_BASE_S", "0.01")
        monkeypatch.setenv("TUNELOOP_SYNTH_BACKOFF_MAX_S", "0.05")
        get_settings.cache_clear()
        yield running
    get_settings.cache_clear()
