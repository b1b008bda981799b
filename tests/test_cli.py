"""The data half of the loop through the `tuneloop` command, on SQLite and PostgreSQL."""

import hashlib
import json
from pathlib import Path

import pytest
from sqlmodel import select
from typer.testing import CliRunner

from bot.cli import app
from engine.data.dedup import jaccard
from engine.data.formats import load_file
from engine.settings import get_settings
from storage.db import make_engine, session_scope
from storage.models import Artifact

runner = CliRunner()

QUESTIONS = [
    (
        "我买的{p}有质量问题,可以退货吗?",
        "可以的。{p}签收后7天内支持无理由退货,质量问题由我们承担运费,请在订单页提交退货申请。",
        "退货",
    ),
    (
        "{p}的快递三天了还没到,帮我查一下物流",
        "已为您查询:{p}目前在转运中心,预计明天送达,如有延误我们会短信通知您。",
        "物流",
    ),
    (
        "{p}尺码不合适,能换大一号吗?",
        "可以换货。请在订单页选择换货并填写新尺码,{p}寄回后48小时内为您发出新商品。",
        "换货",
    ),
    (
        "How do I get an invoice for my {p} order?",
        "Open the order for your {p}, choose Invoice, enter the company title and tax number; "
        "the e-invoice arrives by email within 24 hours.",
        "发票",
    ),
]
PRODUCTS = ["蓝牙耳机", "羽绒服", "电饭煲", "跑步鞋", "机械键盘", "保温杯", "台灯", "行李箱", "智能手表", "空气炸锅"]


def conversation(question: str, answer: str, tag: str) -> dict:
    turns = [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]
    return {"conversations": turns, "tags": [tag]}


def write_dataset(path: Path, extra: list[dict] | None = None) -> Path:
    records = [
        {
            "conversations": [{"from": "human", "value": q.format(p=p)}, {"from": "gpt", "value": a.format(p=p)}],
            "tags": [tag],
        }
        for p in PRODUCTS
        for q, a, tag in QUESTIONS
    ]
    records += extra or []
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in records) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def tuneloop(db_url: str, monkeypatch: pytest.MonkeyPatch):
    """Runs `tuneloop ...` against a fresh, migrated database; returns (exit code, output)."""
    monkeypatch.setenv("TUNELOOP_DATABASE_URL", db_url)
    from engine.settings import get_settings

    get_settings.cache_clear()
    upgraded = runner.invoke(app, ["db", "upgrade"])
    assert upgraded.exit_code == 0, upgraded.output

    def invoke(*args: str) -> tuple[int, str]:
        result = runner.invoke(app, [str(a) for a in args])
        return result.exit_code, result.output

    return invoke


def test_import_twice_yields_the_same_version(tuneloop, tmp_path: Path) -> None:
    data = write_dataset(tmp_path / "cs.jsonl")
    code, out = tuneloop("data", "import", data, "--project", "cs")
    assert code == 0, out
    assert "cs/main v1" in out and "40 new samples" in out
    code, out = tuneloop("data", "import", data, "--project", "cs")
    assert code == 0, out
    assert "nothing new" in out and "v1" in out
    code, out = tuneloop("data", "versions", "--project", "cs")
    assert "v1" in out and "v2" not in out


def test_invalid_file_stores_nothing_and_names_line_and_field(tuneloop, tmp_path: Path) -> None:
    bad = {"conversations": [{"from": "human", "value": "发票怎么开?"}, {"from": "gpt", "value": 42}]}
    data = write_dataset(tmp_path / "bad.jsonl", extra=[bad])
    code, out = tuneloop("data", "import", data, "--project", "cs")
    assert code == 2
    assert "bad.jsonl" in out and "line 41" in out and "conversations[1].value" in out
    assert "Traceback" not in out
    code, out = tuneloop("data", "versions", "--project", "cs")
    assert code != 0 and "no project named 'cs'" in out


def test_skip_invalid_keeps_the_valid_and_writes_rejects(tuneloop, tmp_path: Path) -> None:
    data = write_dataset(tmp_path / "bad.jsonl", extra=[{"conversations": []}])
    rejects = tmp_path / "rejects.jsonl"
    code, out = tuneloop("data", "import", data, "--project", "cs", "--skip-invalid", "--rejects", rejects)
    assert code == 0, out
    assert "40 new samples" in out and "40 valid, 1 refused" in out and f"file: {rejects}" in " ".join(out.split())
    reject = json.loads(rejects.read_text(encoding="utf-8").splitlines()[0])
    assert reject["line"] == 41 and reject["problem"]


def test_filter_split_export_report(tuneloop, tmp_path: Path, db_url: str) -> None:
    phone = {
        "conversations": [
            {"from": "human", "value": "我的手机号13812345678,帮我改地址"},
            {"from": "gpt", "value": "好的,已为您登记新的收货地址,请留意短信通知。"},
        ],
        "tags": ["物流"],
    }
    repeat = {
        "conversations": [
            {"from": "human", "value": "在吗?我想问一下售后政策"},
            {"from": "gpt", "value": "好的。好的。好的。好的。好的。"},
        ],
        "tags": ["退货"],
    }
    copy = conversation(QUESTIONS[0][0].format(p="台灯"), QUESTIONS[0][1].format(p="台灯"), "投诉")
    data = write_dataset(tmp_path / "cs.jsonl", extra=[phone, repeat, copy])
    assert tuneloop("data", "import", data, "--project", "cs")[0] == 0

    code, out = tuneloop("data", "filter", "--project", "cs")
    assert code == 0, out
    assert "cs/main v2" in out
    code, out = tuneloop("data", "filter", "--project", "cs")
    assert "No change: cs/main v2 already is the result" in out, "filtering a filtered version changes nothing"
    code, out = tuneloop("data", "show", "--project", "cs", "--rule", "exact_duplicate")
    assert code == 0 and "#43" in out and "sample #25" in out  # the copy names its original
    code, out = tuneloop("data", "show", "--project", "cs", "--sample", "99")
    assert code == 2 and "samples 1 to 43" in out

    code, out = tuneloop("data", "split", "--project", "cs", "--test-size", "8", "--seed", "7")
    assert code == 0, out
    code, out = tuneloop(
        "data", "export", "--project", "cs", "--format", "openai", "--split", "test", "--out", tmp_path / "test"
    )
    assert code == 0, out
    code, out = tuneloop(
        "data", "export", "--project", "cs", "--format", "sharegpt", "--split", "train", "--out", tmp_path / "train"
    )
    assert code == 0, out
    test = [s for _, s in load_file(next((tmp_path / "test").iterdir())).samples]
    train = [s for _, s in load_file(next((tmp_path / "train").iterdir())).samples]
    assert 0 < len(test) <= 8
    assert not any(jaccard(t.prompt_text(), r.prompt_text()) >= 0.9 for t in test for r in train)
    assert all("13812345678" not in s.full_text() for s in train + test)

    md = tmp_path / "report.md"
    png = tmp_path / "lengths.png"
    code, out = tuneloop("data", "report", "--project", "cs", "--markdown", md, "--histogram", png)
    assert code == 0, out
    report = md.read_text(encoding="utf-8")
    assert "43 → 41" in report  # the duplicate and the repeated answer are gone; the phone is masked
    assert "exact_duplicate" in report and "repetitive_answer" in report
    assert png.read_bytes().startswith(b"\x89PNG")
    # The report is also kept in the artifact store, its content hash recorded, for the chat thread.
    with session_scope(make_engine(db_url)) as session:
        artifacts = {a.key: a for a in session.exec(select(Artifact)).all()}
    stored = artifacts["projects/cs/datasets/main/v3/report.md"]
    path = get_settings().resolved_artifact_root / stored.key
    assert path.read_text(encoding="utf-8") == report
    assert stored.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert "projects/cs/datasets/main/v3/lengths.png" in artifacts


def test_unknown_project_and_format_are_plain_errors(tuneloop, tmp_path: Path) -> None:
    code, out = tuneloop("data", "report", "--project", "nope")
    assert code == 1 and "no project named 'nope'" in out and "Traceback" not in out
    data = write_dataset(tmp_path / "cs.jsonl")
    code, out = tuneloop("data", "import", data, "--project", "cs", "--format", "parquet")
    assert code == 2 and "unknown format 'parquet'" in out


MALFORMED = {
    "truncated_json": ('[{"instruction": "怎么退货", "output": "在订单页申', "json"),
    "wrong_type": ('{"instruction": "怎么退货", "output": ["在订单页申请"]}\n', "jsonl"),
    "missing_field": ('{"instruction": "怎么退货"}\n', "jsonl"),
    "empty_conversation": ('{"conversations": []}\n', "jsonl"),
    "mixed_formats": (
        '{"instruction": "怎么退货", "output": "在订单页申请"}\n'
        '{"instruction": "怎么换货", "output": "在订单页选择换货"}\n'
        '{"conversations": [{"from": "human", "value": "发票"}, {"from": "gpt", "value": "可以开"}]}\n',
        "jsonl",
    ),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_files_are_refused_whole_with_a_plain_error(tuneloop, tmp_path: Path, case: str) -> None:
    text, suffix = MALFORMED[case]
    path = tmp_path / f"{case}.{suffix}"
    path.write_text(text, encoding="utf-8")
    code, out = tuneloop("data", "import", path, "--project", "cs")
    assert code == 2, out
    assert path.name in out and "Traceback" not in out
    assert "no project named 'cs'" in tuneloop("data", "versions", "--project", "cs")[1]


def test_wrong_encoding_and_oversized_files_are_refused(tuneloop, tmp_path: Path) -> None:
    latin = tmp_path / "latin.jsonl"
    latin.write_bytes('{"instruction": "café crème", "output": "très bien"}\n'.encode("latin-1") + b"\xff\xfe\xfa")
    code, out = tuneloop("data", "import", latin, "--project", "cs")
    assert code == 2 and "latin.jsonl" in out and "--encoding" in out
    huge = tmp_path / "huge.jsonl"
    with huge.open("wb") as f:
        f.truncate(10 * 1024**3)  # sparse: 10 GB on paper, nothing on disk, and never read
    code, out = tuneloop("data", "import", huge, "--project", "cs", "--max-bytes", str(1024**3))
    assert code == 2 and "huge.jsonl" in out and "over the limit" in out


def test_gb18030_csv_imports_as_chinese(tuneloop, tmp_path: Path) -> None:
    path = tmp_path / "export.csv"
    path.write_bytes("instruction,output,tags\n怎么开发票?,在订单页点击申请发票即可,发票\n".encode("gb18030"))
    code, out = tuneloop("data", "import", path, "--project", "cs")
    assert code == 0 and "gb18030" in out, out
    code, out = tuneloop("data", "export", "--project", "cs", "--format", "alpaca", "--out", tmp_path / "out")
    exported = next((tmp_path / "out").iterdir()).read_text(encoding="utf-8")
    assert "怎么开发票?" in exported and "在订单页点击申请发票即可" in exported


def test_filter_settings_from_yaml_drop_instead_of_mask(tuneloop, tmp_path: Path) -> None:
    phone = conversation("我的手机号是13812345678,快递到了吗", "已查询到您的包裹正在派送,今天下午送达。", "物流")
    rude = conversation("你们客服怎么这么慢", "非常抱歉让您久等了,傻瓜才会等这么久,我马上为您处理。", "投诉")
    data = write_dataset(tmp_path / "cs.jsonl", extra=[phone, rude])
    assert tuneloop("data", "import", data, "--project", "cs")[0] == 0
    config = tmp_path / "filter.yaml"
    config.write_text("phone: drop\nblocked_words: [傻瓜]\nnear_dup_threshold: 0.95\n", encoding="utf-8")
    code, out = tuneloop("data", "filter", "--project", "cs", "--config", config)
    assert code == 0, out
    assert "42 → 40" in out and "phone" in out and "blocked_word" in out

    config.write_text("phone: drop\nnear_dup_treshold: 0.8\n", encoding="utf-8")
    code, out = tuneloop("data", "filter", "--project", "cs", "--config", config)
    assert code == 2 and "filter.yaml" in out and "near_dup_treshold" in out
    assert "did you mean 'near_dup_threshold'" in out
