"""Secrets stay out of what the product prints: API keys and the passwords in database and Redis URLs appear in no
repr of the settings, and a PostgreSQL database behind the latest schema is named without its password, in the
engine's error and in `tuneloop`'s output."""

import pytest
from sqlalchemy.engine import Engine, make_url
from typer.testing import CliRunner

from bot.cli import app
from engine.database import DatabaseNotReadyError, get_engine
from engine.settings import Settings, get_settings
from tests.conftest import fresh_postgres_database


def test_the_settings_repr_shows_no_key_and_no_password(monkeypatch: pytest.MonkeyPatch) -> None:
    secrets = {
        "OPENAI_API_KEY": "sk-openai-secret",
        "TUNELOOP_SYNTH_API_KEY": "sk-synth-secret",
        "TUNELOOP_JUDGE_API_KEY": "sk-judge-secret",
        "TUNELOOP_DATABASE_URL": "postgresql+psycopg://tuneloop:db-secret@postgres:5432/tuneloop",
        "TUNELOOP_REDIS_URL": "redis://:redis-secret@redis:6379/0",
    }
    for name, value in secrets.items():
        monkeypatch.setenv(name, value)
    settings = Settings()
    shown = f"{settings!r} {settings} {settings.model_dump()}"
    for secret in ("sk-openai-secret", "sk-synth-secret", "sk-judge-secret", "db-secret", "redis-secret"):
        assert secret not in repr(settings) and secret not in str(settings), secret
    assert "sk-openai-secret" not in shown and "sk-judge-secret" not in shown  # dumped, keys stay SecretStr
    # Whoever needs a key still gets it.
    assert settings.resolved_synth_api_key == "sk-synth-secret"
    assert settings.resolved_judge_api_key == "sk-judge-secret"
    monkeypatch.delenv("TUNELOOP_JUDGE_API_KEY")
    assert Settings().resolved_judge_api_key == "sk-openai-secret"


@pytest.mark.postgres
def test_a_database_behind_the_schema_is_named_without_its_password(
    postgres_admin: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    with fresh_postgres_database(postgres_admin) as url:  # empty: no migration applied
        with_password = make_url(url).set(password="pg-secret-9").render_as_string(hide_password=False)
        monkeypatch.setenv("TUNELOOP_DATABASE_URL", with_password)  # trust auth: the password is not checked
        get_settings.cache_clear()
        with pytest.raises(DatabaseNotReadyError) as raised:
            get_engine()
        assert "pg-secret-9" not in str(raised.value) and ":***@" in str(raised.value)
        result = CliRunner().invoke(app, ["project", "list"])
        assert result.exit_code == 1, result.output
        assert "not at the latest schema" in result.output and "pg-secret-9" not in result.output
