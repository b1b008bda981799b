"""The gate: does a tuned model meet the project's bar for deployment?

The seed's rule is "得分 ≥ 4.0? → deploy". The gate checks, with thresholds configurable per project
(`GateConfig`, defaults from the evaluation issue):

    overall         the tuned model's mean overall judge score            >= 4.0
    gain_over_base  the tuned model's mean overall score minus its base's  > 0.0
    win_rate        share of pairwise comparisons the tuned model won     >= 0.5
    invalid_rate    share of the judge's judgements that were invalid     <= 0.05
    forgetting      fall of the general-ability probe score, as a share   <= 0.1
                    of the base model's probe score (`forgetting_drop`)

A gate cannot pass on nothing: every check that decides it must have been measured. A tuned model
that scores no better than its base does not pass by default (`gain_over_base` is strict). Every check
ends in one of these statuses, and every one is listed in the decision:

    passed          measured and within its threshold
    failed          measured and outside it, or a value that could not be computed: blocks the gate
    not_measured    not measured (no probe ran, the metric judge makes no pairwise comparisons): blocks
                    the gate, unless the project waived the check
    waived          not measured, and the project said in `waive` that it need not be: does not block;
                    the decision's notes (and so the report) say so
    not_applicable  invalid judgements under the metric judge, which makes none that could be invalid
    disabled        the project set the threshold to None; does not block

The checks are over the test questions the run did not train on: a run that trained on some of them (preference
pairs from reviewers' fixes, fixed test samples added to train) is scored without them (`left_out` says how many,
the notes say so), and a run that trained on every one of them does not pass, whatever its scores.

A missing value never passes silently and never raises: an overall score that could not be computed
(every judgement invalid, no samples) fails with a reason saying so. The overall mean is on the judge's
1-5 scale; a metric judge's caller maps its scores onto that scale before asking the gate.

Storage is not this module's: the evaluation stage stores `GateDecision.to_dict()`.
"""

import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from engine.evaluate.judge import JudgeResult

JudgeKind = Literal["llm", "metric"]
Status = Literal["passed", "failed", "not_measured", "waived", "not_applicable", "disabled"]
CheckName = Literal["overall", "gain_over_base", "win_rate", "invalid_rate", "forgetting"]


class GateConfig(BaseModel):
    """A project's gate thresholds; None switches a check off (it is still listed, as disabled)."""

    model_config = ConfigDict(extra="forbid")

    min_overall: float | None = Field(4.0, ge=1.0, le=5.0)  # mean overall judge score of the tuned model
    min_gain_over_base: float | None = Field(0.0, ge=0.0, le=4.0)  # tuned minus base overall mean must exceed it
    min_win_rate: float | None = Field(0.5, ge=0.0, le=1.0)  # pairwise wins over the base model
    max_invalid_rate: float | None = Field(0.05, ge=0.0, le=1.0)  # invalid judgements
    max_forgetting_drop: float | None = Field(0.1, ge=0.0, le=1.0)  # probe score fall, share of the base's
    waive: list[CheckName] = Field(default_factory=list)  # checks that need not be measured (e.g. forgetting)


class GateInputs(BaseModel):
    """What the gate reads. Rates are shares (0-1); None means not measured or not computable."""

    model_config = ConfigDict(extra="forbid")

    overall_mean: float | None = None
    base_overall_mean: float | None = None
    win_rate: float | None = Field(None, ge=0.0, le=1.0)
    invalid_rate: float | None = Field(None, ge=0.0, le=1.0)
    forgetting_drop: float | None = None  # negative when the tuned model did better on the probe
    judge_kind: JudgeKind = "llm"
    unseen: int | None = None  # test questions the scores are over (those the run did not train on)
    left_out: int = Field(0, ge=0)  # test questions the run trained on, left out of the scores

    @field_validator("overall_mean", "base_overall_mean", "win_rate", "invalid_rate", "forgetting_drop", mode="before")
    @classmethod
    def _nan_is_missing(cls, value: Any) -> Any:
        if isinstance(value, float) and not math.isfinite(value):
            return None
        return value

    @classmethod
    def from_judge(
        cls,
        result: JudgeResult,
        forgetting_drop: float | None = None,
        judge_kind: JudgeKind = "llm",
        left_out: int = 0,
    ) -> "GateInputs":
        """A judge's aggregates (over the questions the run did not train on; `left_out`: those it did). An invalid
        rate over no judgements at all is missing, not 0; the metric judge has neither pairwise comparisons nor
        judgements that could be invalid."""
        llm = judge_kind == "llm"
        return cls(
            unseen=len(result.samples),
            left_out=left_out,
            overall_mean=result.overall_mean,
            base_overall_mean=result.means.get("base", {}).get("overall"),
            win_rate=result.win_rate if llm else None,
            invalid_rate=result.invalid_rate if llm and result.judgements else None,
            forgetting_drop=forgetting_drop,
            judge_kind=judge_kind,
        )


class GateCheck(BaseModel):
    name: str  # overall | gain_over_base | win_rate | invalid_rate | forgetting
    value: float | None
    op: Literal[">=", "<=", ">"]
    threshold: float | None
    status: Status
    message: str  # a plain sentence, whatever the status

    @property
    def passed(self) -> bool:
        return self.status == "passed"

    @property
    def blocks(self) -> bool:
        return self.status in ("failed", "not_measured")


class GateDecision(BaseModel):
    passed: bool
    judge_kind: JudgeKind
    checks: list[GateCheck]
    reasons: list[str]  # why it failed: one sentence per failed check, in check order
    notes: list[str]  # what was not checked (waived, disabled, not applicable), and how the scores were made

    @property
    def headline(self) -> str:
        if self.passed:
            return "Gate passed: the tuned model meets the project's requirements."
        return "Gate failed: " + "; ".join(self.reasons) + "."

    def check(self, name: str) -> GateCheck:
        return next(c for c in self.checks if c.name == name)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump()


def forgetting_drop(base_score: float | None, tuned_score: float | None) -> float | None:
    """The probe score's fall from base to tuned as a share of the base's score (0.1: 10% lower);
    None when either is missing or the base scored nothing."""
    if base_score is None or tuned_score is None or not base_score:
        return None
    return (base_score - tuned_score) / base_score


def _fmt(value: float, threshold: float | None, *, percent: bool = False) -> str:
    """`value` with as few decimals as tell it apart from the threshold (3.96 is not "4.0")."""
    scale, unit = (100.0, "%") if percent else (1.0, "")
    start = 0 if percent else 1
    for decimals in range(start, 5):
        shown = round(value * scale, decimals)
        if threshold is None or value == threshold or shown != round(threshold * scale, decimals):
            return f"{shown:.{decimals}f}{unit}"
    return f"{value * scale:.4f}{unit}"


def _check(
    name: str, value: float | None, op: Literal[">=", "<=", ">"], threshold: float | None, status: Status, message: str
):
    return GateCheck(name=name, value=value, op=op, threshold=threshold, status=status, message=message)


def _unmeasured(
    name: CheckName, op: Literal[">=", "<=", ">"], threshold: float, why: str, config: GateConfig
) -> GateCheck:
    """A check whose value was not measured: it blocks the gate unless the project waived it."""
    if name in config.waive:
        return _check(name, None, op, threshold, "waived", f"{why}; the project waived this check")
    message = f"{why}, and the gate does not pass on a check it did not measure (a project may waive it)"
    return _check(name, None, op, threshold, "not_measured", message)


def _overall(inputs: GateInputs, config: GateConfig) -> GateCheck:
    value, limit = inputs.overall_mean, config.min_overall
    if limit is None:
        return _check("overall", value, ">=", None, "disabled", "the overall score is not checked for this project")
    need = _fmt(limit, None)
    if value is None:
        message = (
            f"no overall score could be computed (no valid score of the tuned model's answers), "
            f"so the {need} the project requires is not met"
        )
        return _check("overall", None, ">=", limit, "failed", message)
    shown = _fmt(value, limit)
    if value >= limit:
        return _check(
            "overall", value, ">=", limit, "passed", f"overall score {shown} meets the {need} the project requires"
        )
    return _check(
        "overall", value, ">=", limit, "failed", f"overall score {shown} is below the {need} the project requires"
    )


def _gain_over_base(inputs: GateInputs, config: GateConfig) -> GateCheck:
    tuned, base, limit = inputs.overall_mean, inputs.base_overall_mean, config.min_gain_over_base
    value = None if tuned is None or base is None else tuned - base
    if limit is None:
        message = "whether the tuned model scores better than its base is not checked for this project"
        return _check("gain_over_base", value, ">", None, "disabled", message)
    if value is None:
        why = "the gain over the base model was not measured (no overall score of the base or the tuned model)"
        return _unmeasured("gain_over_base", ">", limit, why, config)
    shown, need = f"{value:+.2f}", "better than its base" if limit == 0 else f"more than {limit:.2f} above its base"
    scores = f"overall {_fmt(tuned, base)} against the base's {_fmt(base, tuned)}"  # type: ignore[arg-type]
    if value > limit:
        message = f"the tuned model scored {shown} over its base ({scores}): it is {need}"
        return _check("gain_over_base", value, ">", limit, "passed", message)
    message = f"the tuned model scored {shown} over its base ({scores}): the project requires it to be {need}"
    return _check("gain_over_base", value, ">", limit, "failed", message)


def _win_rate(inputs: GateInputs, config: GateConfig) -> GateCheck:
    value, limit = inputs.win_rate, config.min_win_rate
    if limit is None:
        return _check(
            "win_rate",
            value,
            ">=",
            None,
            "disabled",
            "the win rate over the base model is not checked for this project",
        )
    need = _fmt(limit, None, percent=True)
    if value is None:
        if inputs.judge_kind == "metric":
            why = "the win rate over the base model was not measured: the metric judge does not compare answers"
            return _unmeasured("win_rate", ">=", limit, why, config)
        message = (
            "no comparison of the tuned and base answers could be judged, "
            f"so the {need} win rate the project requires is not met"
        )
        return _check("win_rate", None, ">=", limit, "failed", message)
    shown = _fmt(value, limit, percent=True)
    if value >= limit:
        message = (
            f"the tuned model beat the base model in {shown} of comparisons, meeting the {need} the project requires"
        )
        return _check("win_rate", value, ">=", limit, "passed", message)
    message = (
        f"the tuned model beat the base model in only {shown} of comparisons, below the {need} the project requires"
    )
    return _check("win_rate", value, ">=", limit, "failed", message)


def _invalid_rate(inputs: GateInputs, config: GateConfig) -> GateCheck:
    value, limit = inputs.invalid_rate, config.max_invalid_rate
    if limit is None:
        return _check(
            "invalid_rate", value, "<=", None, "disabled", "invalid judgements are not checked for this project"
        )
    allowed = _fmt(limit, None, percent=True)
    if value is None:
        if inputs.judge_kind == "metric":
            message = "invalid judgements do not apply: the metric judge makes no judgements that could be invalid"
            return _check("invalid_rate", None, "<=", limit, "not_applicable", message)
        message = (
            "the judge made no judgements, "
            f"so the at most {allowed} invalid judgements the project allows cannot be confirmed"
        )
        return _check("invalid_rate", None, "<=", limit, "failed", message)
    shown = _fmt(value, limit, percent=True)
    if value <= limit:
        message = f"{shown} of the judge's judgements were invalid, within the {allowed} the project allows"
        return _check("invalid_rate", value, "<=", limit, "passed", message)
    message = f"{shown} of the judge's judgements were invalid, more than the {allowed} the project allows"
    return _check("invalid_rate", value, "<=", limit, "failed", message)


def _forgetting(inputs: GateInputs, config: GateConfig) -> GateCheck:
    value, limit = inputs.forgetting_drop, config.max_forgetting_drop
    if limit is None:
        return _check(
            "forgetting", value, "<=", None, "disabled", "forgetting of general ability is not checked for this project"
        )
    allowed = _fmt(limit, None, percent=True)
    if value is None:
        why = "forgetting was not measured (no general-ability probe ran)"
        return _unmeasured("forgetting", "<=", limit, why, config)
    if value <= limit:
        if value <= 0:
            message = f"the general-ability probe score did not drop against the base model (allowed: {allowed})"
        else:
            shown = _fmt(value, limit, percent=True)
            message = (
                f"the general-ability probe score dropped by {shown} against the base model, "
                f"within the {allowed} the project allows"
            )
        return _check("forgetting", value, "<=", limit, "passed", message)
    shown = _fmt(value, limit, percent=True)
    message = (
        f"the general-ability probe score dropped by {shown} against the base model, "
        f"more than the {allowed} the project allows"
    )
    return _check("forgetting", value, "<=", limit, "failed", message)


def decide(inputs: GateInputs, config: GateConfig | None = None) -> GateDecision:
    """Every check, the decision, and the plain reasons for a failure."""
    config = config or GateConfig()
    checks = [
        _overall(inputs, config),
        _gain_over_base(inputs, config),
        _win_rate(inputs, config),
        _invalid_rate(inputs, config),
        _forgetting(inputs, config),
    ]
    notes = [c.message for c in checks if c.status in ("waived", "not_applicable", "disabled")]
    if inputs.judge_kind == "metric":
        notes.insert(0, "scores come from reference metrics (no LLM judge was configured), not from an LLM judge")
    reasons = [c.message for c in checks if c.blocks]
    if inputs.left_out and not inputs.unseen:
        # Every check above measured nothing; the one reason that matters is why.
        reasons = [
            f"the run trained on every one of its {inputs.left_out} test questions, so no unseen question is left "
            "to measure it on, and the gate does not pass on questions the model trained on"
        ]
    elif inputs.left_out:
        notes.insert(
            0,
            f"{inputs.left_out} test questions the run trained on are left out of these checks; "
            f"they are over the {inputs.unseen} it did not train on",
        )
    return GateDecision(
        passed=not reasons,
        judge_kind=inputs.judge_kind,
        checks=checks,
        reasons=reasons,
        notes=notes,
    )
