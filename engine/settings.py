"""tuneloop's settings: `TUNELOOP_*` environment variables, read from `.env` too."""

from functools import lru_cache
from pathlib import Path
from typing import Annotated

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from sqlalchemy.engine import make_url

from engine.data.readers import ReadLimits


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TUNELOOP_", env_file=".env", extra="ignore")

    home: Path = Field(default=Path(".tuneloop"), description="Folder for the SQLite database and artifacts.")
    # URLs may carry passwords: kept out of repr() (and so out of logs and tracebacks).
    database_url: str | None = Field(
        default=None, repr=False, description="SQLAlchemy URL; SQLite under home if unset."
    )
    redis_url: str = Field(default="redis://127.0.0.1:6379/0", repr=False, description="Its password in the URL.")
    artifact_root: Path | None = Field(default=None, description="Artifact store folder; home/artifacts if unset.")

    # Limits enforced while reading an upload, so a huge file is refused before it is read.
    max_upload_bytes: int = ReadLimits.max_bytes
    max_records: int = ReadLimits.max_records
    max_record_bytes: int = ReadLimits.max_record_bytes

    # The LLM judge (engine/evaluate/judge.py): falls back to OPENAI_BASE_URL / OPENAI_API_KEY like
    # synthesis; shares the synth_* retry settings and price table below.
    judge_base_url: str | None = None
    judge_api_key: SecretStr | None = None
    judge_model: str = "gpt-4o"
    judge_concurrency: int = Field(default=8, ge=1)
    synth_base_url: str | None = None
    synth_api_key: SecretStr | None = None
    # Serving (engine/serve/): the vLLM (or `tuneloop serve`) servers every deployment goes to, and the folder
    # they all read adapters from (a shared volume in docker-compose).
    vllm_urls: list[str] = Field(default_factory=list)
    adapters_dir: Path | None = Field(default=None, description="Shared adapters folder; home/adapters if unset.")
    # Bearer keys: api_keys, what clients of `tuneloop serve` and `tuneloop gateway` must send (comma-separated);
    # vllm_api_key, what tuneloop sends to the model servers (vLLM's --api-key).
    api_keys: Annotated[list[SecretStr], NoDecode] = Field(default_factory=list)
    vllm_api_key: SecretStr | None = None
    gateway_base_model: str | None = Field(default=None, description="The base model the gateway lets through.")
    gateway_url: str | None = Field(
        default=None, description="The gateway's OpenAI base URL as clients reach it (https://llm.example.com/v1)."
    )

    # Run workers (engine/work/): arq queues "<queue_prefix>:gpu" and "<queue_prefix>:cpu" on redis_url.
    queue_prefix: str = "tuneloop"
    train_timeout_s: int = Field(default=24 * 3600, gt=0, description="Longest a training job may run.")
    evaluate_timeout_s: int = Field(default=4 * 3600, gt=0, description="Longest generate, judge or report job.")
    prepare_timeout_s: int = Field(default=4 * 3600, gt=0, description="Longest synthesize or prepare job.")
    deploy_timeout_s: int = Field(default=900, gt=0)
    job_completion_wait_s: int = Field(default=600, ge=0, description="On SIGTERM: how long a job may finish.")
    job_max_tries: int = Field(default=3, ge=1, description="arq's tries of one job id; a stopped worker's counts.")
    heartbeat_every_s: float = Field(default=30.0, gt=0)
    silent_after_s: float = Field(default=300.0, gt=0, description="A running job this quiet is re-queued.")
    reconcile_every_s: float = Field(default=60.0, gt=0)
    stage_max_lost: int = Field(default=3, ge=1, description="A stage that lost its worker this often fails the run.")

    # Synthesis (engine/data/synth.py). The platforms' own OPENAI_BASE_URL / OPENAI_API_KEY are the
    # fallback for TUNELOOP_SYNTH_BASE_URL / TUNELOOP_SYNTH_API_KEY.
    openai_base_url: str | None = Field(default=None, validation_alias="OPENAI_BASE_URL")
    openai_api_key: SecretStr | None = Field(default=None, validation_alias="OPENAI_API_KEY")
    synth_model: str = "gpt-4o-mini"
    synth_concurrency: int = Field(default=8, ge=1)
    synth_timeout_s: float = Field(default=120.0, gt=0, description="Per request, reply included.")
    synth_max_attempts: int = Field(default=5, ge=1, description="Per batch: the first request and its retries.")
    synth_backoff_base_s: float = Field(default=1.0, ge=0, description="First back-off; doubles per retry.")
    synth_backoff_max_s: float = Field(default=30.0, ge=0)
    synth_retry_after_max_s: float = Field(default=120.0, ge=0, description="Longest Retry-After honoured.")
    # USD per 1M tokens, [prompt, completion]; a model matches its exact name, else the longest prefix.
    synth_prices: dict[str, tuple[float, float]] = Field(
        default_factory=lambda: {
            "gpt-4o-mini": (0.15, 0.60),
            "gpt-4o": (2.50, 10.00),
            "gpt-4.1-mini": (0.40, 1.60),
            "gpt-4.1": (2.00, 8.00),
            "deepseek-chat": (0.27, 1.10),
            "deepseek-reasoner": (0.55, 2.19),
            "qwen-plus": (0.40, 1.20),
            "qwen-max": (1.60, 6.40),
        }
    )

    @field_validator("api_keys", mode="before")
    @classmethod
    def split_keys(cls, value: object) -> object:
        if isinstance(value, str):
            return [key.strip() for key in value.split(",") if key.strip()]
        return value

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
    def resolved_synth_base_url(self) -> str | None:
        return self.synth_base_url or self.openai_base_url

    @property
    def resolved_synth_api_key(self) -> str | None:
        return _secret(self.synth_api_key or self.openai_api_key)

    @property
    def resolved_judge_base_url(self) -> str | None:
        return self.judge_base_url or self.openai_base_url

    @property
    def resolved_judge_api_key(self) -> str | None:
        return _secret(self.judge_api_key or self.openai_api_key)

    @property
    def resolved_artifact_root(self) -> Path:
        return self.artifact_root or self.home / "artifacts"

    @property
    def resolved_adapters_dir(self) -> Path:
        return self.adapters_dir or self.home / "adapters"


def _secret(value: SecretStr | None) -> str | None:
    return value.get_secret_value() if value is not None else None


def shown_url(url: str) -> str:
    """A database or Redis URL as it may be printed or logged: its password replaced by ***."""
    return make_url(url).render_as_string(hide_password=True)


@lru_cache
def get_settings() -> Settings:
    return Settings()
