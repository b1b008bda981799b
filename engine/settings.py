"""tuneloop's settings: `TUNELOOP_*` environment variables, read from `.env` too."""

from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from engine.data.readers import ReadLimits


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TUNELOOP_", env_file=".env", extra="ignore")

    home: Path = Field(default=Path(".tuneloop"), description="Folder for the SQLite database and artifacts.")
    database_url: str | None = Field(default=None, description="SQLAlchemy URL; SQLite under home if unset.")
    redis_url: str = "redis://127.0.0.1:6379/0"
    artifact_root: Path | None = Field(default=None, description="Artifact store folder; home/artifacts if unset.")

    # Limits enforced while reading an upload, so a huge file is refused before it is read.
    max_upload_bytes: int = ReadLimits.max_bytes
    max_records: int = ReadLimits.max_records
    max_record_bytes: int = ReadLimits.max_record_bytes

    judge_base_url: str | None = None
    judge_api_key: str | None = None
    synth_base_url: str | None = None
    synth_api_key: str | None = None
    vllm_urls: list[str] = Field(default_factory=list)

    def read_limits(self, max_bytes: int | None = None) -> ReadLimits:
        return ReadLimits(
            max_bytes=max_bytes or self.max_upload_bytes,
            max_records=self.max_records,
            max_record_bytes=self.max_record_bytes,
        )

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.home / 'tuneloop.db').resolve()}"

    @property
    def resolved_artifact_root(self) -> Path:
        return self.artifact_root or self.home / "artifacts"


@lru_cache
def get_settings() -> Settings:
    return Settings()
