"""Real domain rows survive a round trip through session_scope on SQLite and PostgreSQL."""

from datetime import UTC, datetime

import pytest
from sqlalchemy import func
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import select

from storage.db import session_scope
from storage.models import Dataset, DatasetVersion, Project, Sample

MESSAGES = [
    {"role": "system", "content": "你是一名耐心的客服助手。"},
    {"role": "user", "content": "我的订单什么时候发货？😊"},
    {"role": "assistant", "content": "您好！订单一般在 24 小时内发货，请耐心等待。"},
]


def _count(engine: Engine, model: type) -> int:
    with session_scope(engine) as session:
        return session.exec(select(func.count()).select_from(model)).one()


def _dataset_version(engine: Engine) -> int:
    with session_scope(engine) as session:
        project = Project(name="customer_service", base_model="Qwen/Qwen2.5-0.5B-Instruct", recipe={"lora_rank": 8})
        session.add(project)
        session.flush()
        dataset = Dataset(project_id=project.id, name="客服对话")
        session.add(dataset)
        session.flush()
        version = DatasetVersion(
            dataset_id=dataset.id, number=1, content_hash="a" * 64, kind="upload", detail={"来源": "上传"}
        )
        session.add(version)
        session.flush()
        return version.id


def test_round_trip_keeps_chinese_text(db_engine: Engine) -> None:
    version_id = _dataset_version(db_engine)
    with session_scope(db_engine) as session:
        for position in range(3):
            session.add(
                Sample(
                    version_id=version_id,
                    position=position,
                    content_hash=f"{position:064d}",
                    messages=MESSAGES,
                    tags=["物流", "发货"],
                    split="train" if position else "test",
                )
            )

    with session_scope(db_engine) as session:
        samples = session.exec(select(Sample).order_by(Sample.position)).all()
        version = session.get(DatasetVersion, version_id)
        project = session.exec(select(Project)).one()
        dataset = session.exec(select(Dataset)).one()
    assert [s.messages for s in samples] == [MESSAGES] * 3
    assert samples[0].messages[1]["content"] == "我的订单什么时候发货？😊"
    assert samples[0].tags == ["物流", "发货"]
    assert [s.split for s in samples] == ["test", "train", "train"]
    assert version is not None and version.detail == {"来源": "上传"}
    assert dataset.name == "客服对话"
    assert project.recipe == {"lora_rank": 8}
    if db_engine.dialect.name == "postgresql":  # timestamptz; SQLite keeps no zone and hands back naive
        assert project.created_at.tzinfo is not None
    assert project.created_at.replace(tzinfo=project.created_at.tzinfo or UTC) <= datetime.now(UTC)


def test_unique_project_name(db_engine: Engine) -> None:
    with session_scope(db_engine) as session:
        session.add(Project(name="customer_service"))
    with pytest.raises(IntegrityError), session_scope(db_engine) as session:
        session.add(Project(name="customer_service"))
    assert _count(db_engine, Project) == 1


def test_unique_dataset_version_number(db_engine: Engine) -> None:
    version_id = _dataset_version(db_engine)
    with session_scope(db_engine) as session:
        dataset_id = session.get(DatasetVersion, version_id).dataset_id
    with pytest.raises(IntegrityError), session_scope(db_engine) as session:
        session.add(DatasetVersion(dataset_id=dataset_id, number=1, content_hash="b" * 64, kind="filter"))
    assert _count(db_engine, DatasetVersion) == 1


def test_foreign_keys_are_enforced(db_engine: Engine) -> None:
    # SQLite only checks them with PRAGMA foreign_keys=ON, which storage.db sets on every connection.
    with pytest.raises(IntegrityError), session_scope(db_engine) as session:
        session.add(Dataset(project_id=12345, name="orphan"))
    assert _count(db_engine, Dataset) == 0


def test_failed_session_scope_writes_nothing(db_engine: Engine) -> None:
    with pytest.raises(RuntimeError, match="boom"), session_scope(db_engine) as session:
        project = Project(name="customer_service")
        session.add(project)
        session.flush()  # the row reached the database inside the transaction...
        assert project.id is not None
        raise RuntimeError("boom")
    assert _count(db_engine, Project) == 0  # ...and was rolled back with it
