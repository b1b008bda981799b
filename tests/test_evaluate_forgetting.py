"""The general-ability probe: the shipped probe set is sound, answers are checked on tokens in Chinese and
English alike, a bad probe file says where it is wrong, and the report's arithmetic is right."""

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from engine.evaluate import forgetting
from engine.evaluate.forgetting import (
    Probe,
    ProbeFileError,
    forgetting_probe,
    load_probes,
    passes,
)
from engine.evaluate.generate import LoadedModels, load_models
from engine.evaluate.results import Answer, GenerationSettings
from engine.evaluate.text import language_of
from engine.train.tiny import build_tiny_model
from tests.serving import make_adapter

WRONG = ["我不知道。", "I don't know.", "", "Banana"]


def test_the_shipped_probes_load_and_each_accepts_its_own_answers() -> None:
    probes = load_probes()
    assert len(probes) >= 30
    assert len({p.id for p in probes}) == len(probes)
    languages = [p.language for p in probes]
    assert set(languages) == {"zh", "en"} and abs(languages.count("zh") - languages.count("en")) <= 2
    for probe in probes:
        assert probe.language == language_of(probe.question), probe.id
        assert all(passes(answer, probe.accepted) for answer in probe.accepted), probe.id
        assert not any(passes(wrong, probe.accepted) for wrong in WRONG), probe.id
        # A model that only repeats the question must not pass.
        assert not passes(probe.question, probe.accepted), probe.id


def test_passes_in_chinese_without_spaces() -> None:
    assert passes("答案是十二。", ["12", "十二"])
    assert passes("7加5等于１２", ["12", "十二"])  # full-width digits
    assert passes("北京是中国的首都", ["北京"])
    assert not passes("答案是二十二。", ["12", "十二"])  # 十二 runs on from 二
    assert not passes("答案是120", ["12", "十二"])
    assert not passes("上海", ["北京"])


def test_passes_in_english_ignores_case_and_punctuation() -> None:
    assert passes("The capital of Italy is ROME!", ["Rome"])
    assert passes("It's forty-two.", ["42", "forty-two"])
    assert passes("Plants absorb CO₂.", ["carbon dioxide", "CO2"])
    assert passes("about 12kg", ["12"])
    assert not passes("a category", ["cat"])
    assert not passes("The answer is 120.", ["12"])


def write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def record(**fields) -> str:
    return json.dumps({"id": "p1", "language": "en", "question": "2+2?", "accepted": ["4"]} | fields)


@pytest.mark.parametrize(
    ("bad_line", "expected"),
    [
        ("{not json", "line 3: not valid JSON"),
        ('["a list"]', "line 3: expected a JSON object"),
        (record(id="p9", question=""), "line 3: field 'question'"),
        (record(id="p9", language=None), "line 3: field 'language'"),
        (record(id="p9", accepted=[]), "line 3: field 'accepted'"),
        (record(id="p9", accepted=["。"]), "line 3: field 'accepted'"),
        (record(), "line 3: field 'id' repeats 'p1' from line 1"),
    ],
)
def test_a_bad_probe_file_names_line_and_field(tmp_path: Path, bad_line: str, expected: str) -> None:
    path = write(tmp_path / "probes.jsonl", [record(), "", bad_line])
    with pytest.raises(ProbeFileError, match=expected) as error:
        load_probes(path)
    assert str(path) in str(error.value)


def test_an_empty_probe_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ProbeFileError, match="no probes"):
        load_probes(write(tmp_path / "empty.jsonl", [""]))


def ten_probes() -> list[Probe]:
    return [Probe(f"p{i}", "zh" if i < 5 else "en", f"问题{i}", [f"answer{i}"]) for i in range(10)]


def test_report_arithmetic(monkeypatch: pytest.MonkeyPatch) -> None:
    probes = ten_probes()
    passes_tuned = {0, 1, 2, 3, 5, 6, 7}  # lost p4, p8, p9
    calls: list[int] = []

    def fake_generate(model, tokenizer, prompts, settings):
        calls.append(len(prompts))
        tuned = len(calls) == 2
        texts = [f"answer{i}" if not tuned or i in passes_tuned else "不知道" for i in range(len(prompts))]
        return [Answer(text, 1, 0.0, True) for text in texts], None

    monkeypatch.setattr(forgetting, "generate_answers", fake_generate)
    loaded = LoadedModels(SimpleNamespace(), None, "base", Path("adapter"))
    report = forgetting_probe(loaded, probes)
    assert calls == [10, 10]
    assert (report.base_score, report.tuned_score) == (1.0, 0.7)
    assert report.drop == pytest.approx(0.3)
    assert [r.id for r in report.lost] == ["p4", "p8", "p9"] and report.gained == []
    assert report.by_language == {"en": (1.0, 0.6), "zh": (1.0, 0.8)}
    assert report.note == "Probe score 1.00 → 0.70 (drop 30.0%) over 10 general-ability probes."
    assert json.loads(json.dumps(report.to_dict()))["by_language"]["zh"] == [1.0, 0.8]

    # Without an adapter the tuned model is the base model: answered once, nothing lost.
    calls.clear()
    report = forgetting_probe(LoadedModels(SimpleNamespace(), None, "base", None), probes)
    assert calls == [10] and report.drop == 0.0 and report.lost == []
    assert report.note == "Probe score 1.00 → 1.00 (no change) over 10 general-ability probes."


@pytest.fixture(scope="module")
def tiny_with_adapter(tmp_path_factory: pytest.TempPathFactory) -> LoadedModels:
    root = tmp_path_factory.mktemp("forgetting")
    base = build_tiny_model(root / "model")
    return load_models(base, make_adapter(base, root / "adapter"), device="cpu")


def test_probe_on_a_tiny_model_that_knows_nothing(tiny_with_adapter: LoadedModels) -> None:
    probes = [p for p in load_probes() if p.id in ("zh-arith-1", "zh-geo-1", "en-arith-1", "en-geo-1")]
    system = "You are a helpful assistant."
    report = forgetting_probe(tiny_with_adapter, probes, GenerationSettings(max_new_tokens=8), system=system)
    assert [r.id for r in report.probes] == [p.id for p in probes]
    assert set(report.by_language) == {"zh", "en"}
    assert report.base_score == 0.0 and report.drop is None
    assert report.note.startswith("The base model passed none of the 4 probes, so forgetting cannot be measured")
    # the adapter was off for the base answers and on for the tuned ones
    assert any(r.base_answer != r.tuned_answer for r in report.probes)
