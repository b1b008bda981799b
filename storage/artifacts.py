"""The artifact store: files a run produces (checkpoints, adapters, reports, charts, exports).

Keys are relative, '/'-separated paths such as `projects/customer_service/runs/7/report.html`; the
same key works on the local disk today and on an S3-compatible store later, which only has to
satisfy `ArtifactStore`. Every stored file comes back as a `StoredArtifact` carrying its sha256, and
`record_artifact` writes that into the `artifacts` table, the source of truth.
"""

import hashlib
import os
import re
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol, runtime_checkable

from sqlmodel import Session, select

from storage.models import Artifact

_CHUNK = 1024 * 1024
_TMP_PREFIX = ".tmp-"  # files being written; never listed, and no key may look like one


@dataclass(frozen=True)
class StoredArtifact:
    key: str
    sha256: str
    size_bytes: int


@runtime_checkable
class ArtifactStore(Protocol):
    """What the engine needs from an artifact store; `LocalArtifactStore` is the one on disk."""

    def put_file(self, key: str, src_path: Path) -> StoredArtifact: ...

    def put_bytes(self, key: str, data: bytes) -> StoredArtifact: ...

    def open(self, key: str) -> BinaryIO:
        """The artifact for reading; FileNotFoundError if there is none."""
        ...

    def get_path(self, key: str) -> Path:
        """A local file with the artifact's content (a remote store downloads it to a cache)."""
        ...

    def exists(self, key: str) -> bool: ...

    def delete(self, key: str) -> None:
        """Remove the artifact; deleting a missing key is not an error (as on S3)."""
        ...

    def list(self, prefix: str = "") -> list[str]:
        """Every key starting with `prefix` (a plain string prefix, as on S3), sorted."""
        ...

    def url(self, key: str) -> str: ...


class InvalidKeyError(ValueError):
    """A key that is empty, absolute, or would leave the store's root."""


def validate_key(key: str) -> str:
    """`key` itself if it is a safe relative '/'-separated path, else InvalidKeyError."""
    if not isinstance(key, str) or not key:
        raise InvalidKeyError(f"artifact key must be a non-empty string, got {key!r}")
    if "\\" in key or "\x00" in key:
        raise InvalidKeyError(f"artifact key may not contain a backslash or NUL: {key!r}")
    if key.startswith("/") or re.match(r"^[A-Za-z]:", key):
        raise InvalidKeyError(f"artifact key must be relative: {key!r}")
    parts = key.split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise InvalidKeyError(f"artifact key may not have empty, '.' or '..' parts: {key!r}")
    if parts[-1].startswith(_TMP_PREFIX):
        raise InvalidKeyError(f"artifact key may not name a temporary file: {key!r}")
    return key


def _segment(value: object, what: str) -> str:
    text = str(value)
    if not text or "/" in text or text in (".", ".."):
        raise InvalidKeyError(f"{what} must be one path segment, got {value!r}")
    return text


def project_key(project: str, *parts: str) -> str:
    """`projects/<project>/<parts...>`; a part may itself hold '/' (e.g. `reports/index.html`)."""
    return validate_key("/".join(["projects", _segment(project, "project"), *parts]))


def run_key(project: str, run_id: int | str, *parts: str) -> str:
    """`projects/<project>/runs/<run_id>/<parts...>`: everything one run writes lives here."""
    return project_key(project, "runs", _segment(run_id, "run id"), *parts)


class LocalArtifactStore:
    """An `ArtifactStore` on the local file system (or a shared volume) under `root`."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()

    def path(self, key: str) -> Path:
        path = self.root.joinpath(*validate_key(key).split("/"))
        # A symlink inside the root could still point outside it.
        if not path.resolve().is_relative_to(self.root):
            raise InvalidKeyError(f"artifact key leaves the store's root: {key!r}")
        return path

    def put_file(self, key: str, src_path: Path) -> StoredArtifact:
        with open(src_path, "rb") as src:
            return self._put_chunks(key, iter(lambda: src.read(_CHUNK), b""))

    def put_bytes(self, key: str, data: bytes) -> StoredArtifact:
        return self._put_chunks(key, [bytes(data)])

    def _put_chunks(self, key: str, chunks: Iterable[bytes]) -> StoredArtifact:
        # Written to a temporary file beside the target, then renamed: a reader never sees half a
        # file, and a crashed writer leaves only a temporary file that is never listed.
        dest = self.path(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        digest, size = hashlib.sha256(), 0
        fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=_TMP_PREFIX)
        try:
            with os.fdopen(fd, "wb") as tmp:
                for chunk in chunks:
                    digest.update(chunk)
                    size += len(chunk)
                    tmp.write(chunk)
                tmp.flush()
                os.fsync(tmp.fileno())
            os.chmod(tmp_name, 0o644)  # mkstemp makes 0600; vLLM and workers may run as other users
            os.replace(tmp_name, dest)
        except BaseException:
            Path(tmp_name).unlink(missing_ok=True)
            raise
        return StoredArtifact(key=key, sha256=digest.hexdigest(), size_bytes=size)

    def open(self, key: str) -> BinaryIO:
        return open(self.path(key), "rb")

    def get_path(self, key: str) -> Path:
        path = self.path(key)
        if not path.is_file():
            raise FileNotFoundError(f"no artifact {key!r} in {self.root}")
        return path

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    def delete(self, key: str) -> None:
        self.path(key).unlink(missing_ok=True)

    def list(self, prefix: str = "") -> list[str]:
        # Walk only the deepest folder the prefix names, then filter by the plain string prefix.
        folder = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        base = self.path(folder) if folder else self.root
        if not base.is_dir():
            return []
        keys = (
            path.relative_to(self.root).as_posix()
            for path in base.rglob("*")
            if path.is_file() and not path.name.startswith(_TMP_PREFIX)
        )
        return sorted(key for key in keys if key.startswith(prefix))

    def url(self, key: str) -> str:
        return self.path(key).as_uri()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def adapter_digest(folder: Path) -> tuple[str, int]:
    """sha256 over every file's relative path and content, and the total size: one digest for an adapter
    folder, the same wherever the folder was copied."""
    digest, size = hashlib.sha256(), 0
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        data = path.read_bytes()
        digest.update(path.relative_to(folder).as_posix().encode("utf-8") + b"\0")
        digest.update(hashlib.sha256(data).digest())
        size += len(data)
    return digest.hexdigest(), size


def record_artifact(
    session: Session,
    stored: StoredArtifact,
    project_id: int | None = None,
    run_id: int | None = None,
    kind: str | None = None,
) -> Artifact:
    """Insert or update the `Artifact` row for `stored.key`; the row's id is set on return.

    A re-upload under the same key replaces hash and size; project, run and kind keep their old
    values unless given. Keys are run-scoped, so two writers racing on one key is not expected;
    if it happens, the loser's commit fails on the unique key rather than recording a wrong hash.
    """
    artifact = session.exec(select(Artifact).where(Artifact.key == stored.key)).first()
    if artifact is None:
        artifact = Artifact(key=stored.key, sha256=stored.sha256, size_bytes=stored.size_bytes)
    artifact.sha256 = stored.sha256
    artifact.size_bytes = stored.size_bytes
    if project_id is not None:
        artifact.project_id = project_id
    if run_id is not None:
        artifact.run_id = run_id
    if kind is not None:
        artifact.kind = kind
    session.add(artifact)
    session.flush()
    return artifact
