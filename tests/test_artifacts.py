"""The local artifact store and the `artifacts` rows that record what it holds."""

import hashlib
import os
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import select

from storage.artifacts import (
    ArtifactStore,
    InvalidKeyError,
    LocalArtifactStore,
    StoredArtifact,
    project_key,
    record_artifact,
    run_key,
    sha256_file,
    validate_key,
)
from storage.db import session_scope
from storage.models import Artifact, Project, Run


@pytest.fixture
def store(tmp_path: Path) -> LocalArtifactStore:
    return LocalArtifactStore(tmp_path / "artifacts")


def test_local_store_satisfies_the_protocol(store: LocalArtifactStore) -> None:
    assert isinstance(store, ArtifactStore)  # checks the methods exist; a type checker checks the rest


def test_keys() -> None:
    assert project_key("customer_service") == "projects/customer_service"
    assert project_key("cs", "datasets", "v1.jsonl") == "projects/cs/datasets/v1.jsonl"
    assert run_key("cs", 7, "report.html") == "projects/cs/runs/7/report.html"
    assert run_key("cs", 7, "checkpoints/step-100/adapter.safetensors").endswith("step-100/adapter.safetensors")
    for bad in ("..", "a/b", ""):
        with pytest.raises(InvalidKeyError):
            project_key(bad, "x")
    with pytest.raises(InvalidKeyError):
        run_key("cs", "../8", "x")
    with pytest.raises(InvalidKeyError):
        run_key("cs", 7, "..", "..", "..", "etc")


@pytest.mark.parametrize(
    "key",
    ["", "/etc/passwd", "../x", "a/../../x", "a/./b", "a//b", "a/", "C:/x", "a\\..\\x", "a/.tmp-x", "a\x00b"],
)
def test_unsafe_keys_are_refused(store: LocalArtifactStore, key: str) -> None:
    with pytest.raises(InvalidKeyError):
        validate_key(key)
    with pytest.raises(InvalidKeyError):
        store.put_bytes(key, b"x")
    assert not any(store.root.parent.rglob("x"))


def test_symlink_out_of_root_is_refused(store: LocalArtifactStore, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    store.root.mkdir(parents=True)
    (store.root / "link").symlink_to(outside, target_is_directory=True)
    with pytest.raises(InvalidKeyError):
        store.put_bytes("link/escape.txt", b"x")
    assert not (outside / "escape.txt").exists()


def test_put_bytes_and_read_back(store: LocalArtifactStore) -> None:
    data = "评测报告：微调后胜率 72%".encode()
    key = run_key("cs", 1, "report.md")
    stored = store.put_bytes(key, data)
    assert stored == StoredArtifact(key=key, sha256=hashlib.sha256(data).hexdigest(), size_bytes=len(data))
    assert store.exists(key)
    with store.open(key) as file:
        assert file.read() == data
    path = store.get_path(key)
    assert path == store.root / "projects/cs/runs/1/report.md"
    assert sha256_file(path) == stored.sha256
    assert store.url(key) == path.as_uri()


def test_put_file_streams_large_file(store: LocalArtifactStore, tmp_path: Path) -> None:
    src = tmp_path / "adapter.safetensors"
    data = os.urandom(3 * 1024 * 1024 + 17)  # several chunks and a ragged end
    src.write_bytes(data)
    stored = store.put_file(run_key("cs", 2, "adapter", "adapter.safetensors"), src)
    assert stored.size_bytes == len(data)
    assert stored.sha256 == hashlib.sha256(data).hexdigest()
    assert store.get_path(stored.key).read_bytes() == data


def test_overwrite_is_atomic_and_leaves_no_temporary_files(store: LocalArtifactStore) -> None:
    key = project_key("cs", "data.jsonl")
    store.put_bytes(key, b"old")
    store.put_bytes(key, b"new")
    assert store.get_path(key).read_bytes() == b"new"
    assert [p.name for p in store.get_path(key).parent.iterdir()] == ["data.jsonl"]


def test_failed_write_keeps_the_old_file(store: LocalArtifactStore, tmp_path: Path) -> None:
    key = project_key("cs", "data.jsonl")
    store.put_bytes(key, b"old")
    with pytest.raises(FileNotFoundError):
        store.put_file(key, tmp_path / "missing")

    def broken():  # a stream that fails half way
        yield b"partial"
        raise OSError("disk went away")

    with pytest.raises(OSError, match="disk went away"):
        store._put_chunks(key, broken())
    assert store.get_path(key).read_bytes() == b"old"
    assert store.list() == [key]
    assert [p.name for p in store.get_path(key).parent.iterdir()] == ["data.jsonl"]


def test_list_exists_delete(store: LocalArtifactStore) -> None:
    assert store.list() == []
    assert store.list("projects/cs/") == []
    keys = [run_key("cs", 1, "a.txt"), run_key("cs", 1, "sub/b.txt"), run_key("cs", 10, "c.txt"), "other/d.txt"]
    for key in keys:
        store.put_bytes(key, b"x")
    (store.root / "projects/cs/runs/1/.tmp-leftover").write_bytes(b"half")  # a crashed writer
    assert store.list() == sorted(keys)
    assert store.list("projects/cs/runs/1/") == [run_key("cs", 1, "a.txt"), run_key("cs", 1, "sub/b.txt")]
    assert store.list("projects/cs/runs/1") == sorted(keys[:3])  # a plain string prefix, as on S3
    assert store.list("nothing/here/") == []
    store.delete(keys[0])
    assert not store.exists(keys[0])
    store.delete(keys[0])  # deleting twice is fine
    with pytest.raises(FileNotFoundError):
        store.get_path(keys[0])
    with pytest.raises(FileNotFoundError):
        store.open(keys[0])


def test_record_artifact_upserts(db_engine: Engine, store: LocalArtifactStore) -> None:
    with session_scope(db_engine) as session:
        project = Project(name="cs")
        session.add(project)
        session.flush()
        run = Run(project_id=project.id)
        session.add(run)
        session.flush()
        project_id, run_id = project.id, run.id

    key = run_key("cs", run_id, "report.html")
    first = store.put_bytes(key, b"<h1>v1</h1>")
    with session_scope(db_engine) as session:
        row = record_artifact(session, first, project_id=project_id, run_id=run_id, kind="report")
        assert row.id is not None

    second = store.put_bytes(key, b"<h1>v2, longer</h1>")
    with session_scope(db_engine) as session:
        record_artifact(session, second)  # project, run and kind are kept

    with session_scope(db_engine) as session:
        rows = session.exec(select(Artifact)).all()
    assert len(rows) == 1
    (row,) = rows
    assert (row.key, row.sha256, row.size_bytes) == (key, second.sha256, second.size_bytes)
    assert (row.project_id, row.run_id, row.kind) == (project_id, run_id, "report")
    assert row.sha256 == sha256_file(store.get_path(key))
