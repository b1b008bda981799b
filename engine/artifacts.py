"""The engine's artifact store, as the settings name it."""

from engine.settings import Settings, get_settings
from storage.artifacts import LocalArtifactStore


def get_artifact_store(settings: Settings | None = None) -> LocalArtifactStore:
    """The local store today. Training writes through it into real folders (the trainer needs paths), so
    an S3-compatible store will stage runs locally and upload; readers only need the ArtifactStore protocol."""
    return LocalArtifactStore((settings or get_settings()).resolved_artifact_root)
