"""The evaluation stage end to end on a trained tiny adapter: offline with the metric judge, with the LLM judge
against the scripted OpenAI-protocol server, the gate blocking a run and saying why, invalid judgements kept raw,
judge trust from people's reviews, `tuneloop eval`, and the three stages (generate, judge, report) run one by one
as separate workers would, their hand-over files, and what each does when it cannot go on or is stopped."""

import difflib
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from openai_server import OpenAIServer, Reply
from sqlmodel import select
from typer.testing import CliRunner

from bot.cli import app
from bot.core.render import report_message
from engine.database import get_engine
from engine.evaluate.judge_prompts import DEFAULT_RUBRIC
from engine.evaluate.results import GenerationSettings
from engine.evaluate.run import (
    EvaluationError,
    EvaluationOptions,
    evaluate_run,
    generate_for_run,
    judge_for_run,
    report_for_run,
)
from engine.events import Event
from engine.loop.reviews import record_review
from engine.loop.runs import StageStopped
from engine.settings import get_settings
from engine.train.recipe import Recipe
from engine.train.sft import train
from engine.train.tiny import build_tiny_model
from storage.artifacts import run_key
from storage.db import session_scope
from storage.models import Adapter, Artifact, Evaluation, Judgement, Project, Review, Run
from tests.training_data import SHOP_QA, SHOP_SYSTEM, add_dataset, qa_entries

TAGS = {"可以退货吗？": "退货", "运费谁出？": "退货", "订单什么时候发货？": "物流", "多久到货？": "物流"}
_DATA = re.compile(r"```data\n(.*?)\n```", re.DOTALL)
# Stability and the forgetting probe are measured once, in the offline test; the others skip them.
QUICK = EvaluationOptions(
    generation=GenerationSettings(max_new_tokens=24), stability_prompts=0, forgetting=False, weakest_k=3
)
FULL = EvaluationOptions(generation=GenerationSettings(max_new_tokens=24), stability_prompts=2, stability_k=2)


@dataclass
class TrainedRun:
    database_url: str
    artifact_root: Path
    run_id: int


def tagged(split: str) -> list:
    entries = qa_entries(SHOP_QA, split, system=SHOP_SYSTEM)
    for entry in entries:
        question = entry.sample.messages[-2].content
        entry.sample.tags = [TAGS.get(question, "问候")]
    return entries


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> TrainedRun:
    """A run whose adapter memorised SHOP_QA; its test split asks the same questions (so the tuned model
    answers like the references and the base does not)."""
    root = tmp_path_factory.mktemp("evaluate-run")
    base = build_tiny_model(root / "model")
    recipe = Recipe.model_validate(
        {
            "model_name_or_path": str(base),
            "num_train_epochs": 30,
            "per_device_train_batch_size": 2,
            "learning_rate": 5e-3,
            "lora_dropout": 0.0,
            "logging_steps": 10,
            "cutoff_len": 128,
        }
    )
    url, artifacts = f"sqlite:///{root / 'tuneloop.db'}", root / "artifacts"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TUNELOOP_DATABASE_URL", url)
        patch.setenv("TUNELOOP_ARTIFACT_ROOT", str(artifacts))
        get_settings.cache_clear()
        try:
            number = add_dataset(tagged("train") + tagged("test"))
            with session_scope(get_engine()) as session:
                outcome = train(session, "shop", number, recipe)
                assert outcome is not None
                run_id = outcome.run.id
        finally:
            get_settings.cache_clear()
    return TrainedRun(url, artifacts, run_id)


@pytest.fixture
def home(trained: TrainedRun, monkeypatch: pytest.MonkeyPatch) -> Iterator[TrainedRun]:
    monkeypatch.setenv("TUNELOOP_DATABASE_URL", trained.database_url)
    monkeypatch.setenv("TUNELOOP_ARTIFACT_ROOT", str(trained.artifact_root))
    for name in ("OPENAI_BASE_URL", "OPENAI_API_KEY", "TUNELOOP_JUDGE_BASE_URL", "TUNELOOP_JUDGE_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    get_settings.cache_clear()
    set_gate({})
    yield trained
    get_settings.cache_clear()


def judge_at(server: OpenAIServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """The LLM judge is `server`, as judge-model."""
    monkeypatch.setenv("TUNELOOP_JUDGE_BASE_URL", server.base_url)
    monkeypatch.setenv("TUNELOOP_JUDGE_API_KEY", "test")
    monkeypatch.setenv("TUNELOOP_JUDGE_MODEL", "judge-model")
    get_settings.cache_clear()


def set_gate(gate: dict) -> None:
    with session_scope(get_engine()) as session:
        project = session.exec(select(Project).where(Project.name == "shop")).one()
        project.settings = {**(project.settings or {}), "gate": gate}
        session.add(project)


def evaluate(run_id: int, options: EvaluationOptions = QUICK) -> tuple[Evaluation, list[Judgement], Any]:
    with session_scope(get_engine()) as session:
        outcome = evaluate_run(session, run_id, options)
        evaluation_id = outcome.evaluation.id
    with session_scope(get_engine()) as session:
        evaluation = session.get(Evaluation, evaluation_id)
        rows = list(session.exec(select(Judgement).where(Judgement.evaluation_id == evaluation_id)).all())
        session.expunge_all()
    return evaluation, sorted(rows, key=lambda r: r.position), outcome


def data_of(body: dict[str, Any]) -> dict[str, Any]:
    match = _DATA.search(body["messages"][-1]["content"])
    assert match
    return json.loads(match.group(1))


def closeness(answer: str, reference: str) -> float:
    return difflib.SequenceMatcher(None, answer, reference).ratio()


def reference_judge(body: dict[str, Any]) -> Reply:
    """A fair judge: the closer an answer is to the reference, the better."""
    data = data_of(body)
    if "answer_A" in data:
        a, b = (closeness(data[k], data["reference"]) for k in ("answer_A", "answer_B"))
        winner = "A" if a > b else "B" if b > a else "tie"
        return Reply.text(json.dumps({"reason": "更接近参考答案", "winner": winner}, ensure_ascii=False))
    score = 5 if closeness(data["answer"], data["reference"]) > 0.8 else 2
    body = {"reason": f"与参考答案相似度{score}", "scores": dict.fromkeys(DEFAULT_RUBRIC, score), "overall": score}
    return Reply.text(json.dumps(body, ensure_ascii=False))


def test_offline_evaluation_uses_the_metric_judge_and_says_so(home: TrainedRun) -> None:
    evaluation, rows, outcome = evaluate(home.run_id, FULL)
    assert evaluation.judge_kind == "metric" and evaluation.invalid_rate is None
    assert len(rows) == len(SHOP_QA) and all(r.valid and r.overall is not None for r in rows)
    assert all(1.0 <= r.overall <= 5.0 for r in rows)
    # The adapter memorised the answers: the metric judge scores it far above the base.
    means = evaluation.scores["judge"]["means"]
    assert means["tuned"]["overall"] > means["base"]["overall"] + 1.0
    assert evaluation.scores["reference"]["tuned"]["chrf"] > evaluation.scores["reference"]["base"]["chrf"]
    assert evaluation.scores["forgetting"]["probes"] and evaluation.scores["stability"]["tuned"]["k"] == 2
    assert evaluation.gate_passed == outcome.decision.passed
    checks = {c["name"]: c["status"] for c in evaluation.scores["gate"]["checks"]}
    assert checks["win_rate"] == "not_measured"  # the metric judge makes no pairwise comparisons
    detail = rows[0].detail
    assert detail["base"]["subject"] == "base" and detail["reference"]["tuned"]["chrf"] >= 0
    assert rows[0].tags and rows[0].sample_id is not None and rows[0].question == SHOP_QA[0][0]

    markdown = Path(outcome.report.markdown).read_text(encoding="utf-8")
    assert "metric judge" in markdown.splitlines()[0].lower()  # the title says how the scores were made
    assert "订单什么时候发货？" in markdown
    html = Path(outcome.report.html).read_text(encoding="utf-8")
    assert "data:image/png;base64," in html and "https://" not in html
    assert set(outcome.report.charts) >= {"scores", "dimensions", "loss"}
    with session_scope(get_engine()) as session:
        run = session.get(Run, home.run_id)
        keys = set(session.exec(select(Artifact.key).where(Artifact.run_id == home.run_id)).all())
        assert run.state == "reviewing"
    assert evaluation.report_path in keys and outcome.report_keys["html"] in keys
    assert (home.artifact_root / evaluation.report_path).is_file()


def test_llm_judge_against_the_scripted_server_passes_the_gate(
    home: TrainedRun, monkeypatch: pytest.MonkeyPatch
) -> None:
    set_gate({"waive": ["forgetting"]})  # the quick evaluation runs no probe: the project says it need not
    with OpenAIServer(responder=reference_judge) as server:
        judge_at(server, monkeypatch)
        evaluation, rows, outcome = evaluate(home.run_id)
        requests = len(server.requests)
    assert requests == 4 * len(SHOP_QA)  # two grades and both pairwise orders per sample
    assert evaluation.judge_kind == "llm" and evaluation.judge_model == "judge-model"
    assert evaluation.prompt_version and all(r.prompt_version == evaluation.prompt_version for r in rows)
    assert evaluation.gate_passed, outcome.decision.reasons
    assert evaluation.scores["judge"]["pairwise"]["win_rate"] >= 0.5 and evaluation.invalid_rate == 0.0
    won = [r for r in rows if r.pairwise == "tuned"]
    assert won and all(len(r.detail["pair"]) == 2 and r.detail["pair"][0]["raw_reply"] for r in won)
    assert all(r.raw_reply and r.reason.startswith("与参考答案相似度") for r in rows)
    markdown = Path(outcome.report.markdown).read_text(encoding="utf-8")
    assert "judge-model" in markdown and "Gate passed" in markdown
    assert "forgetting was not measured (no general-ability probe ran); the project waived this check" in markdown


def test_the_gate_blocks_a_run_that_misses_it_and_says_why(home: TrainedRun, monkeypatch: pytest.MonkeyPatch) -> None:
    set_gate({"min_overall": 4.5, "max_invalid_rate": 0.0})
    harsh = Reply.text(json.dumps({"reason": "太简略", "scores": dict.fromkeys(DEFAULT_RUBRIC, 3), "overall": 3}))
    with OpenAIServer(responder=lambda body: harsh if "answer" in data_of(body) else reference_judge(body)) as server:
        server.script(Reply.text("这不是JSON"))  # one invalid judgement: kept raw, never a score
        monkeypatch.setenv("TUNELOOP_JUDGE_BASE_URL", server.base_url)
        get_settings.cache_clear()
        evaluation, rows, outcome = evaluate(home.run_id)
    assert evaluation.gate_passed is False
    assert any("overall" in reason and "3.0" in reason and "4.5" in reason for reason in evaluation.gate_reasons)
    assert any("invalid" in reason for reason in evaluation.gate_reasons)
    invalid = [r for r in rows if not r.valid]
    assert len(invalid) == 1 and evaluation.invalid_rate == pytest.approx(1 / (4 * len(SHOP_QA)))
    raw = [j["raw_reply"] for r in invalid for j in (r.detail["base"], r.detail["tuned"], *(r.detail["pair"] or []))]
    assert "这不是JSON" in raw
    markdown = Path(outcome.report.markdown).read_text(encoding="utf-8")
    assert all(reason in markdown for reason in evaluation.gate_reasons)
    with session_scope(get_engine()) as session:
        assert session.get(Run, home.run_id).state == "reviewing"  # stops at reviewing, never awaiting approval


def test_reviews_of_judged_samples_show_in_the_next_report(home: TrainedRun) -> None:
    first, rows, _ = evaluate(home.run_id)
    assert first.scores["agreement"]["reviewed"] == 0
    # The adapter memorised its answers: the metric judge accepts them (>= 4), so a person keeping one agrees,
    # and people fixing or dropping two say the judge was too kind.
    best = sorted(rows, key=lambda r: -r.overall)[:3]
    assert all(r.overall >= 4.0 for r in best)
    with session_scope(get_engine()) as session:
        session.add(Review(judgement_id=best[0].id, reviewer="lead", verdict="keep"))
        session.add(Review(judgement_id=best[1].id, reviewer="lead", verdict="fix", corrected_answer="更好的回答"))
        session.add(Review(judgement_id=best[2].id, reviewer="lawyer", verdict="drop"))
    second, _, outcome = evaluate(home.run_id)
    agreement = second.scores["agreement"]
    assert (agreement["reviewed"], agreement["agreed"], agreement["judge_too_kind"]) == (3, 1, 2)
    markdown = Path(outcome.report.markdown).read_text(encoding="utf-8")
    assert "agreed with reviewers on 1 of 3 reviewed samples" in markdown


def test_a_run_that_cannot_be_evaluated_gets_a_plain_error(home: TrainedRun) -> None:
    with session_scope(get_engine()) as session, pytest.raises(EvaluationError, match="no run 999"):
        evaluate_run(session, 999)
    set_gate({"min_overall": 9})
    with session_scope(get_engine()) as session, pytest.raises(EvaluationError, match=r"gate\.min_overall"):
        evaluate_run(session, home.run_id)


def test_tuneloop_eval_prints_the_gate_and_the_report(home: TrainedRun) -> None:
    runner = CliRunner()
    quick = ["--max-new-tokens", "16", "--stability-prompts", "0", "--no-forgetting"]
    result = runner.invoke(app, ["eval", "--run", str(home.run_id), "--judge", "metric", *quick])
    assert result.exit_code == 0, result.output
    assert f"Run {home.run_id} evaluated: gate" in result.output
    # The gate's checks as a table: each check, its threshold, its status in words.
    assert re.search(r"overall .*>= \S+ .*(passed|failed)", result.output), result.output
    assert re.search(r"report: \S+report\.md", result.output) and re.search(r"report: \S+report\.html", result.output)
    refused = runner.invoke(app, ["eval", "--run", str(home.run_id), "--judge", "llm", *quick])
    assert refused.exit_code == 2 and "TUNELOOP_JUDGE_BASE_URL" in refused.output
    missing = runner.invoke(app, ["eval", "999", *quick])
    assert missing.exit_code == 1 and "no run 999" in missing.output


def in_own_session(stage: Callable[..., Any], run_id: int, options: EvaluationOptions = QUICK, **kw: Any) -> Any:
    """One stage in a fresh session, as a worker of its queue runs it."""
    with session_scope(get_engine()) as session:
        return stage(session, run_id, options, **kw)


def handed_over(home: TrainedRun, name: str) -> Path:
    return home.artifact_root / run_key("shop", home.run_id, "evaluation", name)


def run_state(run_id: int) -> tuple[str, str | None]:
    with session_scope(get_engine()) as session:
        run = session.get(Run, run_id)
        return run.state, run.error


def test_the_three_stages_one_by_one_give_what_evaluate_run_gives(home: TrainedRun) -> None:
    whole, whole_rows, _ = evaluate(home.run_id)
    in_own_session(generate_for_run, home.run_id)
    in_own_session(judge_for_run, home.run_id)
    outcome = in_own_session(report_for_run, home.run_id)
    assert handed_over(home, "generated.json").is_file() and handed_over(home, "judged.json").is_file()
    assert "订单什么时候发货？" in handed_over(home, "generated.json").read_text(encoding="utf-8")  # not escaped
    with session_scope(get_engine()) as session:
        rows = session.exec(select(Judgement).where(Judgement.evaluation_id == outcome.evaluation.id)).all()
        staged = [(r.question, r.base_answer, r.tuned_answer, r.overall, r.scores) for r in rows]
        evaluation = session.get(Evaluation, outcome.evaluation.id)
    assert sorted(staged) == sorted(
        (r.question, r.base_answer, r.tuned_answer, r.overall, r.scores) for r in whole_rows
    )
    assert (evaluation.gate_passed, evaluation.gate_reasons) == (whole.gate_passed, whole.gate_reasons)
    assert evaluation.judge_kind == "metric" and evaluation.report_path
    assert run_state(home.run_id)[0] == "reviewing"


def test_the_judge_stage_without_generated_answers_fails_the_run_and_says_why(home: TrainedRun) -> None:
    handed_over(home, "generated.json").unlink(missing_ok=True)
    with pytest.raises(
        EvaluationError, match=r"generated\.json is missing: the generate stage must run first"
    ) as error:
        in_own_session(judge_for_run, home.run_id)
    assert run_state(home.run_id) == ("failed", str(error.value))


def test_the_report_stage_refuses_a_judgement_of_an_older_generation(home: TrainedRun) -> None:
    in_own_session(generate_for_run, home.run_id)
    in_own_session(judge_for_run, home.run_id)
    shorter = EvaluationOptions(generation=GenerationSettings(max_new_tokens=4), stability_prompts=0, forgetting=False)
    in_own_session(generate_for_run, home.run_id, shorter)  # new answers, not judged yet
    with pytest.raises(EvaluationError, match=r"judged\.json was judged from an older generation; run the judge stage"):
        in_own_session(report_for_run, home.run_id)
    assert run_state(home.run_id)[0] == "failed"


def test_a_stage_its_worker_stops_leaves_the_run_evaluating(home: TrainedRun) -> None:
    def stop_at_the_judge(event: Event) -> None:
        if event.type == "stage" and event.payload.get("step") == "judge":
            raise StageStopped("the worker is shutting down")

    with pytest.raises(StageStopped):
        in_own_session(evaluate_run, home.run_id, events=stop_at_the_judge)
    assert run_state(home.run_id) == ("evaluating", None)
    assert handed_over(home, "generated.json").is_file()
    in_own_session(judge_for_run, home.run_id)  # run again, it goes on
    in_own_session(report_for_run, home.run_id)
    assert run_state(home.run_id)[0] == "reviewing"


def fix_judgements(evaluation_id: int, positions: set[int]) -> None:
    """A reviewer fixes the judged samples at `positions`: each Fix is a preference pair on that test question."""
    with session_scope(get_engine()) as session:
        for row in session.exec(select(Judgement).where(Judgement.evaluation_id == evaluation_id)).all():
            if row.position in positions:
                record_review(session, judgement_id=row.id, reviewer="lead", verdict="fix", corrected_answer="请稍等。")


def test_a_dpo_iteration_is_judged_against_the_previous_iterations_answers_on_questions_it_did_not_train_on(
    home: TrainedRun, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The DPO iteration trained on pairs from fixes of two test questions: its gate, its scores and its win rate
    against iteration 1 leave them out and the report says how many; trained on all of them, its gate fails."""
    with OpenAIServer(responder=reference_judge) as server:
        judge_at(server, monkeypatch)
        first, _, _ = evaluate(home.run_id)
        assert first.scores["versus_previous"] is None  # an SFT run: against its base only
        assert first.scores["trained_on"] is None
        with session_scope(get_engine()) as session:
            # Iteration 1 answered all but its first question wrongly; iteration 2 (DPO) answers as the adapter does.
            for row in session.exec(select(Judgement).where(Judgement.evaluation_id == first.id)).all():
                row.tuned_answer = row.tuned_answer if row.position == 0 else "不知道。"
        fix_judgements(first.id, {1, 2})
        with session_scope(get_engine()) as session:
            parent = session.get(Run, home.run_id)
            adapter = session.exec(select(Adapter).where(Adapter.run_id == parent.id)).one()
            last = max(session.exec(select(Run.iteration).where(Run.project_id == parent.project_id)).all())
            dpo = Run(
                project_id=parent.project_id,
                iteration=last + 1,
                parent_run_id=parent.id,
                dataset_version_id=parent.dataset_version_id,
                recipe={**parent.recipe, "stage": "dpo"},
                state="evaluating",
            )
            session.add(dpo)
            session.flush()
            copied = adapter.model_dump(exclude={"id", "run_id", "created_at"})
            session.add(Adapter(**copied, run_id=dpo.id))
            dpo_id = dpo.id
        server.requests.clear()
        evaluation, rows, outcome = evaluate(dpo_id)
        requests = len(server.requests)
    assert requests == 2 * 4 * len(SHOP_QA)  # every question is judged: against the base, then iteration 1
    assert len(rows) == len(SHOP_QA)  # and stored
    assert evaluation.scores["trained_on"]["preference_pairs"] == [1, 2]
    unseen = [r for r in rows if r.position not in (1, 2)]
    judge = evaluation.scores["judge"]
    assert judge["samples"] == len(SHOP_QA) - 2
    assert judge["overall_mean"] == pytest.approx(sum(r.overall for r in unseen) / len(unseen), abs=1e-4)
    assert evaluation.scores["gate"]["checks"][0]["value"] == pytest.approx(judge["overall_mean"], abs=1e-4)
    versus = evaluation.scores["versus_previous"]
    assert (versus["run"], versus["iteration"]) == (home.run_id, parent.iteration)
    pairwise = versus["pairwise"]
    assert (pairwise["pairs"], pairwise["wins"], pairwise["losses"]) == (len(SHOP_QA) - 2, len(SHOP_QA) - 3, 0)
    markdown = Path(outcome.report.markdown).read_text(encoding="utf-8")
    line = (
        f"win rate against iteration {parent.iteration}: 75% (3 won, 0 lost, 1 tied of 4 questions it did not "
        "train on; 2 it trained on left out)"
    )
    assert line in markdown
    assert "Trained on as preference pairs: 2 test questions, not used for the gate." in markdown
    assert "on the questions it did not train on (2 test questions left out)" in markdown  # k-1 on the same ones
    assert "over the 4 test questions the run did not train on" in markdown
    with session_scope(get_engine()) as session:
        run = session.get(Run, dpo_id)
        chat = report_message(session, run, session.get(Evaluation, evaluation.id), "zh")
    assert "作为偏好对训练过的测试问题：2 个（不计入门槛）" in chat.lines
    assert "分数基于它未训练过的 4 个测试问题" in chat.lines

    fix_judgements(first.id, set(range(len(SHOP_QA))) - {1, 2})  # now it trained on every test question
    again = in_own_session(report_for_run, dpo_id).evaluation.id  # the same answers and verdicts, gated again
    with session_scope(get_engine()) as session:
        everything = session.get(Evaluation, again)
    assert not everything.gate_passed
    assert everything.gate_reasons == [
        f"the run trained on every one of its {len(SHOP_QA)} test questions, so no unseen question is left to "
        "measure it on, and the gate does not pass on questions the model trained on"
    ]
