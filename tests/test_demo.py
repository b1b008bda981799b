"""`tuneloop demo`: the whole loop on the bundled example, then the data half again (nothing new)."""

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from typer.testing import CliRunner

from bot.cli import app
from engine.data.formats import load_file

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "customer_service.jsonl"
DEMO_REDIS_DB = 11  # the demo's own: arq's job ids (1:train:1) are global in a Redis database


@pytest.fixture
def demo_redis(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    url = redis_url.rsplit("/", 1)[0] + f"/{DEMO_REDIS_DB}"
    client = redis.Redis.from_url(url)
    client.flushdb()
    monkeypatch.setenv("TUNELOOP_REDIS_URL", url)
    yield
    client.flushdb()
    client.close()


def test_demo_runs_the_data_loop_and_is_repeatable(tmp_path: Path, demo_redis: None) -> None:
    out = tmp_path / "demo-out"
    runner = CliRunner()
    first = runner.invoke(app, ["demo", "--data", str(EXAMPLE), "--out", str(out)])
    assert first.exit_code == 0, first.output
    report = (out / "report.md").read_text(encoding="utf-8")
    assert "620 → 606" in report
    assert (out / "lengths.png").read_bytes().startswith(b"\x89PNG")

    train = [s for _, s in load_file(next((out / "openai" / "train").glob("*.jsonl"))).samples]
    test = [s for _, s in load_file(next((out / "openai" / "test").glob("*.jsonl"))).samples]
    assert len(train) + len(test) == 606 and 0.08 < len(test) / 606 < 0.12
    for fmt in ("sharegpt", "alpaca", "llamafactory"):
        again = [s for _, s in load_file(next((out / fmt / "train").glob("*_train.json"))).samples]
        assert [s.content_key() for s in again] == [s.content_key() for s in train], fmt
    # The flawed records' secrets never reach an export.
    exported = "".join(s.full_text() for s in train + test)
    assert "13812345678" not in exported and "sk-" not in exported

    # The loop after the data, through the real queue: two iterations trained and evaluated by a worker (the
    # metric judge: no endpoint here), scripted reviews in between, approval, deployment, and a question.
    output = first.output
    for line in ("run 1 is reviewing", "Iteration 2 started as run 2", "run 2 is reviewing", "run 2 is deployed"):
        assert line in output, output
    # The reviews and the retrain went through the core's actions, as a chat face's buttons would.
    assert "3 reviewed: 0 kept, 2 fixed, 1 dropped" in output and "since iteration 1: overall" in output
    assert "Retrain would: improve 2 references, remove 1 sample" in output
    # Every move is announced once and printed once (two relays once sent the approval twice).
    assert output.count("run 2: waiting for review → deploying by ops-manager") == 1, output
    reports = [Path(line.split("report: ", 1)[1]) for line in output.splitlines() if line.startswith("  report: ")]
    assert len(reports) == 2 and all(r.is_file() and r.with_suffix(".md").is_file() for r in reports)
    # Iteration 2 trains on other data than iteration 1: its weak sub-scenarios' samples oversampled (no synthesis
    # endpoint here), as the summary said before Retrain; its report names what changed beside each tag's score.
    assert "no synthesis endpoint: oversampling" in output
    runs = [json.loads((r.parents[2] / "train_report.json").read_text(encoding="utf-8")) for r in reports]
    trained = [run["data"]["train"]["samples"] for run in runs]
    assert trained[1] > trained[0], trained
    moved = [line for line in output.splitlines() if "since iteration 1:" in line and "oversampled ×" in line]
    assert moved, output
    second = reports[1].with_suffix(".md").read_text(encoding="utf-8")
    assert "Compared with iteration 1" in second and "oversampled ×" in second.split("Compared with iteration 1")[1]
    assert "customer_service now serves customer_service-v1 (run 2)" in output
    assert "asked customer_service through the gateway" in output
    answer = next(line for line in output.splitlines() if line.startswith("the deployed adapter answered: "))
    assert len(answer) > len("the deployed adapter answered: ")

    second = runner.invoke(app, ["demo", "--data", str(EXAMPLE), "--out", str(out), "--no-train"])
    assert second.exit_code == 0, second.output
    assert "nothing new" in second.output  # the import adds nothing; filter and split work on the review's version
