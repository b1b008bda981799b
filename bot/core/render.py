"""Everything a face shows, as neutral messages: a run's card, its history, its evaluation report, review cards,
the events the engine announces, lists and help. Every face renders these; none builds its own text."""

import json
from collections import Counter

from sqlmodel import Session, col, select

from bot.core.actions import (
    Action,
    Approve,
    Cancel,
    RequestApproval,
    Retrain,
    Retry,
    Review,
    Rollback,
    ShowReview,
    ShowReviewSummary,
)
from bot.core.catalogue import CATALOGUE, say, say_count
from bot.core.grammar import COMMANDS, START_USAGE, spell
from bot.core.messages import Button, Message, Style, Table
from engine.artifacts import get_artifact_store
from engine.events import Event
from engine.loop.prepare import TargetedData
from engine.loop.reviews import ReviewSummary, iteration_comparison
from engine.loop.runs import RunHistory, last_loss, latest_evaluation
from storage.models import Adapter, Artifact, DatasetVersion, Deployment, Evaluation, Job, Judgement, Project, Run

TIME = "%Y-%m-%d %H:%M"
QUOTE_LIMIT = 600  # characters of a question or answer on a review card: a card is read, not scrolled


def button(
    language: str, name: str, action: Action, style: Style = "default", label: str | None = None, **extra: str | None
) -> Button:
    """The button `name` of the catalogue (or with its own `label`) for `action`."""
    if extra.get("confirm"):
        extra["cancel"] = say(language, "button.cancel_confirm")  # the confirmation's way out
    shown = label or say(language, f"button.{name}")
    return Button(shown, action, spell(action), style, **extra)  # type: ignore[arg-type]


def state_word(language: str, state: str) -> str:
    """A run state in words (`waiting for review`), or as it is when the catalogue has no words for it."""
    return _word(language, "state", state)


def _word(language: str, kind: str, value: str) -> str:
    """`value` of `kind` (a run's state, a deployment's status) in words, or as it is when the catalogue has none."""
    return say(language, f"{kind}.{value}") if f"{kind}.{value}" in CATALOGUE else value


def run_buttons(run: Run, project: str, language: str, gate_passed: bool | None) -> list[Button]:
    """What can be done next with a run in its state; a face shows them under the run's card."""
    assert run.id is not None
    if run.state in ("queued", "preparing", "training", "evaluating"):
        return [button(language, "cancel", Cancel(run=run.id), "danger")]
    if run.state == "failed":
        return [button(language, "retry", Retry(run=run.id))]
    if run.state == "deployed":
        return []
    if run.state == "reviewing":
        approve = (
            button(language, "approve", Approve(run=run.id), "primary", confirm=_confirm(run, project, language))
            if gate_passed
            else button(
                language,
                "override",
                Approve(run=run.id),
                "danger",
                asks_for_text=say(language, "approval.override_prompt", run=run.id),
            )
        )
        return [
            button(language, "review", ShowReview(run=run.id)),
            button(language, "summary", ShowReviewSummary(run=run.id)),
            button(language, "retrain", Retrain(run=run.id)),
            *([button(language, "request_approval", RequestApproval(run=run.id))] if gate_passed else []),
            approve,
        ]
    if run.state == "awaiting_approval":
        return [button(language, "approve", Approve(run=run.id), "primary", confirm=_confirm(run, project, language))]
    return []


def _confirm(run: Run, project: str, language: str) -> str:
    return say(language, "approval.confirm", run=run.id, project=project)


def run_card(session: Session, run: Run, language: str) -> Message:
    """The one message per run that a chat face keeps up to date: its state, progress, loss and gate."""
    project = session.get(Project, run.project_id)
    assert project is not None and run.id is not None
    fields = [(say(language, "run.state"), state_word(language, run.state))]
    if run.requested_by:
        fields.append((say(language, "run.requested_by"), run.requested_by))
    version = session.get(DatasetVersion, run.dataset_version_id) if run.dataset_version_id else None
    if version is not None:
        fields.append((say(language, "run.dataset"), f"v{version.number}"))
    if run.parent_run_id:
        fields.append((say(language, "run.continues"), str(run.parent_run_id)))
    job = session.exec(select(Job).where(Job.run_id == run.id).order_by(col(Job.id).desc())).first()
    if job is not None and run.state in ("preparing", "training", "evaluating") and job.status == "running":
        fields.append((say(language, "run.progress"), f"{job.stage} {job.progress:.0%}"))
    loss = last_loss(session, run.id)
    if loss is not None:
        fields.append((say(language, "run.loss"), f"{loss:.4f}"))
    evaluation = latest_evaluation(session, run.id)
    if evaluation is not None:
        fields.append((say(language, "run.gate"), _gate_word(language, evaluation.gate_passed)))
    if run.gate_override_reason:
        fields.append((say(language, "run.override"), run.gate_override_reason))
    if run.error:
        fields.append((say(language, "run.error"), run.error))
    title = run_title(run, project.name, language)
    buttons = run_buttons(run, project.name, language, evaluation.gate_passed if evaluation else None)
    return Message(title, fields=fields, buttons=buttons, kind="card", run_id=run.id, project=project.name)


def run_title(run: Run, project: str, language: str) -> str:
    """ "Run 7: shop, iteration 3"; a run refused at its start has no iteration, and its title says so."""
    if run.iteration is None:
        return say(language, "run.title_refused", run=run.id, project=project)
    return say(language, "run.title", run=run.id, project=project, iteration=run.iteration)


def runs_message(rows: list[tuple[Run, str]], language: str, *, going: bool = False) -> Message:
    if not rows:
        return Message(say(language, "runs.none"))
    lines = [
        say(
            language,
            "runs.row" if run.iteration is not None else "runs.row_refused",
            run=run.id,
            project=name,
            iteration=run.iteration,
            state=state_word(language, run.state),
        )
        + (f" · {run.requested_by}" if run.requested_by else "")
        + f" · {(run.updated_at or run.created_at):{TIME}}"
        for run, name in rows
    ]
    return Message(say(language, "runs.going" if going else "runs.title"), lines=lines)


def history_message(history: RunHistory, language: str) -> Message:
    """A run's whole story, read back from the database."""
    run = history.run
    title = run_title(run, history.project, language)
    lines = [f"{say(language, 'run.state')}: {state_word(language, run.state)}"]
    if run.parent_run_id:
        lines.append(f"{say(language, 'run.continues')}: {run.parent_run_id}")
    if run.requested_by:
        lines.append(
            f"{say(language, 'run.requested_by')}: {run.requested_by}" + (f" ({run.platform})" if run.platform else "")
        )
    if run.error:
        lines.append(f"{say(language, 'run.error')}: {run.error}")
    if run.gate_override_reason:
        lines.append(f"{say(language, 'run.override')}: {run.gate_override_reason}")
    for event in history.transitions:
        detail = event.detail or {}
        origin, to = detail.get("from", "?"), detail.get("to", event.action)
        why = f": {detail['reason']}" if detail.get("reason") else ""
        where = say(language, "history.where", platform=event.platform) if event.platform else ""
        when = f"{event.created_at:{TIME}}"
        lines.append(say(language, "history.move", when=when, origin=origin, to=to, who=event.actor, where=where) + why)
    if history.jobs:
        lines.append(f"{say(language, 'history.jobs')}:")
        lines += [
            say(language, "history.job", job=job.arq_job_id, stage=job.stage, status=job.status, attempt=job.attempt)
            for job in history.jobs
        ]
    if history.metric_count and history.last_loss is not None:
        lines.append(f"{say(language, 'run.loss')}: {history.last_loss:.4f} ({history.metric_count} steps)")
    for evaluation in history.evaluations:
        gate = _gate_word(language, evaluation.gate_passed)
        reasons = f" ({'; '.join(map(str, evaluation.gate_reasons))})" if evaluation.gate_reasons else ""
        lines.append(
            say(language, "history.evaluation", id=evaluation.id, judge=evaluation.judge_kind, gate=gate) + reasons
        )
    if history.reviews:
        counted = Counter(review.verdict for review in history.reviews)
        verdicts = ", ".join(f"{say(language, f'verdict.{v}')} {n}" for v, n in sorted(counted.items()))
        who = ", ".join(sorted({review.reviewer for review in history.reviews}))
        lines.append(say(language, "history.reviews", count=len(history.reviews), who=who, verdicts=verdicts))
    for deployment in history.deployments:
        approved = f" ({deployment.approved_by})" if deployment.approved_by else ""
        lines.append(
            say(
                language,
                "history.deployment",
                id=deployment.id,
                version=deployment.version_name,
                status=deployment.status,
            )
            + approved
        )
    announced = [event for event in history.events if (event.payload or {}).get("stage") != "run"]
    if announced:
        lines.append(f"{say(language, 'history.events')}:")
        lines += [
            f"{event.created_at:{TIME}} {event.type} {_kept_event_summary(event.payload or {})}" for event in announced
        ]
    return Message(title, lines=lines, run_id=run.id, project=history.project)


def _kept_event_summary(payload: dict) -> str:
    text = payload.get("headline") or payload.get("message") or payload.get("error") or payload.get("summary")
    stage = str(payload.get("stage", ""))
    if text:
        return f"{stage}: {text}"
    step = f" {payload['step']}" if payload.get("step") else ""
    return f"{stage}{step}" + (f" ({payload['state']})" if payload.get("state") else "")


def report_message(session: Session, run: Run, evaluation: Evaluation, language: str) -> Message:
    """An evaluation for the thread: the gate and why, the key numbers, what changed since the last iteration, the
    weak sub-scenarios; the charts as images and the HTML report as a file; what to do next as buttons."""
    project = session.get(Project, run.project_id)
    assert project is not None and run.id is not None
    gate = _gate_word(language, evaluation.gate_passed)
    scores = evaluation.scores or {}
    judge = scores.get("judge") or {}
    means = judge.get("means") or {}
    lines = [str(reason) for reason in evaluation.gate_reasons or []] if not evaluation.gate_passed else []
    lines.append(
        say(
            language,
            "report.score",
            tuned=_number((means.get("tuned") or {}).get("overall")),
            base=_number((means.get("base") or {}).get("overall")),
        )
    )
    lines += _trained_on_lines(scores, language)
    win_rate = (judge.get("pairwise") or {}).get("win_rate")
    fields = [
        (
            say(language, "report.judge"),
            f"{evaluation.judge_kind}" + (f" ({evaluation.judge_model})" if evaluation.judge_model else ""),
        )
    ]
    if win_rate is not None:
        fields.append((say(language, "report.win_rate"), f"{win_rate:.0%}"))
    comparison = iteration_comparison(session, run.id, evaluation=evaluation)
    if comparison is not None:
        lines += [
            say(language, "report.since", iteration=comparison.parent_iteration, line=line) for line in comparison.lines
        ]
    lines += [str(line) for line in (scores.get("weakest") or {}).get("summary") or []]
    store = get_artifact_store()
    artifacts = session.exec(
        select(Artifact).where(Artifact.run_id == run.id, col(Artifact.key).contains(f"evaluations/{evaluation.id}/"))
    ).all()
    images = [store.path(a.key) for a in artifacts if a.kind == "chart"]
    files = [store.path(a.key) for a in artifacts if a.kind == "report" and a.key.endswith(".html")]
    return Message(
        say(language, "report.title", run=run.id, gate=gate),
        lines=lines,
        fields=fields,
        tables=gate_tables(scores, language),
        images=sorted(images),
        files=files,
        buttons=run_buttons(run, project.name, language, evaluation.gate_passed),
        kind="report",
        run_id=run.id,
        project=project.name,
    )


def gate_tables(scores: dict, language: str) -> list[Table]:
    """The gate's checks as a table: each check, its value against its threshold, its status in words, and why."""
    checks = (scores.get("gate") or {}).get("checks") or []
    if not checks:
        return []
    columns = [say(language, f"gate.column.{name}") for name in ("check", "value", "threshold", "status", "why")]
    rows = [
        [
            str(check["name"]),
            "—" if check.get("value") is None else f"{check['value']:.3g}",
            "—" if check.get("threshold") is None else f"{check['op']} {check['threshold']:g}",
            say(language, f"check.{check['status']}"),
            str(check.get("message") or ""),
        ]
        for check in checks
    ]
    return [Table(columns, rows)]


def _trained_on_lines(scores: dict, language: str) -> list[str]:
    """What the scores are over when the run trained on some test questions, and how many it trained on."""
    trained = scores.get("trained_on") or {}
    if not trained:
        return []
    unseen = (scores.get("judge") or {}).get("samples") or 0
    lines = [say(language, "report.unseen", n=unseen) if unseen else say(language, "report.nothing_unseen")]
    for kind, entry in (("preference_pairs", "report.trained_pairs"), ("sft_samples", "report.trained_sft")):
        if trained.get(kind):
            lines.append(say(language, entry, n=len(trained[kind])))
    return lines


def review_cards(run: Run, judgements: list[Judgement], latest: dict[int, str], language: str) -> list[Message]:
    """One card per judged sample, weakest first, with Keep, Fix (asks for the answer) and Drop."""
    assert run.id is not None
    head = Message(say(language, "review.title", run=run.id, n=len(judgements)), run_id=run.id, kind="review")
    cards = [head]
    for judgement in judgements:
        assert judgement.id is not None
        fields = [
            (say(language, "review.question"), _quote(judgement.question)),
            (say(language, "review.reference"), _quote(judgement.reference or "")),
            (say(language, "review.answer"), _quote(judgement.tuned_answer or "")),
        ]
        if judgement.tags:
            fields.append((say(language, "review.tags"), ", ".join(map(str, judgement.tags))))
        if judgement.reason:
            fields.append((say(language, "review.reason"), _quote(judgement.reason)))
        if judgement.id in latest:
            fields.append((say(language, "review.latest"), say(language, f"verdict.{latest[judgement.id]}")))
        keep, fix, drop = (Review(run=run.id, judgement=judgement.id, verdict=v) for v in ("keep", "fix", "drop"))
        buttons = [
            button(language, "keep", keep, "primary"),
            button(language, "fix", fix, asks_for_text=say(language, "review.fix_prompt", id=judgement.id)),
            button(language, "drop", drop, "danger"),
        ]
        title = say(language, "review.card", id=judgement.id, score=_number(judgement.overall))
        cards.append(Message(title, fields=fields, buttons=buttons, kind="review", run_id=run.id))
    return cards


def summary_message(summary: ReviewSummary, run: Run, language: str) -> Message:
    """What people reviewed and what Retrain would do, the data targeted at weak sub-scenarios included."""
    assert run.id is not None
    reviewed = sum(summary.verdicts.values())
    title = say(language, "summary.title", run=run.id)
    if reviewed:
        counts = {verdict: summary.verdicts.get(verdict, 0) for verdict in ("keep", "fix", "drop")}
        lines = [say(language, "summary.counts", reviewed=reviewed, **counts)]
    else:
        lines = [say(language, "summary.nothing", run=run.id)]
    if summary.changes:
        lines.append(say(language, "summary.change", change=change_phrase(summary, language)))
        # The button says how much the reviews change ("Retrain with 3 changes"); new data comes on top.
        reviewed_changes = summary.changes - (summary.targeted.total if summary.targeted else 0)
        retrain = Retrain(run=run.id)
        label = say_count(language, "button.retrain_changes", reviewed_changes) if reviewed_changes else None
        buttons = [button(language, "retrain", retrain, "primary", label=label)]
        if summary.offers_dpo:
            lines.append(say(language, "summary.pairs", n=summary.pairs))
            dpo = Retrain(run=run.id, dpo=True)
            buttons.append(Button(say(language, "button.retrain_dpo", n=summary.pairs), dpo, spell(dpo)))
    else:
        if reviewed:
            lines.append(say(language, "summary.no_change"))
        buttons = []
    return Message(title, lines=lines, buttons=buttons, run_id=run.id)


def change_phrase(summary: ReviewSummary, language: str) -> str:
    parts = [
        say_count(language, f"change.{name}", getattr(summary, name))
        for name in ("fixed_answers", "better_references", "dropped", "new_training_samples")
        if getattr(summary, name)
    ]
    if summary.targeted:
        parts.append(targeted_phrase(summary.targeted, language))
    return ("，" if language == "zh" else ", ").join(parts)


def targeted_phrase(targeted: TargetedData, language: str) -> str:
    """ "add 40 new samples for 退货 and 发票", or the fallback's "no synthesis endpoint: oversampling 退货 ×2 ..."."""
    if targeted.mode == "oversample":
        factors = ("，" if language == "zh" else ", ").join(f"{t.tag} ×{t.factor:.3g}" for t in targeted.tags)
        return say(language, "change.oversample", factors=factors)
    tags = [t.tag for t in targeted.tags]
    named = tags[0] if len(tags) == 1 else ("、" if language == "zh" else ", ").join(tags[:-1])
    if len(tags) > 1:
        named += say(language, "word.and") + tags[-1]
    entry = "change.targeted.one" if targeted.total == 1 else "change.targeted"
    return say(language, entry, n=targeted.total, tags=named)


def event_message(event: Event, language: str) -> Message | None:
    """A line for an announced event; None for progress, which a face shows by updating the run's card (or as a
    bar, or with `progress_text`)."""
    payload, stage, run = event.payload, str(event.payload.get("stage", "")), event.run
    if event.type == "progress":
        return None
    if event.type == "stage" and stage == "run":
        origin, to = state_word(language, str(payload.get("from"))), state_word(language, str(payload.get("state")))
        text = say(language, "event.move", run=run, origin=origin, to=to, who=payload.get("by"))
        text += f": {payload['reason']}" if payload.get("reason") else ""
    elif event.type == "failure":
        text = say(language, "event.failed", run=run, stage=stage, error=payload.get("error", ""))
    elif event.type == "warning":
        text = say(language, "event.warning", run=run, message=payload.get("message", ""))
    elif event.type == "report":
        detail = payload.get("headline") or payload.get("adapter") or payload.get("markdown") or ""
        text = say(language, "event.report", run=run, stage=stage, detail=detail).rstrip()
    elif stage == "train" and payload.get("state") == "training" and payload.get("out_dir"):
        text = say(language, "event.training", run=run, folder=payload["out_dir"])
    elif stage == "evaluate" and payload.get("step"):
        text = say(language, "event.evaluate", run=run, detail=_evaluation_step(payload, language))
    else:
        detail = str(payload.get("state") or payload.get("step") or "")
        text = say(language, "event.stage", run=run, stage=stage, detail=detail).rstrip()
    kind = "error" if event.type == "failure" else "event"
    return Message(text, kind=kind, run_id=run, project=event.project)


def _evaluation_step(payload: dict, language: str) -> str:
    step = str(payload["step"])
    if step == "judge":
        return say(language, "evaluate.judge_llm" if payload.get("kind") == "llm" else "evaluate.judge_metric")
    if f"evaluate.{step}" not in CATALOGUE:
        return step
    values = {"samples": payload.get("samples"), "k": payload.get("k"), "prompts": payload.get("prompts")}
    return say(language, f"evaluate.{step}", **values)


# (payload key, label, format) of a progress event's numbers, in the order people read them
PROGRESS_NUMBERS = (
    ("loss", "loss", ".4f"),
    ("eval_loss", "eval loss", ".4f"),
    ("learning_rate", "lr", ".2e"),
    ("grad_norm", "grad norm", ".3f"),
    ("tokens_per_second", "tok/s", ".0f"),
    ("epoch", "epoch", ".2f"),
    ("eta_seconds", "ETA s", ".0f"),
)


def progress_text(event: Event) -> str:
    """A progress event as one line: `step 50/100, loss 0.0400, lr 1.00e-04, …`."""
    payload = event.payload
    parts = [f"step {payload['done']}/{payload['total']}"]
    parts += [f"{label} {payload[key]:{spec}}" for key, label, spec in PROGRESS_NUMBERS if payload.get(key) is not None]
    return ", ".join(parts)


def progress_bar(done: int, total: int | None, width: int = 20) -> str:
    """`▓▓▓▓▓░░░░░ 50%`: how far a stage is, in plain text any chat shows; without a total, just the count."""
    if not total:
        return str(done)
    filled = min(width, round(width * done / total))
    return "▓" * filled + "░" * (width - filled) + f" {min(done / total, 1.0):.0%}"


def help_message(topic: str | None, language: str) -> Message:
    if topic is not None and topic not in COMMANDS:
        return Message(
            say(language, "help.unknown_topic", topic=topic), lines=[say(language, "grammar.usage", usage="help")]
        )
    chosen = {topic: COMMANDS[topic]} if topic else COMMANDS
    lines = [f"{usage} — {zh if language == 'zh' else en}" for usage, en, zh in chosen.values()]
    if topic is None:
        lines.insert(1, START_USAGE)
        lines.append(say(language, "help.footer"))
    return Message(say(language, "help.title"), lines=lines)


def project_message(project: Project, language: str) -> Message:
    anyone = say(language, "word.anyone")
    settings = project.settings or {}

    def people(values: list | None) -> str:
        return ", ".join(map(str, values)) if values else anyone

    fields = [
        (say(language, "project.base_model"), project.base_model or say(language, "word.none")),
        (say(language, "project.template"), str((project.recipe or {}).get("template") or say(language, "word.none"))),
        (say(language, "project.requesters"), people(settings.get("requesters"))),
        (say(language, "project.reviewers"), people(project.reviewers)),
        (say(language, "project.approvers"), people(project.approvers)),
        (say(language, "project.channels"), people(settings.get("channels"))),
        (say(language, "project.language"), str(settings.get("language") or "en")),
        (
            say(language, "project.four_eyes"),
            say(language, "word.yes" if settings.get("approver_not_requester") else "word.no"),
        ),
    ]
    return Message(say(language, "project.title", project=project.name), fields=fields, project=project.name)


def deployed_message(
    project: str, version: str, run_id: int, language: str, gateway_url: str | None, lines: list[str]
) -> Message:
    """After a deployment: what serves now, the name clients call, how to call it through the gateway (curl and
    the OpenAI client, to copy) when its address is set, and Roll back."""
    lines = [*lines, say(language, "deploy.model", model=project)]
    code = gateway_snippets(gateway_url, project) if gateway_url else []
    lines.append(say(language, "deploy.call", url=gateway_url) if gateway_url else say(language, "deploy.no_gateway"))
    title = say(language, "deploy.done", project=project, version=version, run=run_id)
    buttons = rollback_buttons(project, language)
    return Message(title, lines=lines, code=code, buttons=buttons, run_id=run_id, project=project)


def deployments_message(rows: list[tuple[Deployment, Adapter]], language: str) -> Message:
    """Deployments, newest first, as a table; why any failed, whole, below it: the reason is the point."""
    if not rows:
        return Message(say(language, "deployments.none"))
    names = ("id", "version", "status", "run", "approved_by", "approved_at")
    columns = [say(language, f"deployments.column.{name}") for name in names]
    table = [
        [
            str(deployment.id),
            deployment.version_name,
            _word(language, "deployment", deployment.status),
            str(adapter.run_id or ""),
            deployment.approved_by or "",
            f"{deployment.approved_at:{TIME}}" if deployment.approved_at else "",
        ]
        for deployment, adapter in rows
    ]
    lines = [
        say(language, "deployments.failed", id=deployment.id, version=deployment.version_name, error=deployment.error)
        for deployment, _ in rows
        if deployment.error
    ]
    return Message(say(language, "deployments.title"), lines=lines, tables=[Table(columns, table)])


def gateway_snippets(gateway_url: str, model: str) -> list[str]:
    """A `curl` and an OpenAI-client call of `model` at the gateway; the key comes from the caller's environment.
    `model` is a project name, a slug, so it needs no quoting."""
    url = gateway_url.rstrip("/")
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": "Hello"}]})
    curl = (
        f"curl {url}/chat/completions \\\n"
        '  -H "Authorization: Bearer $TUNELOOP_API_KEY" \\\n'
        '  -H "Content-Type: application/json" \\\n'
        f"  -d '{body}'"
    )
    client = (
        "import os\n"
        "from openai import OpenAI\n\n"
        f'client = OpenAI(base_url="{url}", api_key=os.environ["TUNELOOP_API_KEY"])\n'
        f'reply = client.chat.completions.create(model="{model}", messages=[{{"role": "user", "content": "Hello"}}])\n'
        "print(reply.choices[0].message.content)"
    )
    return [curl, client]


def rollback_buttons(project: str, language: str) -> list[Button]:
    return [button(language, "rollback", Rollback(project=project), "danger")]


def _gate_word(language: str, passed: bool | None) -> str:
    return say(language, {True: "gate.passed", False: "gate.failed", None: "gate.undecided"}[passed])


def _number(value: float | None) -> str:
    return "–" if value is None else f"{value:.1f}"


def _quote(text: str) -> str:
    return text if len(text) <= QUOTE_LIMIT else text[: QUOTE_LIMIT - 1] + "…"
