"""The evaluation stage of a run: the tuned model against its base on the run's test split, judged, gated,
stored and reported. Three restartable steps, each a function that may run in its own process (or machine, sharing
the database and the artifact store) and hands its result on in the run's artifacts, under `evaluation/`:

    generate_for_run (queue gpu)
        test split → answers of base and base+adapter (one loaded model)   generate.py
                   → reference metrics and perplexity                       reference.py
                   → stability of sampled answers, the forgetting probe     stability.py, forgetting.py
                   → generated.json
    judge_for_run (queue cpu, loads no model)
        generated.json → the LLM judge, or the metric judge without an endpoint   judge.py, metric_judge.py
                       → judged.json (with the sha256 of the generated.json it judged)
    report_for_run (queue cpu)
        generated.json + judged.json → the test questions the run trained on, left out    trained_on.py
                                     → the gate, the weakest samples, judge trust  gate.py, weakest.py, agreement.py
                                     → an Evaluation row, one Judgement row per sample, the report; reviewing

`evaluate_run` runs the three in turn in one process (`tuneloop eval`). Each stage checks what it needs before it
starts, fails the run with the reason when its work raises, and leaves the run as it is when its worker stops it
(StageStopped: the stage runs again). Both files are written whole or not at all (a temporary file, then a rename).

The gate and the headline numbers (against the base, against iteration k-1) are over the test questions the run did
not train on: the questions a DPO iteration trained on as preference pairs (reviewers' fixes of judged test samples),
or as fixed test samples a review added to train, are judged and stored like the others but scored apart
(`Evaluation.scores["trained_on"]`), and a run that trained on all of them does not pass its gate.

The gate's decision does not fail the stage: a run that misses its bar is evaluated all the same and goes on
to `reviewing`, where people see why (design.md: a gate failure stops at reviewing)."""

import hashlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Literal

from pydantic import ConfigDict, TypeAdapter, ValidationError
from sqlmodel import Session, col, select

from engine.artifacts import get_artifact_store
from engine.data.sample import Sample
from engine.data.versions import Entry, load_entries
from engine.evaluate.agreement import JudgeAgreement, ReviewedJudgement, judge_agreement
from engine.evaluate.gate import GateConfig, GateDecision, GateInputs, decide
from engine.evaluate.judge import JudgeError, JudgeResult, judge_configured, judge_samples_blocking, restricted
from engine.evaluate.judge_prompts import DEFAULT_RUBRIC
from engine.evaluate.metric_judge import metric_judge
from engine.evaluate.report import ReportFiles, ReportInputs, write_report
from engine.evaluate.results import (
    ForgettingReport,
    GeneratedSample,
    Generation,
    GenerationSettings,
    ReferenceMetrics,
    StabilityReport,
    summarize_metrics,
)
from engine.evaluate.trained_on import TrainedOn, trained_on
from engine.evaluate.weakest import WeakestReport, judge_scores, weakest_samples
from engine.events import Event, EventSink, ignore_events
from engine.files import write_atomic_text
from engine.loop.reviews import iteration_comparison
from engine.loop.runs import (
    IllegalTransition,
    RunCancelled,
    StageStopped,
    fail_run,
    latest_evaluation,
    stop_if_cancelled,
    transition,
    worker_actor,
)
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
JudgeKind = Literal["llm", "metric"]
GENERATED, JUDGED = "generated.json", "judged.json"


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
    judge: JudgeResult  # over the test questions the run did not train on, as the gate is
    weakest: WeakestReport
    report: ReportFiles
    report_keys: dict[str, str]  # "markdown", "html", "chart:<name>" -> artifact key


_FILE_CONFIG = ConfigDict(ser_json_inf_nan="constants")  # a perplexity is NaN when nothing was measured


@dataclass(frozen=True)
class Generated:
    """generated.json: what the generate stage hands on to the judge and report stages."""

    __pydantic_config__ = _FILE_CONFIG
    generation: Generation
    metrics: ReferenceMetrics
    stability: tuple[StabilityReport, StabilityReport] | None  # base, tuned; None when skipped
    forgetting: ForgettingReport | None


@dataclass(frozen=True)
class VersusPrevious:
    """A DPO iteration's answers judged pairwise against the previous iteration's answers to the same questions
    (in the base's place)."""

    __pydantic_config__ = _FILE_CONFIG
    run: int
    iteration: int
    judge: JudgeResult


@dataclass(frozen=True)
class Judged:
    """judged.json: the judge stage's verdicts and the generated.json (its sha256) they are about."""

    __pydantic_config__ = _FILE_CONFIG
    kind: JudgeKind
    judge: JudgeResult
    generated_sha256: str
    previous: VersusPrevious | None = None  # a DPO iteration with an LLM judge: against iteration k-1


_GENERATED = TypeAdapter(Generated)
_JUDGED = TypeAdapter(Judged)


def held_out_samples(entries: Sequence[Entry]) -> list[Sample]:
    """The samples of a dataset version's test split that are in use."""
    return [e.sample for e in entries if e.in_use and e.split == "test"]


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


def _test_sample_ids(session: Session, version_id: int | None) -> list[int | None]:
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


def _run_and_project(session: Session, run_id: int) -> tuple[Run, Project]:
    run = session.get(Run, run_id)
    if run is None:
        raise EvaluationError(f"no run {run_id}")
    project = session.get(Project, run.project_id)
    assert project is not None
    return run, project


def _adapter_and_samples(session: Session, run: Run, options: EvaluationOptions) -> tuple[Adapter, list[Sample]]:
    """The run's adapter and the test samples to answer; EvaluationError when either is missing."""
    adapter = session.exec(select(Adapter).where(Adapter.run_id == run.id)).first()
    if adapter is None:
        raise EvaluationError(f"run {run.id} has no adapter yet: train it first (`tuneloop train`)")
    if not Path(adapter.path).is_dir():
        raise EvaluationError(f"run {run.id}'s adapter folder {adapter.path} is missing")
    version = session.get(DatasetVersion, run.dataset_version_id) if run.dataset_version_id else None
    if version is None:
        raise EvaluationError(f"run {run.id} records no dataset version to evaluate on")
    samples = held_out_samples(load_entries(session, version))[: options.max_samples]
    if not samples:
        raise EvaluationError(
            f"dataset version {version.number} has no test split: split it (`tuneloop data split`) and train again"
        )
    return adapter, samples


def _judge_kind(options: EvaluationOptions, settings: Settings) -> JudgeKind:
    configured = judge_configured(settings)
    if options.judge == "llm" and not configured:
        raise EvaluationError(
            "no LLM judge endpoint is configured: set TUNELOOP_JUDGE_BASE_URL (or OPENAI_BASE_URL), "
            "or evaluate with --judge metric"
        )
    return "llm" if options.judge == "llm" or (options.judge == "auto" and configured) else "metric"


def _begin(session: Session, run: Run, project: Project, events: EventSink) -> Callable[..., None]:
    """Move the run to evaluating (committed) unless it is there; return what announces the stage's steps, each
    after a cancellation check (all three stages announce steps of the same "evaluate" stage)."""
    if run.state != "evaluating":  # trained runs arrive evaluating; a re-evaluation, a retry or older "done" move
        try:
            transition(session, run, "evaluating", actor=worker_actor())
        except IllegalTransition as error:
            raise EvaluationError(str(error)) from None
    session.commit()

    def stage(step: str, **payload: object) -> None:
        stop_if_cancelled(session, run.id)  # type: ignore[arg-type]
        events(Event("stage", project.name, {"stage": STAGE, "state": "evaluating", "step": step, **payload}, run.id))

    return stage


@contextmanager
def _failing_the_run(session: Session, run: Run) -> Iterator[None]:
    """A stage's work: an error fails the run with its reason; a worker stopping the stage does not (it runs again)."""
    try:
        yield
    except StageStopped:
        session.rollback()
        raise
    except (EvaluationError, JudgeError, RunCancelled, IllegalTransition) as error:
        _fail(session, run, str(error))
        raise EvaluationError(str(error)) from None
    except BaseException as error:
        _fail(session, run, f"{type(error).__name__}: {error}")
        raise


def _fail(session: Session, run: Run, message: str) -> None:
    fail_run(session, run.id, message, actor=worker_actor())  # type: ignore[arg-type]
    session.commit()


def _evaluation_folder(project: Project, run: Run) -> Path:
    """Where the stages hand their results on: generated.json, then judged.json."""
    return get_artifact_store().path(run_key(project.name, run.id, "evaluation"))  # type: ignore[arg-type]


def _read_stage_file(path: Path, stage: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise EvaluationError(f"{path} is missing: the {stage} stage must run first") from None


def _read_generated(folder: Path) -> tuple[Generated, str]:
    """generated.json and the sha256 of its bytes."""
    raw = _read_stage_file(folder / GENERATED, "generate")
    return _GENERATED.validate_json(raw), hashlib.sha256(raw).hexdigest()


def generate_for_run(
    session: Session,
    run_id: int,
    options: EvaluationOptions | None = None,
    *,
    events: EventSink = ignore_events,
    settings: Settings | None = None,
) -> None:
    """The gpu stage: answers, reference metrics, stability and the forgetting probe, into generated.json.

    Checks first everything that would stop a later stage (the judge asked for, the gate, the rubric)."""
    from engine.evaluate.forgetting import forgetting_probe  # the code that loads and runs models: here only
    from engine.evaluate.generate import default_device, generate_pairs, load_models
    from engine.evaluate.reference import reference_metrics
    from engine.evaluate.stability import base_and_tuned_stability

    options = options or EvaluationOptions()
    run, project = _run_and_project(session, run_id)
    adapter, samples = _adapter_and_samples(session, run, options)
    _judge_kind(options, settings or get_settings())
    gate_config(project)
    project_rubric(project)
    stage = _begin(session, run, project, events)
    with _failing_the_run(session, run):
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
                loaded,
                prompts,
                k=options.stability_k,
                sample_size=options.stability_prompts,
                tools=[g.tools for g in generation.samples],
            )
        forgetting = None
        if options.forgetting:
            stage("forgetting")
            forgetting = forgetting_probe(loaded)
        generated = Generated(generation, metrics, stability, forgetting)
        write_atomic_text(
            _evaluation_folder(project, run) / GENERATED, _GENERATED.dump_json(generated, indent=1).decode()
        )


def judge_for_run(
    session: Session,
    run_id: int,
    options: EvaluationOptions | None = None,
    *,
    events: EventSink = ignore_events,
    settings: Settings | None = None,
) -> None:
    """The cpu stage that judges generated.json's answers (the LLM judge, or the metric judge without an endpoint)
    into judged.json. Loads no model."""
    options = options or EvaluationOptions()
    settings = settings or get_settings()
    run, project = _run_and_project(session, run_id)
    kind = _judge_kind(options, settings)
    rubric = project_rubric(project)
    stage = _begin(session, run, project, events)
    with _failing_the_run(session, run):
        folder = _evaluation_folder(project, run)
        generated, digest = _read_generated(folder)
        stage("judge", kind=kind)
        samples = generated.generation.samples
        if kind == "llm":
            judge = judge_samples_blocking(
                samples,
                rubric=rubric,
                pairwise=options.pairwise,
                settings=settings,
                events=events,
                project=project.name,
            )
        else:
            judge = metric_judge(samples, generated.metrics)
        previous = None
        compared = previous_iteration_samples(session, run, samples) if kind == "llm" and options.pairwise else None
        if compared is not None:
            parent, against = compared
            stage("judge", kind=kind, against_run=parent.id)
            verdicts = judge_samples_blocking(
                against, rubric=rubric, pairwise=True, settings=settings, events=events, project=project.name
            )
            previous = VersusPrevious(parent.id, parent.iteration, verdicts)  # type: ignore[arg-type]
        judged = Judged(kind, judge, digest, previous)
        write_atomic_text(folder / JUDGED, _JUDGED.dump_json(judged, indent=1).decode())


def previous_iteration_samples(
    session: Session, run: Run, samples: Sequence[GeneratedSample]
) -> tuple[Run, list[GeneratedSample]] | None:
    """For a DPO iteration (`stage: dpo`): its answers with the previous iteration's answers to the same questions
    (from that run's latest evaluation) in the base's place, for the pairwise judge; None for any other run, or
    when the previous iteration was not evaluated on any of these questions."""
    if (run.recipe or {}).get("stage") != "dpo" or run.parent_run_id is None:
        return None
    parent = session.get(Run, run.parent_run_id)
    evaluation = latest_evaluation(session, run.parent_run_id)
    if parent is None or evaluation is None:
        return None
    answers = dict(
        session.exec(
            select(Judgement.question, Judgement.tuned_answer).where(
                Judgement.evaluation_id == evaluation.id, col(Judgement.tuned_answer).is_not(None)
            )
        ).all()
    )
    compared = [replace(s, base_answer=answers[s.question]) for s in samples if s.question in answers]
    return (parent, compared) if compared else None


def _read_judged(folder: Path) -> tuple[Generated, Judged]:
    """Both files; EvaluationError when one is missing or judged.json judged another generated.json."""
    generated, digest = _read_generated(folder)
    judged = _JUDGED.validate_json(_read_stage_file(folder / JUDGED, "judge"))
    if judged.generated_sha256 != digest:
        raise EvaluationError("judged.json was judged from an older generation; run the judge stage again")
    return generated, judged


@dataclass
class _Assessment:
    """What the report stage makes of the two files. `generated` and `judged` are over the test questions the run
    did not train on (what the gate, the report and the stored scores say); `everything` keeps every sample, one
    Judgement row each; the questions it trained on are scored apart in `trained_judge`."""

    generated: Generated
    judged: Judged
    everything: tuple[Generated, Judged]
    trained: TrainedOn
    trained_judge: JudgeResult | None
    decision: GateDecision
    weakest: WeakestReport
    agreement: JudgeAgreement


def _unseen(generated: Generated, judged: Judged, trained: TrainedOn) -> tuple[Generated, Judged]:
    """Both files as if the questions the run trained on had not been asked: their answers, reference metrics and
    judgements (against the base, against iteration k-1) left out, every aggregate computed again."""
    if not trained.indices:
        return generated, judged
    keep = {s.index for s in generated.generation.samples} - trained.indices
    generation = replace(generated.generation, samples=[s for s in generated.generation.samples if s.index in keep])
    metrics = summarize_metrics([m for m in generated.metrics.samples if m.index in keep])
    previous = judged.previous
    if previous is not None:
        previous = replace(previous, judge=restricted(previous.judge, keep))
    return (
        replace(generated, generation=generation, metrics=metrics),
        replace(judged, judge=restricted(judged.judge, keep), previous=previous),
    )


def _assess(
    session: Session,
    run: Run,
    project: Project,
    config: GateConfig,
    generated: Generated,
    judged: Judged,
    options: EvaluationOptions,
) -> _Assessment:
    """The questions the run trained on, left out; the gate's decision, the weakest samples and how far this judge
    can be trusted, over the others."""
    trained = trained_on(session, run, generated.generation.samples)
    unseen_generated, unseen_judged = _unseen(generated, judged, trained)
    drop = generated.forgetting.drop if generated.forgetting else None
    judge = unseen_judged.judge
    inputs = GateInputs.from_judge(judge, drop, judged.kind, left_out=len(trained.indices))
    threshold = config.min_overall if config.min_overall is not None else 4.0
    scores, reasons = judge_scores(judge)
    samples = unseen_generated.generation.samples
    weakest = weakest_samples(samples, scores, reasons, k=options.weakest_k, threshold=threshold)
    agreement = judge_trust(session, project, judge.model, threshold)
    return _Assessment(
        unseen_generated,
        unseen_judged,
        (generated, judged),
        trained,
        restricted(judged.judge, trained.indices) if trained.indices else None,
        decide(inputs, config),
        weakest,
        agreement,
    )


def _store_evaluation(session: Session, run: Run, a: _Assessment) -> Evaluation:
    """The Evaluation row and one Judgement row per sample, flushed (not committed)."""
    judge, generation, metrics = a.judged.judge, a.generated.generation, a.generated.metrics
    every, all_judged = a.everything
    evaluation = Evaluation(
        run_id=run.id,  # type: ignore[arg-type]
        judge_kind=a.judged.kind,
        judge_model=judge.model,
        prompt_version=judge.prompt_version,
        scores={
            "judge": judge.summary(),
            "reference": {"base": metrics.base, "tuned": metrics.tuned},
            "generation": _generation_summary(generation),
            "stability": _stability_summary(a.generated.stability),
            "forgetting": a.generated.forgetting.to_dict() if a.generated.forgetting else None,
            "gate": a.decision.to_dict(),
            "weakest": {"summary": a.weakest.summary, "indices": [w.index for w in a.weakest.weakest]},
            "agreement": a.agreement.to_dict(),
            "versus_previous": _versus_previous(a.judged.previous, a.trained),
            "trained_on": _trained_on(a.trained, a.trained_judge),
        },
        gate_passed=a.decision.passed,
        gate_reasons=a.decision.reasons,
        invalid_rate=judge.invalid_rate if a.judged.kind == "llm" else None,
        cost_usd=judge.cost_usd,
    )
    session.add(evaluation)
    session.flush()
    assert evaluation.id is not None
    ids = _test_sample_ids(session, run.dataset_version_id)
    session.add_all(_judgement_rows(evaluation.id, every.generation, all_judged.judge, every.metrics, ids))
    return evaluation


def _versus_previous(previous: VersusPrevious | None, trained: TrainedOn) -> dict | None:
    if previous is None:
        return None
    summary = previous.judge.summary()
    return {
        "run": previous.run,
        "iteration": previous.iteration,
        "pairwise": summary["pairwise"],
        "left_out": len(trained.indices),  # questions the run trained on: not in these numbers
        "invalid_rate": summary["invalid_rate"],
    }


def _trained_on(trained: TrainedOn, judge: JudgeResult | None) -> dict | None:
    """Which test questions the run trained on (positions) and their scores, apart from the gate's; None: none."""
    if judge is None:
        return None
    return trained.to_dict() | {"judge": judge.summary()}


def _report(
    session: Session, project: Project, run: Run, evaluation: Evaluation, a: _Assessment
) -> tuple[ReportFiles, dict[str, str]]:
    """The report's files in the run's artifacts, recorded as artifacts; the evaluation points at the Markdown."""
    out_dir = get_artifact_store().path(run_key(project.name, run.id, "evaluations", str(evaluation.id)))  # type: ignore[arg-type]
    loss = session.exec(select(Metric).where(Metric.run_id == run.id).order_by(col(Metric.step))).all()
    report_inputs = ReportInputs(
        project=project.name,
        run_id=run.id,  # type: ignore[arg-type]
        iteration=run.iteration,
        judge_kind=a.judged.kind,
        judge=a.judged.judge,
        generation=a.generated.generation,
        metrics=a.generated.metrics,
        gate=a.decision,
        weakest=a.weakest,
        stability=a.generated.stability,
        forgetting=a.generated.forgetting,
        agreement=a.agreement,
        loss_metrics=loss,
        created_at=evaluation.created_at,
        # this evaluation (its judgements added before) beside the parent run's latest one
        comparison=iteration_comparison(session, run.id, evaluation=evaluation),  # type: ignore[arg-type]
        trained_on=a.trained,
        trained_judge=a.trained_judge,
    )
    files = write_report(report_inputs, out_dir)
    keys = _record_report(session, project, run, files)
    evaluation.report_path = keys.get("markdown")
    session.add(evaluation)
    return files, keys


def _announce(events: EventSink, project: Project, run: Run, a: _Assessment, files: ReportFiles) -> None:
    payload = {
        "stage": STAGE,
        "gate_passed": a.decision.passed,
        "headline": a.decision.headline,
        "reasons": a.decision.reasons,
        "markdown": str(files.markdown),
        "html": str(files.html),
        "weak": a.weakest.summary,
    }
    events(Event("report", project.name, payload, run.id))
    if not a.decision.passed:
        events(Event("warning", project.name, {"message": a.decision.headline}, run.id))


def report_for_run(
    session: Session,
    run_id: int,
    options: EvaluationOptions | None = None,
    *,
    events: EventSink = ignore_events,
    settings: Settings | None = None,
) -> EvaluationOutcome:
    """The cpu stage that gates, stores and reports generated.json as judged in judged.json; the run goes on to
    reviewing. `settings` is taken for symmetry with the other stages: the report needs none of its own."""
    options = options or EvaluationOptions()
    run, project = _run_and_project(session, run_id)
    config = gate_config(project)
    stage = _begin(session, run, project, events)
    with _failing_the_run(session, run):
        generated, judged = _read_judged(_evaluation_folder(project, run))
        stage("report")
        assessment = _assess(session, run, project, config, generated, judged, options)
        evaluation = _store_evaluation(session, run, assessment)
        files, keys = _report(session, project, run, evaluation, assessment)
        detail = {"evaluation": evaluation.id, "gate_passed": assessment.decision.passed}
        transition(session, run, "reviewing", actor=worker_actor(), detail=detail)
        session.commit()
    _announce(events, project, run, assessment, files)
    return EvaluationOutcome(evaluation, assessment.decision, assessment.judged.judge, assessment.weakest, files, keys)


def evaluate_run(
    session: Session,
    run_id: int,
    options: EvaluationOptions | None = None,
    *,
    events: EventSink = ignore_events,
    settings: Settings | None = None,
) -> EvaluationOutcome:
    """Evaluate run `run_id`'s adapter on its dataset version's test split; store and report the result: the three
    stages one after another in this process.

    Raises EvaluationError when the run cannot be evaluated; the run is then marked failed with the reason."""
    generate_for_run(session, run_id, options, events=events, settings=settings)
    judge_for_run(session, run_id, options, events=events, settings=settings)
    return report_for_run(session, run_id, options, events=events, settings=settings)
