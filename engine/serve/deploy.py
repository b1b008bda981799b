"""Promotion, rollback and sync of LoRA adapters on vLLM servers: the database holds the desired state and the
servers are made to match it, through vLLM's runtime LoRA protocol (engine/serve/vllm.py).

Stable names. vLLM only ever sees version names (`customer_service-v3`), and a version name always means the same
weights: it is never loaded with different ones, so vLLM's prefix cache, keyed by LoRA name (vllm#42125), cannot
answer from a stale version. The stable name clients call (`customer_service`, the project's name) is an alias
tuneloop resolves: the project's one Deployment with status "active" maps it to a version name
(`resolve_model_name`, called per request by the gateway). Promotion and rollback move the alias by committing it.

Version numbers count the distinct adapters (by sha256) the project has ever tried to deploy: the same files
deployed again get their old name back, new files the next number, and a number is never given to other weights,
not even after a failed attempt, whose copy the engine may not have freed (vllm#54839).

Trust. A version name listed on a server is taken for ours only when the server lists it from the published copy
(`adapters_dir/PROJECT/VERSION`) and that copy still has the recorded sha256 (`publish` checks it). Anything else
under one of our names (someone who reached a server's admin API loaded other weights as the next version, say) is
unloaded and ours loaded in its place, and the outcome says so: a deployment never promotes weights it did not load.

Desired state: per project, the active deployment and the KEEP_PREVIOUS deployments before it (the chain of
`previous_deployment_id`, which is where rollback goes) stay loaded on every server, so that rollback is instant;
any other version of the project is unloaded. Adapters tuneloop did not name are never touched.

Promotion is all replicas or none: the adapter is checked against every server first (rank, base model), copied
into the shared adapters folder (`adapters_dir/PROJECT/VERSION`, whole or not at all), loaded on each server,
verified there (listed, and answering a test prompt through the OpenAI API); a failure anywhere unloads what this
attempt loaded and leaves the previous version serving. A failed attempt is kept as a "failed" Deployment row.

Functions take the caller's session and never commit, so the alias moves exactly when the caller commits.
The project's row is locked (SELECT ... FOR UPDATE, on PostgreSQL) while its deployments change, so two
promotions of one project, or a promotion and a sync, take turns.
"""

from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from sqlmodel import Session, col, select

from engine.loop.projects import NotFoundError, get_project
from engine.serve.adapters import AdapterFiles, DeployError, compatibility_problems, publish, read_adapter_files
from engine.serve.vllm import VLLMClient, VLLMError
from engine.settings import get_settings
from storage.models import Adapter, AuditEvent, Deployment, Project, Run, utcnow

KEEP_PREVIOUS = 2  # earlier versions kept loaded for an instant rollback
SMOKE_PROMPT = "Hello!"
SMOKE_MAX_TOKENS = 8


@dataclass
class DeployOutcome:
    deployment: Deployment  # the active one after the action; the failed one when it failed
    changed: bool  # whether what the stable name serves changed
    message: str  # one line (more for a failure) for a person
    answers: dict[str, str] = field(default_factory=dict)  # server → its answer to the test prompt
    warnings: list[str] = field(default_factory=list)  # e.g. an old version a server would not unload

    @property
    def ok(self) -> bool:
        return self.deployment.status == "active"


@dataclass
class SyncReport:
    loaded: list[tuple[str, str]] = field(default_factory=list)  # (server, version name)
    unloaded: list[tuple[str, str]] = field(default_factory=list)
    replaced: list[str] = field(default_factory=list)  # versions found with other weights, each a sentence
    problems: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.loaded or self.unloaded or self.replaced)


def deploy_run(
    session: Session,
    run_id: int,
    approved_by: str,
    *,
    servers: Sequence[str] | None = None,
    platform: str | None = None,
) -> DeployOutcome:
    """Promote run `run_id`'s adapter to its project's stable name on every server (`settings.vllm_urls` unless
    `servers` is given). Raises DeployError (or NotFoundError) when there is nothing to try; an attempt that fails
    is returned as a failed deployment, with the previous version still serving."""
    run = session.get(Run, run_id)
    if run is None:
        raise NotFoundError(f"no run {run_id}")
    adapter = session.exec(select(Adapter).where(Adapter.run_id == run_id).order_by(col(Adapter.id).desc())).first()
    if adapter is None:
        raise DeployError(f"run {run_id} has no adapter to deploy yet (the run is {run.state})")
    if adapter.finetuning_type not in ("lora", "qlora"):
        raise DeployError(
            f"run {run_id} fine-tuned the whole model ({adapter.finetuning_type}), which cannot be loaded into a "
            "running vLLM: serve it as its own vLLM model, or train a LoRA adapter"
        )
    project = _locked_project(session, run.project_id)
    active = _active(session, project.id)
    if active is not None and _adapter(session, active).sha256 == adapter.sha256:
        message = f"{project.name} already serves run {run_id}'s adapter as {active.version_name}; nothing changed"
        return DeployOutcome(active, changed=False, message=message)

    with _clients(servers) as clients:
        version = _version_name(session, project, adapter)
        deployment = Deployment(
            project_id=project.id,  # type: ignore[arg-type]
            adapter_id=adapter.id,  # type: ignore[arg-type]
            model_name=project.name,
            version_name=version,
            servers=[{"url": client.url} for client in clients],
            previous_deployment_id=active.id if active else None,
            approved_by=approved_by,
            approved_at=utcnow(),
        )
        session.add(deployment)
        session.flush()
        detail = {"run": run_id, "adapter": adapter.id, "sha256": adapter.sha256, "version": version}
        try:
            files = read_adapter_files(Path(adapter.path))
            problems = [problem for client in clients for problem in _problems_on(client, files)]
            if problems:
                raise DeployError("\n".join(problems))
            destination = version_path(project.name, version)
            publish(files.path, destination, adapter.sha256)
            answers, replaced = _load_everywhere(clients, version, destination)
        except (DeployError, OSError) as error:
            deployment.status, deployment.error = "failed", str(error)
            _audit(session, approved_by, platform, "deploy.failed", deployment, {**detail, "error": str(error)})
            serving = f"{active.version_name} is still serving" if active else "nothing was deployed before"
            message = f"deploying run {run_id} as {version} failed ({serving}):\n{error}"
            return DeployOutcome(deployment, changed=False, message=message)

        if active is not None:
            active.status = "superseded"
            session.add(active)
        deployment.status = "active"
        deployment.servers = [{"url": url, "answer": answer} for url, answer in answers.items()]
        session.add(deployment)
        previous = active.version_name if active else None
        _audit(session, approved_by, platform, "deploy.promote", deployment, {**detail, "previous": previous})
        session.flush()
        warnings = replaced + _prune(session, project, clients)
    kept = f"; {previous} stays loaded for rollback" if previous else ""
    message = f"{project.name} now serves {version} (run {run_id}) on {len(answers)} server(s){kept}"
    return DeployOutcome(deployment, changed=True, message=message, answers=answers, warnings=warnings)


def rollback(
    session: Session,
    project: str,
    by: str,
    *,
    servers: Sequence[str] | None = None,
    platform: str | None = None,
) -> DeployOutcome:
    """Move `project`'s stable name back to the deployment before the active one, loading that version first on any
    server that lacks it (all servers or none). The rolled-back deployment is marked "rolled_back"."""
    row = _locked_project(session, get_project(session, project).id)  # type: ignore[arg-type]
    active = _active(session, row.id)
    if active is None:
        raise DeployError(f"{project} has no active deployment to roll back")
    previous = session.get(Deployment, active.previous_deployment_id) if active.previous_deployment_id else None
    if previous is None:
        raise DeployError(f"{active.version_name} is {project}'s first deployment: there is nothing to roll back to")
    adapter = _adapter(session, previous)
    with _clients(servers) as clients:
        destination = version_path(project, previous.version_name)
        try:
            publish(Path(adapter.path), destination, adapter.sha256)
            answers, replaced = _load_everywhere(clients, previous.version_name, destination)
        except OSError as error:
            raise DeployError(f"cannot put {previous.version_name}'s files in place: {error}") from None
        active.status, previous.status = "rolled_back", "active"
        session.add_all([active, previous])
        detail = {"from": active.version_name, "to": previous.version_name, "from_deployment": active.id}
        _audit(session, by, platform, "deploy.rollback", previous, detail)
        session.flush()
        warnings = replaced + _prune(session, row, clients)
    message = f"{project} serves {previous.version_name} again (rolled back from {active.version_name})"
    return DeployOutcome(previous, changed=True, message=message, answers=answers, warnings=warnings)


def sync(session: Session, *, servers: Sequence[str] | None = None, project: str | None = None) -> SyncReport:
    """Make every server match the database: load the versions that should be there (after a restart they are
    gone) and unload the versions of the project that should not. Idempotent; a server that cannot be reached is
    reported and the others are still synced."""
    if project is not None:
        projects = [get_project(session, project)]
    else:
        with_deployments = select(Deployment.project_id).distinct()
        projects = list(session.exec(select(Project).where(col(Project.id).in_(with_deployments))).all())
    report = SyncReport()
    with _clients(servers) as clients:
        for row in projects:
            _locked_project(session, row.id)  # type: ignore[arg-type]
            for client in clients:
                _converge(session, row, client, report, load=True)
    return report


def resolve_model_name(session: Session, name: str) -> str | None:
    """The version name a request for `name` goes to: a stable name → its active version; a version name → itself
    while it is deployed (active or kept for rollback); anything else → None."""
    version = session.exec(
        select(Deployment.version_name).where(Deployment.model_name == name, Deployment.status == "active")
    ).first()
    if version is not None:
        return version
    row = session.exec(select(Deployment).where(Deployment.version_name == name)).first()
    if row is None:
        return None
    return name if name in {d.version_name for d in desired_deployments(session, row.project_id)} else None


def list_deployments(session: Session, project: str | None = None) -> list[tuple[Deployment, Adapter]]:
    """Deployments, newest first, with their adapters; only `project`'s when given."""
    query = select(Deployment, Adapter).join(Adapter)
    if project is not None:
        query = query.where(Deployment.project_id == get_project(session, project).id)
    return list(session.exec(query.order_by(col(Deployment.id).desc())).all())


def desired_deployments(session: Session, project_id: int) -> list[Deployment]:
    """The active deployment and the KEEP_PREVIOUS before it: the versions every server should have loaded."""
    chain: list[Deployment] = []
    current = _active(session, project_id)
    while current is not None and len(chain) <= KEEP_PREVIOUS:
        chain.append(current)
        current = session.get(Deployment, current.previous_deployment_id) if current.previous_deployment_id else None
    return chain


def version_path(project: str, version: str) -> Path:
    """Where a version's files live in the adapters folder every server reads (the same path on each of them)."""
    return (get_settings().resolved_adapters_dir / project / version).resolve()


def smoke_answer(client: VLLMClient, model: str) -> str:
    """`model`'s answer to a short test prompt, through the OpenAI API the clients use."""
    import openai  # loads with a deployment's smoke test, not with every command

    api = openai.OpenAI(
        base_url=client.base_url, api_key=client.api_key or "EMPTY", timeout=client.timeout, max_retries=0
    )
    try:
        reply = api.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": SMOKE_PROMPT}],
            max_tokens=SMOKE_MAX_TOKENS,
            temperature=0,
        )
    except openai.APIError as error:
        raise DeployError(f"{client.url} loaded {model} but it did not answer a test prompt: {error}") from None
    finally:
        api.close()
    if not reply.choices:
        raise DeployError(f"{client.url} loaded {model} but its answer to a test prompt had no choices")
    return reply.choices[0].message.content or ""


def _load_everywhere(clients: list[VLLMClient], version: str, path: Path) -> tuple[dict[str, str], list[str]]:
    """Load `version` from `path` on every server that lacks it, or lists it from elsewhere, and check each answers:
    (server → answer, a sentence per version replaced). All or none: on any failure, unload it from the servers this
    call loaded it on and raise DeployError."""
    loaded_here: list[VLLMClient] = []
    replaced: list[str] = []
    try:
        for client in clients:
            try:
                listing = _listing(client)
                impostor = _unload_impostor(client, version, path, listing)
                if impostor or version not in listing:
                    client.load_adapter(version, str(path))
                    loaded_here.append(client)
                replaced += [impostor] if impostor else []
                if _listing(client).get(version) != str(path):
                    raise DeployError(f"{client.url} accepted {version} but does not list it from {path}")
            except VLLMError as error:
                raise DeployError(_explain_load(client, version, path, error)) from None
        return {client.url: smoke_answer(client, version) for client in clients}, replaced
    except DeployError as error:
        undone, stuck = [], []
        for client in loaded_here:
            try:
                client.unload_adapter(version)
                undone.append(client.url)
            except VLLMError as unload_error:
                stuck.append(f"{client.url} ({unload_error})")
        note = f"\nunloaded {version} again from {', '.join(undone)}" if undone else ""
        if stuck:
            note += f"\ncould not unload {version} from {', '.join(stuck)}: `tuneloop serve sync` retries"
        raise DeployError(f"{error}{note}") from None


def _unload_impostor(client: VLLMClient, version: str, path: Path, listing: dict[str, str | None]) -> str | None:
    """Unload `version` where the server lists it from anywhere but its published copy `path`; a sentence saying
    so, or None when the server does not list it or lists ours."""
    if version not in listing or listing[version] == str(path):
        return None
    client.unload_adapter(version)
    return (
        f"{client.url} listed {version} from {listing[version]}, not from its published copy {path}: those weights "
        "were not tuneloop's, so they were unloaded and the published copy loaded in their place (who else can "
        "reach this server's admin API?)"
    )


def _explain_load(client: VLLMClient, version: str, path: Path, error: VLLMError) -> str:
    """The server's reason, and what a person can do about it."""
    reason = f"{client.url} could not load {version}: {error}"
    text = error.message.lower()
    if error.kind in ("connection", "timeout"):
        hint = "is the server running, and is its URL right (TUNELOOP_VLLM_URLS)?"
    elif error.kind == "framework" and error.status in (404, 405):
        hint = "the server has no runtime LoRA API: start vLLM with --enable-lora, VLLM_ALLOW_RUNTIME_LORA_UPDATING=1"
    elif error.status == 404 or "no adapter found" in text or "not found" in text:
        hint = (
            f"the server cannot read {path}: every server must see the adapters folder at the same path "
            "(TUNELOOP_ADAPTERS_DIR on a shared volume)"
        )
    elif "rank" in text:
        hint = "restart vLLM with a larger --max-lora-rank, or train with a smaller lora_rank"
    elif "max_loras" in text or "max-loras" in text or "capacity" in text:
        hint = "the server holds as many adapters as it may: restart vLLM with a larger --max-loras"
    else:
        hint = "see the server's log for the cause"
    return f"{reason}\n  → {hint}"


def _problems_on(client: VLLMClient, files: AdapterFiles) -> list[str]:
    try:
        models = client.models()
    except VLLMError as error:
        return [f"cannot ask {client.url} what it serves: {error}"]
    return compatibility_problems(files, client.url, client.max_lora_rank, models)


def _prune(session: Session, project: Project, clients: list[VLLMClient]) -> list[str]:
    """Unload the project's versions that are no longer wanted; what could not be done becomes a warning."""
    report = SyncReport()
    for client in clients:
        _converge(session, project, client, report, load=False)
    return report.problems


def _converge(session: Session, project: Project, client: VLLMClient, report: SyncReport, *, load: bool) -> None:
    desired = {d.version_name: d for d in desired_deployments(session, project.id)}  # type: ignore[arg-type]
    ours = set(session.exec(select(Deployment.version_name).where(Deployment.project_id == project.id)).all())
    try:
        listing = _listing(client)
    except VLLMError as error:
        report.problems.append(f"cannot ask {client.url} what it serves: {error}")
        return
    for version, deployment in desired.items():
        if not load:
            continue
        adapter = _adapter(session, deployment)
        path = version_path(project.name, version)
        try:
            publish(Path(adapter.path), path, adapter.sha256)  # also checks the published copy is still the same
            impostor = _unload_impostor(client, version, path, listing)
            if impostor or version not in listing:
                client.load_adapter(version, str(path))
                report.loaded.append((client.url, version))
            report.replaced += [impostor] if impostor else []
        except DeployError as error:
            report.problems.append(f"cannot load {version} on {client.url}: {error}")
        except VLLMError as error:
            report.problems.append(_explain_load(client, version, path, error))
    for version in sorted((listing.keys() & ours) - desired.keys()):
        try:
            client.unload_adapter(version)
            report.unloaded.append((client.url, version))
        except VLLMError as error:
            report.problems.append(f"cannot unload {version} from {client.url}: {error}")


def _listing(client: VLLMClient) -> dict[str, str | None]:
    """Each name the server lists, with the path it loaded it from (`root`)."""
    return {model.id: model.root for model in client.models()}


@contextmanager
def _clients(servers: Sequence[str] | None) -> Iterator[list[VLLMClient]]:
    urls = list(servers) if servers else get_settings().vllm_urls
    if not urls:
        raise DeployError(
            "no vLLM servers to deploy to: set TUNELOOP_VLLM_URLS (a JSON list, e.g. '[\"http://gpu-1:8000\"]') "
            "or pass --server URL"
        )
    with ExitStack() as stack:
        key = get_settings().vllm_api_key
        try:
            clients = [stack.enter_context(VLLMClient(url, api_key=key and key.get_secret_value())) for url in urls]
        except ValueError as error:
            raise DeployError(str(error)) from None
        yield clients


def _version_name(session: Session, project: Project, adapter: Adapter) -> str:
    """The name these weights have had in the project, or the next number (see the module's docstring)."""
    rows = session.exec(
        select(Deployment.version_name, Adapter.sha256)
        .join(Adapter)
        .where(Deployment.project_id == project.id)
        .order_by(col(Deployment.id))
    ).all()
    names: dict[str, str] = {}
    for version, sha256 in rows:
        names.setdefault(sha256, version)
    return names.get(adapter.sha256) or f"{project.name}-v{len(names) + 1}"


def _active(session: Session, project_id: int) -> Deployment | None:
    query = select(Deployment).where(Deployment.project_id == project_id, Deployment.status == "active")
    return session.exec(query.order_by(col(Deployment.id).desc())).first()


def _adapter(session: Session, deployment: Deployment) -> Adapter:
    adapter = session.get(Adapter, deployment.adapter_id)
    assert adapter is not None  # a foreign key
    return adapter


def _locked_project(session: Session, project_id: int) -> Project:
    return session.exec(select(Project).where(Project.id == project_id).with_for_update()).one()


def _audit(
    session: Session, actor: str, platform: str | None, action: str, deployment: Deployment, detail: dict
) -> None:
    session.add(
        AuditEvent(
            actor=actor,
            platform=platform,
            action=action,
            project_id=deployment.project_id,
            subject_type="deployment",
            subject_id=deployment.id,
            detail=detail,
        )
    )
