"""The evaluation stage of a run: the tuned model against its base on the run's test split, judged, gated,
stored and reported.

    test split → answers of base and base+adapter (one loaded model)   generate.py
               → reference metrics and perplexity                       reference.py
               → stability of sampled answers, the forgetting probe     stability.py, forgetting.py
               → the LLM judge, or the metric judge without an endpoint judge.py, metric_judge.py
               → the gate, the weakest samples, judge trust             gate.py, weakest.py, agreement.py
               → an Evaluation row, one Judgement row per sample, the report in the run's artifacts

The gate's decision does not fail the stage: a run that misses its bar is evaluated all the same and goes on
to `reviewing`, where people see why (design.md: a gate failure stops at reviewing)."""

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

from pydantic import ValidationError
from sqlmodel import Session, col, select

from engine.artifacts import get_artifact_store
from engine.data.versions import load_entries
from engine.evaluate.agreement import JudgeAgreement, ReviewedJudgement, judge_agreement
from engine.evaluate.forgetting import ForgettingReport, forgetting_probe
from engine.evaluate.gate import GateConfig, GateDecision, GateInputs, decide
from engine.evaluate.generate import (
    Generation,
    GenerationSettings,
    default_device,
    generate_pairs,
    held_out_samples,
    load_models,
)
from engine.evaluate.judge import JudgeError, JudgeResult, judge_configured, judge_samples_blocking
from engine.evaluate.judge_prompts import DEFAULT_RUBRIC
from engine.evaluate.metric_judge import metric_judge
from engine.evaluate.reference import ReferenceMetrics, reference_metrics
from engine.evaluate.report import ReportFiles, ReportInputs, write_report
from engine.evaluate.stability import StabilityReport, base_and_tuned_stability
from engine.evaluate.weakest import WeakestReport, judge_scores, weakest_samples
from engine.events import Event, EventSink, ignore_events
from engine.reviews import iteration_comparison
from engine.runs import IllegalTransition, RunCancelled, fail_run, stop_if_cancelled, transition, worker_actor
from engine.settings import Settings, get_settings
from storage.artifacts import StoredArtifact, record_artifact, run_key, sha256_file
from storage.models import (
    Adapter,
    DatasetVersion,
    Evaluation,
    Judgement,
    Metric,
    Project,
    Review,
    Run,
)
from storage.models import Sample as SampleRow

STAGE = "evaluate"
JudgeChoice = Literal["auto", "llm", "metric"]


class EvaluationError(Exception):
    """The run cannot be evaluated: no adapter, no test split, a bad gate or rubric setting, a judge that refuses."""


@dataclass
class EvaluationOptions:
    judge: JudgeChoice = "auto"  # auto: the LLM judge when an endpoint is configured, else the metric judge
    generation: GenerationSettings = field(default_factory=lambda: GenerationSettings(max_new_tokens=128))
    max_samples: int | None = None  # the first N test samples only (a quick look); None: all
    pairwise: bool = True
    stability_prompts: int = 8  # 0 skips stability
    stability_k: int = 3
    forgetting: bool = True
    weakest_k: int = 10
    device: str | None = None


@dataclass
class EvaluationOutcome:
    evaluation: Evaluation
    decision: GateDecision
    judge: JudgeResult
    weakest: WeakestReport
    report: ReportFiles
    report_keys: dict[str, str]  # "markdown", "html", "chart:<name>" -> artifact key


def gate_config(project: Project) -> GateConfig:
    """The project's gate (`settings.gate`), the issue's defaults where it sets nothing."""
    raw = (project.settings or {}).get("gate") or {}
    try:
        return GateConfig.model_validate(raw)
    except ValidationError as error:
        problems = "; ".join(f"gate.{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())
        raise EvaluationError(f"project {project.name} has a bad gate setting: {problems}") from None


def project_rubric(project: Project) -> dict[str, str]:
    rubric = (project.settings or {}).get("rubric") or DEFAULT_RUBRIC
    if not isinstance(rubric, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in rubric.items()):
        raise EvaluationError(f"project {project.name}: settings.rubric must map each dimension to its description")
    return dict(rubric)


def judge_trust(session: Session, project: Project, judge_model: str, threshold: float) -> JudgeAgreement:
    """How often this judge agreed with people's reviews of its judgements in this project, oldest review first."""
    rows = session.exec(
        select(Review, Judgement)
        .join(Judgement, col(Review.judgement_id) == col(Judgement.id))
        .join(Evaluation, col(Judgement.evaluation_id) == col(Evaluation.id))
        .join(Run, col(Evaluation.run_id) == col(Run.id))
        .where(Run.project_id == project.id, Judgement.judge_model == judge_model)
        .order_by(col(Review.created_at), col(Review.id))
    ).all()
    reviews = [
        ReviewedJudgement(j.id, j.question, j.overall if j.valid else None, r.verdict, r.reviewer) for r, j in rows
    ]
    return judge_agreement(reviews, threshold)


def _test_sample_ids(session: Session, version_id: int) -> list[int | None]:
    """Row ids of the version's test samples in use, in the order `held_out_samples` gives them."""
    return list(
        session.exec(
            select(SampleRow.id)
            .where(SampleRow.version_id == version_id, SampleRow.split == "test", col(SampleRow.filter_rule).is_(None))
            .order_by(col(SampleRow.position))
        ).all()
    )


def _judgement_rows(
    evaluation_id: int, generation: Generation, judge: JudgeResult, metrics: ReferenceMetrics, ids: Sequence[int | None]
) -> list[Judgement]:
    by_index = {m.index: m for m in metrics.samples}
    rows = []
    for generated, judged in zip(generation.samples, judge.samples, strict=True):
        reference = by_index.get(generated.index)
        rows.append(
            Judgement(
                evaluation_id=evaluation_id,
                sample_id=ids[generated.index] if generated.index < len(ids) else None,
                position=generated.index,
                question=generated.question,
                reference=generated.reference,
                base_answer=generated.base_answer,
                tuned_answer=generated.tuned_answer,
                scores=judged.tuned.scores,
                overall=judged.overall,
                pairwise=judged.pairwise,
                reason=judged.reason,
                valid=judged.valid,
                raw_reply=judged.tuned.raw_reply,
                judge_model=judge.model,
                prompt_version=judge.prompt_version,
                tags=list(generated.tags),
                detail={
                    "base": asdict(judged.base),
                    "tuned": asdict(judged.tuned),
                    "pair": [asdict(j) for j in judged.pair] if judged.pair else None,
                    "reference": {"base": asdict(reference.base), "tuned": asdict(reference.tuned)}
                    if reference
                    else None,
                    "tokens": {"base": generated.base_tokens, "tuned": generated.tuned_tokens},
                    "stopped": {"base": generated.base_stopped, "tuned": generated.tuned_stopped},
                },
            )
        )
    return rows


def _generation_summary(generation: Generation) -> dict:
    return {
        name: {
            "samples": stats.samples,
            "tokens": stats.tokens,
            "seconds": round(stats.seconds, 3),
            "tokens_per_second": round(stats.tokens_per_second, 1),
            "stopped": stats.stopped,
        }
        for name, stats in (("base", generation.base), ("tuned", generation.tuned))
    }


def _stability_summary(stability: tuple[StabilityReport, StabilityReport] | None) -> dict | None:
    if stability is None:
        return None
    return {
        name: {"k": report.k, "prompts": len(report.prompts), "mean_agreement": round(report.mean_agreement, 4)}
        for name, report in zip(("base", "tuned"), stability, strict=True)
    }


def _record_report(session: Session, project: Project, run: Run, files: ReportFiles) -> dict[str, str]:
    """Artifact rows for the report's files, which `write_report` wrote in place inside the store."""
    root = get_artifact_store().root
    named = {"markdown": files.markdown, "html": files.html} | {f"chart:{k}": v for k, v in files.charts.items()}
    keys: dict[str, str] = {}
    for name, path in named.items():
        key = path.resolve().relative_to(root).as_posix()
        stored = StoredArtifact(key=key, sha256=sha256_file(path), size_bytes=path.stat().st_size)
        kind = "chart" if name.startswith("chart:") else "report"
        record_artifact(session, stored, project_id=project.id, run_id=run.id, kind=kind)
        keys[name] = key
    return keys


def evaluate_run(
    session: Session,
    run_id: int,
    options: EvaluationOptions | None = None,
    *,
    events: EventSink = ignore_events,
    settings: Settings | None = None,
) -> EvaluationOutcome:
    """Evaluate run `run_id`'s adapter on its dataset version's test split; store and report the result.

    Raises EvaluationError when the run cannot be evaluated; the run is then marked failed with the reason."""
    options = options or EvaluationOptions()
    settings = settings or get_settings()
    run = session.get(Run, run_id)
    if run is None:
        raise EvaluationError(f"no run {run_id}")
    project = session.get(Project, run.project_id)
    assert project is not None
    adapter = session.exec(select(Adapter).where(Adapter.run_id == run.id)).first()
    if adapter is None:
        raise EvaluationError(f"run {run_id} has no adapter yet: train it first (`tuneloop train`)")
    if not Path(adapter.path).is_dir():
        raise EvaluationError(f"run {run_id}'s adapter folder {adapter.path} is missing")
    version = session.get(DatasetVersion, run.dataset_version_id) if run.dataset_version_id else None
    if version is None:
        raise EvaluationError(f"run {run_id} records no dataset version to evaluate on")
    samples = held_out_samples(load_entries(session, version))
    if options.max_samples is not None:
        samples = samples[: options.max_samples]
    if not samples:
        raise EvaluationError(
            f"dataset version {version.number} has no test split: split it (`tuneloop data split`) and train again"
        )
    use_llm = options.judge == "llm" or (options.judge == "auto" and judge_configured(settings))
    if options.judge == "llm" and not judge_configured(settings):
        raise EvaluationError(
            "no LLM judge endpoint is configured: set TUNELOOP_JUDGE_BASE_URL (or OPENAI_BASE_URL), "
            "or evaluate with --judge metric"
        )
    config = gate_config(project)
    rubric = project_rubric(project)

    def stage(step: str, **payload: object) -> None:
        stop_if_cancelled(session, run.id)  # type: ignore[arg-type]
        events(Event("stage", project.name, {"stage": STAGE, "state": "evaluating", "step": step, **payload}, run.id))

    if run.state != "evaluating":  # trained runs arrive evaluating; a re-evaluation, a retry or older "done" move
        try:
            transition(session, run, "evaluating", actor=worker_actor())
        except IllegalTransition as error:
            raise EvaluationError(str(error)) from None
    session.commit()
    try:
        stage("generate", samples=len(samples))
        loaded = load_models(adapter.base_model, adapter.path, device=options.device or default_device())
        generation = generate_pairs(
            loaded, samples, options.generation, events=events, project=project.name, run=run.id
        )
        stage("reference")
        metrics = reference_metrics(generation.samples, loaded.model, loaded.tokenizer)
        stability = None
        if options.stability_prompts > 0:
            stage("stability", prompts=options.stability_prompts, k=options.stability_k)
            prompts = [g.prompt for g in generation.samples]
            stability = base_and_tuned_stability(
                loaded, prompts, k=options.stability_k, sample_size=options.stability_prompts
            )
        forgetting: ForgettingReport | None = None
        if options.forgetting:
            stage("forgetting")
            forgetting = forgetting_probe(loaded)
        del loaded  # the model's memory is not needed while the judge waits on the network
        stage("judge", kind="llm" if use_llm else "metric")
        if use_llm:
            judge = judge_samples_blocking(
                generation.samples,
                rubric=rubric,
                pairwise=options.pairwise,
                settings=settings,
                events=events,
                project=project.name,
            )
            inputs = GateInputs.from_judge(judge, forgetting.drop if forgetting else None)
        else:
            judge = metric_judge(generation.samples, metrics)
            inputs = GateInputs(
                overall_mean=judge.overall_mean,
                forgetting_drop=forgetting.drop if forgetting else None,
                judge_kind="metric",
            )
        decision = decide(inputs, config)
        threshold = config.min_overall if config.min_overall is not None else 4.0
        scores, reasons = judge_scores(judge)
        weakest = weakest_samples(generation.samples, scores, reasons, k=options.weakest_k, threshold=threshold)
        agreement = judge_trust(session, project, judge.model, threshold)

        evaluation = Evaluation(
            run_id=run.id,  # type: ignore[arg-type]
            judge_kind="llm" if use_llm else "metric",
            judge_model=judge.model,
            prompt_version=judge.prompt_version,
            scores={
                "judge": judge.summary(),
                "reference": {"base": metrics.base, "tuned": metrics.tuned},
                "generation": _generation_summary(generation),
                "stability": _stability_summary(stability),
                "forgetting": forgetting.to_dict() if forgetting else None,
                "gate": decision.to_dict(),
                "weakest": {"summary": weakest.summary, "indices": [w.index for w in weakest.weakest]},
                "agreement": agreement.to_dict(),
            },
            gate_passed=decision.passed,
            gate_reasons=decision.reasons,
            invalid_rate=judge.invalid_rate if use_llm else None,
            cost_usd=judge.cost_usd,
        )
        session.add(evaluation)
        session.flush()
        assert evaluation.id is not None
        session.add_all(
            _judgement_rows(evaluation.id, generation, judge, metrics, _test_sample_ids(session, version.id))
        )

        stage("report")
        out_dir = get_artifact_store().path(run_key(project.name, run.id, "evaluations", str(evaluation.id)))
        loss = session.exec(select(Metric).where(Metric.run_id == run.id).order_by(col(Metric.step))).all()
        report_inputs = ReportInputs(
            project=project.name,
            run_id=run.id,  # type: ignore[arg-type]
            iteration=run.iteration,
            judge_kind=evaluation.judge_kind,  # type: ignore[arg-type]
            judge=judge,
            generation=generation,
            metrics=metrics,
            gate=decision,
            weakest=weakest,
            stability=stability,
            forgetting=forgetting,
            agreement=agreement,
            loss_metrics=loss,
            created_at=evaluation.created_at,
            # this evaluation (its judgements added above) beside the parent run's latest one
            comparison=iteration_comparison(session, run.id, evaluation=evaluation),  # type: ignore[arg-type]
        )
        files = write_report(report_inputs, out_dir)
        keys = _record_report(session, project, run, files)
        evaluation.report_path = keys.get("markdown")
        session.add(evaluation)
        detail = {"evaluation": evaluation.id, "gate_passed": decision.passed}
        transition(session, run, "reviewing", actor=worker_actor(), detail=detail)
        session.commit()
    except (JudgeError, RunCancelled, IllegalTransition) as error:
        _fail(session, run, str(error))
        raise EvaluationError(str(error)) from None
    except BaseException as error:
        _fail(session, run, f"{type(error).__name__}: {error}")
        raise
    payload = {
        "stage": STAGE,
        "gate_passed": decision.passed,
        "headline": decision.headline,
        "reasons": decision.reasons,
        "markdown": str(files.markdown),
        "html": str(files.html),
        "weak": weakest.summary,
    }
    events(Event("report", project.name, payload, run.id))
    if not decision.passed:
        events(Event("warning", project.name, {"message": decision.headline}, run.id))
    return EvaluationOutcome(evaluation, decision, judge, weakest, files, keys)


def _fail(session: Session, run: Run, message: str) -> None:
    fail_run(session, run.id, message, actor=worker_actor())  # type: ignore[arg-type]
    session.commit()
