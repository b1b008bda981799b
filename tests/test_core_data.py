"""A project's data through the application core, tested directly on SQLite and PostgreSQL: the quality filter and
the split for the requesters only, the report and its files, versions and samples open to all, mistakes (a version
or sample that is not there, misspelt filter settings, an unknown export format) in plain words in English and
Chinese, and what writes files or runs heavy work on tuneloop's machine refused from a chat."""

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine

from bot.core.actions import (
    ConfigureProject,
    ExportData,
    FilterData,
    ImportData,
    ListProjects,
    ListVersions,
    ShowDataReport,
    ShowSamples,
    SplitData,
    Synthesize,
)
from bot.core.errors import UserError
from bot.core.identity import Actor
from bot.core.perform import Core
from engine.data.formats import load_file
from engine.settings import get_settings
from tests.test_cli import conversation, write_dataset
from tests.test_core import refusals

ALICE = Actor("slack", "U0ALICE", "Alice")
BOB = Actor("telegram", "42", "Bob")
OPS = Actor("cli", "ops")


@pytest.fixture
def core(db_engine: Engine) -> Iterator[Core]:
    get_settings.cache_clear()
    yield Core(db_engine, get_settings())
    get_settings.cache_clear()


@pytest.fixture
def shop(core: Core, tmp_path: Path) -> Core:
    """Project shop, whose runs and data Alice and the operator may change, with 40 samples and a duplicate."""
    core.perform(ConfigureProject(project="shop", create=True, requesters=["slack:U0ALICE", "ops"]), OPS)
    copy = conversation("我买的台灯有质量问题,可以退货吗?", "可以的。台灯签收后7天内支持无理由退货。", "退货")
    data = write_dataset(tmp_path / "shop.jsonl", extra=[copy, copy | {"tags": ["投诉"]}])
    core.perform(ImportData(upload=str(data), project="shop"), ALICE)
    return core


def test_the_filter_and_the_split_are_the_requesters(shop: Core, db_engine: Engine) -> None:
    with pytest.raises(UserError, match="Bob may not change its data in shop: its who may start runs are") as refused:
        shop.perform(FilterData(project="shop"), BOB)
    assert refused.value.refused
    assert [(action, actor) for action, actor, _ in refusals(db_engine)] == [("refused.filter_data", "telegram:42")]
    shop.perform(ConfigureProject(project="shop", language="zh"), OPS)
    with pytest.raises(UserError, match="Bob 不能在 shop 中修改数据"):
        shop.perform(SplitData(project="shop"), BOB)

    filtered = shop.perform(FilterData(project="shop"), ALICE)
    assert filtered[0].title == "shop/main v2：quality filter: 42 → 41"
    report = filtered[1]
    assert report.title == "数据报告 · shop/main v2" and "质量过滤：42 → 41 条（97.6%）。" in report.lines
    assert report.tables[0].columns[:2] == ["规则", "条数"] and report.tables[0].rows[0][:2] == ["exact_duplicate", "1"]
    again = shop.perform(FilterData(project="shop"), ALICE)[0].title
    assert again == "没有变化：shop/main v2 已经是这个结果（quality filter: 42 → 41）。"
    split = shop.perform(SplitData(project="shop", test_size=5, seed=3), ALICE)
    assert split[0].title.startswith("shop/main v3：split: train 36, test 5")


def test_reading_is_open_to_all_and_mistakes_are_plain_words(shop: Core) -> None:
    shop.perform(FilterData(project="shop"), ALICE)
    versions = shop.perform(ListVersions(project="shop"), BOB)[0]
    assert versions.title == "shop/main: 2 version(s)"
    assert [row[:2] for row in versions.tables[0].rows] == [["v1", "upload"], ["v2", "filter"]]
    removed = shop.perform(ShowSamples(project="shop", rule="any"), BOB)
    assert removed[0].title == "shop/main v2: 1 sample(s) match"
    assert removed[1].title == "#42  投诉  upload" and removed[1].lines[0].startswith("removed by exact_duplicate")
    projects = shop.perform(ListProjects(), BOB)[0]
    assert [row[0] for row in projects.tables[0].rows] == ["shop"]

    with pytest.raises(UserError, match=r"^shop/main has no version 9; its versions are 1 to 2\.$") as missing:
        shop.perform(ShowDataReport(project="shop", version=9), BOB)
    assert missing.value.not_found
    with pytest.raises(UserError, match=r"shop/main v2 has samples 1 to 42; there is no sample 0, 43\."):
        shop.perform(ShowSamples(project="shop", samples=[1, 0, 43]), BOB)
    misspelt = FilterData(project="shop", settings={"near_dup_treshold": 0.8}, source="filter.yaml")
    with pytest.raises(
        UserError, match=r"filter\.yaml: setting 'near_dup_treshold': .*did you mean 'near_dup_threshold'"
    ):
        shop.perform(misspelt, ALICE)
    with pytest.raises(UserError, match=r"Tokenizer /nowhere/tokenizer\.json does not exist"):
        shop.perform(FilterData(project="shop", tokenizer="/nowhere/tokenizer.json"), ALICE)

    shop.perform(ConfigureProject(project="shop", language="zh"), OPS)
    with pytest.raises(UserError, match=r"^shop/main 没有第 9 版；现有版本为第 1 到第 2 版。$"):
        shop.perform(SplitData(project="shop", version=9), ALICE)
    with pytest.raises(UserError, match="未知的导出格式 'csv'；可选：sharegpt, alpaca, openai, llamafactory。"):
        shop.perform(ExportData(project="shop", format="csv", out="/tmp/never"), OPS)


def test_the_report_comes_with_its_files(shop: Core) -> None:
    report = shop.perform(ShowDataReport(project="shop"), BOB)[0]
    assert report.title == "Data report · shop/main v1" and "In use: 42 samples." in report.lines
    (markdown,) = report.files
    (histogram,) = report.images
    assert "42 → 42" in markdown.read_text(encoding="utf-8")
    assert histogram.read_bytes().startswith(b"\x89PNG")


def test_files_and_synthesis_on_this_machine_are_the_terminals(shop: Core, tmp_path: Path) -> None:
    out = tmp_path / "out"
    refused = "Exporting a dataset to files is an operator's action, on the terminal: tuneloop data export"
    with pytest.raises(UserError, match=refused):
        shop.perform(ExportData(project="shop", format="openai", out=str(out)), ALICE)
    assert not out.exists()
    synth = Synthesize(project="shop", task="退货和换货的客服对话", n=40)
    with pytest.raises(UserError, match=r"Here, 'shop synth \"退货和换货的客服对话\" n=40' does it on the workers\."):
        shop.perform(synth, ALICE)
    shop.perform(ConfigureProject(project="shop", language="zh"), OPS)
    with pytest.raises(UserError, match="在 tuneloop 自身的进程中合成数据只能由运维在终端执行：tuneloop data synth"):
        shop.perform(synth, BOB)
    with pytest.raises(UserError, match="n must be at least 1"):
        shop.perform(Synthesize(project="elsewhere", task="退货", n=0), OPS)
    assert [row[0] for row in shop.perform(ListProjects(), OPS)[0].tables[0].rows] == ["shop"]  # none was made

    exported = shop.perform(ExportData(project="shop", format="openai", out=str(out)), OPS)[0]
    assert exported.title == "已将 shop/main v1 导出为 openai：1 个文件。"
    assert len(load_file(exported.files[0]).samples) == 42
