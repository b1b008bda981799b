"""The engine's artifact store, as the settings name it (a local folder today; S3-compatible later)."""

from engine.settings import Settings, get_settings
from storage.artifacts import ArtifactStore, LocalArtifactStore


def get_artifact_store(settings: Settings | None = None) -> ArtifactStore:
    return LocalArtifactStore((settings or get_settings()).resolved_artifact_root)
