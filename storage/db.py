"""Database engines and sessions; SQLite by default, PostgreSQL by URL."""

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlmodel import Session, create_engine


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(url, pool_pre_ping=True)


def _sqlite_pragmas(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.close()


Result = TypeVar("Result")


class ConflictError(RuntimeError):
    """Another writer kept changing the same rows; nothing of this change was stored."""


def commit_retrying(session: Session, work: Callable[[], Result], what: str, tries: int = 3) -> Result:
    """Run `work` and commit; when a concurrent writer got there first (a unique row it made meanwhile, or SQLite's
    lock held past its timeout), roll back and run `work` again on what that writer committed, so neither change is
    lost. Rolls back whatever the session held before. ConflictError once `tries` are used up."""
    attempt = 1
    while True:
        try:
            result = work()
            session.commit()
            return result
        except (IntegrityError, OperationalError) as error:
            session.rollback()
            if isinstance(error, OperationalError) and "locked" not in str(error.orig):
                raise
            if attempt >= tries:
                raise ConflictError(
                    f"{what}: other changes to the same data kept coming first ({tries} tries); nothing was stored, "
                    "try again"
                ) from None
            attempt += 1


@contextmanager
def session_scope(engine: Engine) -> Iterator[Session]:
    """One unit of work: committed when the block ends, rolled back when it raises."""
    with Session(engine, expire_on_commit=False) as session:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise
