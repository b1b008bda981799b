"""Small datasets for the training tests: question/answer pairs stored as a dataset version."""

from collections.abc import Sequence

from sqlalchemy.engine import Engine

from engine.data.sample import Sample
from engine.data.versions import Entry, get_or_create_dataset, save_version
from engine.database import get_engine
from engine.loop.projects import get_or_create_project
from storage.db import session_scope

# A shop assistant's answers, short enough for a tiny model to memorise in seconds.
SHOP_SYSTEM = "你是客服小优。"
SHOP_QA = [
    ("你好", "您好，有什么可以帮您？"),
    ("订单什么时候发货？", "订单会在48小时内发货。"),
    ("可以退货吗？", "签收后7天内支持无理由退货。"),
    ("怎么开发票？", "在订单页点击申请发票即可。"),
    ("运费谁出？", "质量问题由本店承担运费。"),
    ("多久到货？", "一般三到五天送达。"),
]


def qa_entries(pairs: Sequence[tuple[str, str]], split: str = "train", system: str | None = None) -> list[Entry]:
    head = [{"role": "system", "content": system}] if system else []
    return [
        Entry(
            Sample(messages=[*head, {"role": "user", "content": q}, {"role": "assistant", "content": a}]), split=split
        )
        for q, a in pairs
    ]


def add_dataset(entries: list[Entry], project: str = "shop", engine: Engine | None = None) -> int:
    """Store `entries` as a version of the project's dataset; returns the version number."""
    with session_scope(engine or get_engine()) as session:
        dataset = get_or_create_dataset(session, get_or_create_project(session, project))
        return save_version(session, dataset, entries, kind="upload", summary="test", parent=None).version.number
