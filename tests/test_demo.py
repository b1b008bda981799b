"""`tuneloop demo`: the loop as far as it goes today, on the bundled example, run twice (the data half again)."""

from pathlib import Path

from typer.testing import CliRunner

from bot.cli import app
from engine.data.formats import load_file

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "customer_service.jsonl"


def test_demo_runs_the_data_loop_and_is_repeatable(tmp_path: Path) -> None:
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

    # The loop after the data: trained, evaluated with the metric judge (no endpoint here), deployed, and asked.
    output = first.output
    assert "adapter: " in output and "metric judge" in output
    assert "Gate passed" in output or "Gate failed" in output
    evaluation = Path(next(line for line in output.splitlines() if line.startswith("report: "))[8:].strip())
    assert evaluation.is_file() and evaluation.with_suffix(".html").is_file()
    assert "now serves customer_service-v1" in output
    assert "asked customer_service through the gateway" in output
    answer = next(line for line in output.splitlines() if line.startswith("the deployed adapter answered: "))
    assert len(answer) > len("the deployed adapter answered: ")

    second = runner.invoke(app, ["demo", "--data", str(EXAMPLE), "--out", str(out), "--no-train"])
    assert second.exit_code == 0, second.output
    assert "nothing new" in second.output and "v4" not in second.output
