"""Project names are slugs, checked when a project is made: a name that climbs out of the artifact store, nests
folders, carries control bytes, runs to 300 characters, or would shadow another project's version name (`shop-v1`)
or a base model at the gateway is refused with the rule, in the engine and through `tuneloop`; a database made before
the rule keeps working and names its offenders. User text in `tuneloop`'s output is never read as rich markup."""

import json
import logging
from pathlib import Path

import pytest
from sqlmodel import Session, select
from typer.testing import CliRunner

from bot.cli import app
from engine.database import get_engine
from engine.loop.projects import ProjectNameError, configure_project, get_or_create_project, get_project
from storage.db import session_scope
from storage.migrate import upgrade
from storage.models import Project

runner = CliRunner()
REFUSED = ["../x", "a/b", "shop\x00", "shop\nx", "x" * 300, "shop-v1", "Shop", "", "客服", "a b"]


def record() -> str:
    return json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]})


@pytest.mark.parametrize("name", REFUSED)
def test_a_name_that_is_not_a_slug_is_refused_with_the_rule(name: str) -> None:
    with session_scope(get_engine()) as session, pytest.raises(ProjectNameError) as raised:
        get_or_create_project(session, name)
    assert "1 to 64 lowercase letters, digits or '_'" in str(raised.value)
    assert "\x00" not in str(raised.value) and "\n" not in str(raised.value)  # shown escaped, as repr writes it
    assert len(str(raised.value)) < 300  # a long name is cut short in the message
    with Session(get_engine()) as session:
        assert session.exec(select(Project)).all() == []


def test_slugs_are_accepted_and_a_base_models_name_is_not() -> None:
    with session_scope(get_engine()) as session:
        for name in ("shop", "customer_service", "v2", "a" * 64):
            assert get_or_create_project(session, name).name == name
        configure_project(session, "shop", base_model="qwen2_7b")
    with session_scope(get_engine()) as session, pytest.raises(ProjectNameError, match="base model's name"):
        get_or_create_project(session, "qwen2_7b")


def test_the_cli_refuses_a_bad_name_on_every_way_a_project_is_made(tmp_path: Path) -> None:
    data = tmp_path / "data.jsonl"
    data.write_text(record() + "\n", encoding="utf-8")
    for argv in (["project", "set", "../x"], ["data", "import", str(data), "--project", "shop-v1"]):
        result = runner.invoke(app, argv)
        assert result.exit_code == 2, result.output
        assert "cannot name a project" in result.output and "lowercase letters" in result.output
        assert "Traceback" not in result.output
    with Session(get_engine()) as session:
        assert session.exec(select(Project)).all() == []


def test_an_old_database_keeps_its_bad_names_working_and_names_them(
    tuneloop_home: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from storage.db import make_engine

    url = f"sqlite:///{tuneloop_home / 'tuneloop.db'}"
    tuneloop_home.mkdir(parents=True, exist_ok=True)
    upgrade(url)
    old = make_engine(url)
    with Session(old) as session:  # made before the rule existed
        session.add_all([Project(name="shop-v1"), Project(name="shop")])
        session.commit()
    old.dispose()
    with caplog.at_level(logging.WARNING, logger="engine.loop.projects"):
        engine = get_engine()
    assert "'shop-v1'" in caplog.text and "'shop'" not in caplog.text.replace("'shop-v1'", "")
    with session_scope(engine) as session:
        assert get_or_create_project(session, "shop-v1").name == "shop-v1"  # still found, not refused
        assert get_project(session, "shop-v1").id is not None


@pytest.mark.parametrize(
    "argv",
    [
        ["runs", "--project", "[/]"],
        ["data", "versions", "--project", "[/]"],
        ["data", "import", "{data}", "--project", "[/]"],
        ["project", "set", "[bold]x[/bold]"],
    ],
)
def test_markup_in_names_is_printed_as_typed(argv: list[str], tmp_path: Path) -> None:
    data = tmp_path / "data.jsonl"
    data.write_text(record() + "\n", encoding="utf-8")
    result = runner.invoke(app, [part.replace("{data}", str(data)) for part in argv])
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.exit_code in (0, 1, 2), result.output
    name = argv[argv.index("--project") + 1] if "--project" in argv else argv[-1]
    assert name in result.output  # shown as typed, not taken for styling
