"""The gate: a good result passes; each threshold fails alone with exactly its own plain reason; missing
numbers (every judgement invalid) fail with a reason rather than crash; a gate cannot pass on nothing: a check
not measured blocks it unless the project waived that check, and a tuned model no better than its base does not
pass; a project config with an unknown key is refused."""

import pytest
from pydantic import ValidationError

from engine.evaluate.gate import GateConfig, GateInputs, decide, forgetting_drop
from engine.evaluate.judge import Judgement, JudgeResult, SampleJudgement, aggregate, restricted
from engine.llm import Usage

GOOD = {"overall_mean": 4.3, "base_overall_mean": 3.1, "win_rate": 0.7, "invalid_rate": 0.01, "forgetting_drop": 0.02}
CHECKS = ["overall", "gain_over_base", "win_rate", "invalid_rate", "forgetting"]


def inputs(**changes: object) -> GateInputs:
    return GateInputs(**{**GOOD, **changes})


def test_a_good_result_passes_with_every_check_listed() -> None:
    decision = decide(inputs(), GateConfig())
    assert decision.passed and decision.reasons == [] and decision.notes == []
    assert [c.name for c in decision.checks] == CHECKS
    assert all(c.status == "passed" and c.passed and not c.blocks for c in decision.checks)
    overall = decision.check("overall")
    assert (overall.value, overall.op, overall.threshold) == (4.3, ">=", 4.0)
    assert overall.message == "overall score 4.3 meets the 4.0 the project requires"
    assert decision.headline.startswith("Gate passed")
    assert decide(inputs()).passed  # the default config


def test_thresholds_are_inclusive() -> None:
    assert decide(inputs(overall_mean=4.0, win_rate=0.5, invalid_rate=0.05, forgetting_drop=0.1)).passed


@pytest.mark.parametrize(
    ("changes", "name", "reason"),
    [
        ({"overall_mean": 3.6}, "overall", "overall score 3.6 is below the 4.0 the project requires"),
        (
            {"base_overall_mean": 4.3},
            "gain_over_base",
            "the tuned model scored +0.00 over its base (overall 4.3 against the base's 4.3): the project requires it"
            " to be better than its base",
        ),
        # 3.96 is not shown as "4.0 is below the 4.0"
        ({"overall_mean": 3.96}, "overall", "overall score 3.96 is below the 4.0 the project requires"),
        (
            {"win_rate": 0.42},
            "win_rate",
            "the tuned model beat the base model in only 42% of comparisons, below the 50% the project requires",
        ),
        (
            {"invalid_rate": 0.08},
            "invalid_rate",
            "8% of the judge's judgements were invalid, more than the 5% the project allows",
        ),
        (
            {"forgetting_drop": 0.15},
            "forgetting",
            "the general-ability probe score dropped by 15% against the base model, more than the 10% the project"
            " allows",
        ),
    ],
)
def test_each_failing_threshold_gives_exactly_its_reason(changes: dict, name: str, reason: str) -> None:
    decision = decide(inputs(**changes))
    assert not decision.passed
    assert decision.reasons == [reason]
    assert [c.name for c in decision.checks if c.status == "failed"] == [name]
    assert decision.check(name).message == reason and decision.check(name).blocks
    assert decision.headline == f"Gate failed: {reason}."


def test_several_failures_give_their_reasons_in_check_order() -> None:
    decision = decide(inputs(overall_mean=3.5, forgetting_drop=0.3))
    assert [r.split()[0] for r in decision.reasons] == ["overall", "the"]
    assert len(decision.reasons) == 2 and "dropped by 30%" in decision.reasons[1]


def test_project_thresholds_are_used() -> None:
    config = GateConfig.model_validate({"min_overall": 3.5, "min_win_rate": 0.3})
    assert decide(inputs(overall_mean=3.6, win_rate=0.35), config).passed
    strict = GateConfig(min_overall=4.5)
    assert decide(inputs(), strict).reasons == ["overall score 4.3 is below the 4.5 the project requires"]


def test_a_disabled_check_is_listed_and_does_not_block() -> None:
    decision = decide(inputs(win_rate=0.1), GateConfig(min_win_rate=None))
    assert decision.passed
    assert decision.check("win_rate").status == "disabled"
    assert decision.notes == ["the win rate over the base model is not checked for this project"]


def test_a_check_not_measured_blocks_the_gate() -> None:
    decision = decide(inputs(forgetting_drop=None))
    check = decision.check("forgetting")
    assert not decision.passed
    assert (check.status, check.value, check.threshold) == ("not_measured", None, 0.1)
    assert not check.passed and check.blocks
    assert decision.reasons == [
        "forgetting was not measured (no general-ability probe ran), and the gate does not pass on a check it did"
        " not measure (a project may waive it)"
    ]


def test_a_project_may_waive_a_check_and_the_decision_says_so() -> None:
    decision = decide(inputs(forgetting_drop=None), GateConfig(waive=["forgetting"]))
    assert decision.passed and decision.check("forgetting").status == "waived"
    assert decision.notes == [
        "forgetting was not measured (no general-ability probe ran); the project waived this check"
    ]
    # A waived check that was measured is still checked.
    assert not decide(inputs(forgetting_drop=0.5), GateConfig(waive=["forgetting"])).passed
    with pytest.raises(ValidationError):
        GateConfig.model_validate({"waive": ["everything"]})


def test_a_better_probe_score_passes() -> None:
    assert forgetting_drop(0.8, 0.6) == pytest.approx(0.25)
    assert forgetting_drop(0.5, 0.6) == pytest.approx(-0.2)
    assert forgetting_drop(None, 0.6) is None and forgetting_drop(0.0, 0.6) is None
    check = decide(inputs(forgetting_drop=-0.2)).check("forgetting")
    assert check.passed and "did not drop" in check.message


def test_missing_numbers_fail_with_a_reason() -> None:
    decision = decide(GateInputs(overall_mean=None, win_rate=None, invalid_rate=None, judge_kind="llm"))
    assert not decision.passed
    assert [c.status for c in decision.checks] == ["failed", "not_measured", "failed", "failed", "not_measured"]
    assert decision.reasons[0].startswith("no overall score could be computed")
    assert len(decision.reasons) == 5
    assert decide(inputs(overall_mean=float("nan"))).check("overall").status == "failed"


def grade(valid: bool, overall: float | None = None) -> Judgement:
    scores = {d: overall for d in ("accuracy", "completeness", "fluency", "professionalism")} if valid else None
    return Judgement(
        kind="grade",
        subject="tuned",
        model="judge",
        prompt_version="v1",
        valid=valid,
        overall=overall if valid else None,
        scores=scores,
        invalid_reason=None if valid else "not_json",
        raw_reply="{" if not valid else None,
    )


def verdict(subject: str, preferred: str | None) -> Judgement:
    return Judgement(
        kind="pairwise",
        subject=subject,
        model="judge",
        prompt_version="v1",
        valid=preferred is not None,
        preferred=preferred,
        invalid_reason=None if preferred else "not_json",
    )


def judge_result(samples: list[SampleJudgement]) -> JudgeResult:
    rubric = {d: d for d in ("accuracy", "completeness", "fluency", "professionalism")}
    return aggregate(
        JudgeResult(
            model="judge",
            prompt_version="v1",
            rubric=rubric,
            samples=samples,
            usage=Usage(),
            response_format="x",
            seconds=0,
        )
    )


def judged(index: int, valid: bool, overall: float = 4.5, preferred: str = "tuned") -> SampleJudgement:
    pair = (verdict("base_first", preferred if valid else None), verdict("tuned_first", preferred if valid else None))
    return SampleJudgement(
        index=index,
        question="q",
        reference="r",
        tags=["退货"],
        base=grade(valid, 3.0),
        tuned=grade(valid, overall),
        pair=pair,
    )


def test_from_judge_reads_the_aggregates() -> None:
    result = judge_result([judged(0, True, 4.5), judged(1, True, 4.0, "tie")])
    gate_inputs = GateInputs.from_judge(result, forgetting_drop=0.05)
    assert gate_inputs.judge_kind == "llm"
    assert gate_inputs.overall_mean == pytest.approx(4.25) and gate_inputs.base_overall_mean == pytest.approx(3.0)
    assert gate_inputs.win_rate == pytest.approx(0.5)
    assert gate_inputs.invalid_rate == 0.0 and gate_inputs.forgetting_drop == 0.05
    assert decide(gate_inputs).passed


def test_all_invalid_judgements_fail_with_a_reason() -> None:
    result = judge_result([judged(0, False), judged(1, False)])
    assert result.overall_mean is None and result.win_rate is None and result.invalid_rate == 1.0
    decision = decide(GateInputs.from_judge(result))
    assert not decision.passed
    blocking = ["overall", "gain_over_base", "win_rate", "invalid_rate", "forgetting"]
    assert [c.name for c in decision.checks if c.blocks] == blocking
    assert decision.reasons[0] == (
        "no overall score could be computed (no valid score of the tuned model's answers), so the 4.0 the project"
        " requires is not met"
    )
    assert decision.reasons[3] == "100% of the judge's judgements were invalid, more than the 5% the project allows"


def test_no_judgements_at_all_is_missing_not_zero() -> None:
    decision = decide(GateInputs.from_judge(judge_result([])))
    assert decision.check("invalid_rate").status == "failed"
    assert "made no judgements" in decision.check("invalid_rate").message


def test_the_gate_does_not_pass_on_nothing() -> None:
    """LLaMA-Factory's identity.json under the metric judge: tuned scored exactly as its base, and the win rate
    and forgetting were not measured. That passed once; now each is a reason."""
    decision = decide(GateInputs(overall_mean=4.2, base_overall_mean=4.2, judge_kind="metric"))
    assert not decision.passed and decision.judge_kind == "metric"
    statuses = [c.status for c in decision.checks]
    assert statuses == ["passed", "failed", "not_measured", "not_applicable", "not_measured"]
    assert [c.name for c in decision.checks if c.blocks] == ["gain_over_base", "win_rate", "forgetting"]
    assert decision.notes[0].startswith("scores come from reference metrics")


def test_the_gate_counts_only_the_questions_the_run_did_not_train_on() -> None:
    """A DPO iteration answers the questions it trained on as pairs well (4.8) and the others badly (2.0): scored
    over all it would pass; over the unseen ones it fails, and the notes say what was left out."""
    result = judge_result([judged(0, True, 4.8), judged(1, True, 4.8), judged(2, True, 4.8), judged(3, True, 2.0)])
    assert decide(GateInputs.from_judge(result, 0.0)).passed
    unseen = restricted(result, {3})
    assert (unseen.overall_mean, result.overall_mean) == (2.0, pytest.approx(4.1))
    decision = decide(GateInputs.from_judge(unseen, 0.0, left_out=3))
    assert not decision.passed and decision.check("overall").value == 2.0
    assert decision.notes[0] == (
        "3 test questions the run trained on are left out of these checks; they are over the 1 it did not train on"
    )
    everything_trained = decide(GateInputs.from_judge(restricted(result, set()), 0.0, left_out=4))
    assert not everything_trained.passed
    assert everything_trained.reasons == [
        "the run trained on every one of its 4 test questions, so no unseen question is left to measure it on, "
        "and the gate does not pass on questions the model trained on"
    ]


def test_the_metric_judge_passes_once_a_project_waives_what_it_cannot_measure() -> None:
    config = GateConfig(waive=["win_rate"])
    decision = decide(GateInputs(overall_mean=4.2, base_overall_mean=3.0, forgetting_drop=0.0, judge_kind="metric"))
    assert not decision.passed and decision.reasons[0].startswith("the win rate over the base model was not measured")
    waived = decide(
        GateInputs(overall_mean=4.2, base_overall_mean=3.0, forgetting_drop=0.0, judge_kind="metric"), config
    )
    assert waived.passed and waived.check("win_rate").status == "waived"
    assert any("the project waived this check" in note for note in waived.notes)
    assert not decide(GateInputs(overall_mean=3.0, base_overall_mean=2.0, judge_kind="metric"), config).passed


def test_a_tuned_model_no_better_than_its_base_passes_only_where_the_project_allows() -> None:
    assert not decide(inputs(base_overall_mean=4.4)).passed
    allowed = decide(inputs(base_overall_mean=4.4), GateConfig(min_gain_over_base=None))
    assert allowed.passed and allowed.check("gain_over_base").status == "disabled"
    assert not decide(inputs(), GateConfig(min_gain_over_base=1.5)).passed  # 4.3 - 3.1 = 1.2


def test_config_from_a_dict_with_an_unknown_key_is_an_error() -> None:
    with pytest.raises(ValidationError, match="min_overal"):
        GateConfig.model_validate({"min_overal": 4.0})
    with pytest.raises(ValidationError):
        GateConfig.model_validate({"min_win_rate": 1.5})
    with pytest.raises(ValidationError):
        GateInputs(overall_mean=4.0, win_rate=0.5, extra=1)


def test_the_decision_is_stored_as_json() -> None:
    stored = decide(inputs(overall_mean=3.6)).to_dict()
    assert stored["passed"] is False
    assert stored["reasons"] == ["overall score 3.6 is below the 4.0 the project requires"]
    assert stored["checks"][0] == {
        "name": "overall",
        "value": 3.6,
        "op": ">=",
        "threshold": 4.0,
        "status": "failed",
        "message": "overall score 3.6 is below the 4.0 the project requires",
    }
