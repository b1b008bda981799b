"""Imports racing each other and files planted beside their output, on SQLite and PostgreSQL: two imports into one
new project at the same moment both land (the second is redone on top of the first's version, nothing lost); a
conflict that never clears ends in "try again", not a traceback; and a link planted where the rejects file's
temporary copy used to be written is never written through."""

import json
import threading
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session
from typer.testing import CliRunner

from bot.cli import app
from engine.data import pipeline
from engine.data.pipeline import import_file
from engine.data.versions import load_entries, resolve_version
from engine.loop.projects import get_or_create_project
from storage.models import Project

runner = CliRunner()


def conversations(path: Path, topic: str, n: int = 3) -> Path:
    lines = [
        json.dumps({"messages": [{"role": "user", "content": f"{topic} {i}?"}, {"role": "assistant", "content": "ok"}]})
        for i in range(n)
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_two_imports_racing_into_one_new_project_both_land(
    db_engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Both imports look for the project before either makes it: the race the issue reproduced, every time.
    both_looked = threading.Barrier(2, timeout=30)
    first_call = threading.local()

    def in_step(session: Session, name: str) -> Project:
        if not getattr(first_call, "done", False):
            first_call.done = True
            both_looked.wait()
        return get_or_create_project(session, name)

    monkeypatch.setattr(pipeline, "get_or_create_project", in_step)
    files = [conversations(tmp_path / f"{topic}.jsonl", topic) for topic in ("退货", "物流")]
    outcomes: list[object] = []

    def import_one(path: Path) -> None:
        with Session(db_engine, expire_on_commit=False) as session:
            try:
                outcomes.append(import_file(session, "shop", path))
            except Exception as error:  # the test reports it below instead of losing it in a thread
                outcomes.append(error)

    threads = [threading.Thread(target=import_one, args=(path,)) for path in files]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not [o for o in outcomes if isinstance(o, Exception)], outcomes
    with Session(db_engine) as session:
        latest = resolve_version(session, "shop")
        questions = sorted(e.sample.messages[0].content for e in load_entries(session, latest))
    assert latest.number == 2 and latest.sample_count == 6
    assert questions == sorted(f"{topic} {i}?" for topic in ("退货", "物流") for i in range(3))


def test_a_conflict_that_never_clears_says_try_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from sqlalchemy.exc import IntegrityError

    def always_beaten(*args: object, **kwargs: object) -> None:
        raise IntegrityError("INSERT INTO dataset_versions", {}, Exception("UNIQUE constraint failed"))

    monkeypatch.setattr(pipeline, "save_version", always_beaten)
    result = runner.invoke(app, ["data", "import", str(conversations(tmp_path / "a.jsonl", "q")), "-p", "shop"])
    assert result.exit_code == 1, result.output
    assert "nothing was stored, try again" in " ".join(result.output.split())
    assert "Traceback" not in result.output


def test_the_rejects_file_is_not_written_through_a_planted_link(tmp_path: Path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("precious", encoding="utf-8")
    data = conversations(tmp_path / "mixed.jsonl", "q")
    data.write_text(data.read_text(encoding="utf-8") + "{not json\n", encoding="utf-8")
    rejects = tmp_path / "mixed.rejects.jsonl"
    (tmp_path / f".{rejects.name}.tmp").symlink_to(victim)  # the name the rejects used to be written through
    options = ["--skip-invalid", "--rejects", str(rejects)]
    result = runner.invoke(app, ["data", "import", str(data), "-p", "shop", *options])
    assert result.exit_code == 0, result.output
    assert victim.read_text(encoding="utf-8") == "precious"
    assert "bad_json" in rejects.read_text(encoding="utf-8") and not rejects.is_symlink()
