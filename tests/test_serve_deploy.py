"""Promotion, rollback and sync against real `tuneloop serve` processes on loopback, which speak vLLM's LoRA
protocol: two replicas of one tiny base model, and a third started with `--max-lora-rank 4`.

The servers live for the module; every test has its own database, adapters folder and project name, so the
versions one test loads never meet another's, and whatever a test leaves loaded is unloaded after it.
Runs and adapters are rows made directly (random-weight adapters, no training)."""

import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session, select
from typer.testing import CliRunner

from bot.cli import app as cli
from engine.loop.projects import NotFoundError, get_or_create_project
from engine.serve.adapters import adapter_digest, publish
from engine.serve.deploy import (
    DeployError,
    deploy_run,
    desired_deployments,
    list_deployments,
    resolve_model_name,
    rollback,
    sync,
    version_path,
)
from engine.serve.guards import bearer, new_api_key
from engine.settings import get_settings
from engine.train.tiny import build_tiny_model
from storage.models import Adapter, AuditEvent, Deployment, Evaluation, Project, Run
from tests.serving import ServeProcess, free_port, make_adapter, running_server, start_server

PROMPT = [{"role": "user", "content": "where is my order?"}]
SQLITE_ONLY = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # the servers dominate; one engine is enough
KEY = new_api_key()  # every server's; deploys send it as TUNELOOP_VLLM_API_KEY
HEADERS = bearer(KEY)


class Farm:
    """The module's servers; `restart` replaces a replica by a fresh process on the same port."""

    def __init__(self, base: Path, logs: Path, env: dict) -> None:
        self.base, self.logs, self.env = base, logs, env
        args = ("--max-loras", "32")
        self.replicas = [start_server(base, logs, env=env, args=args, api_key=KEY) for _ in range(2)]
        self.small = start_server(base, logs, env=env, args=(*args, "--max-lora-rank", "4"), api_key=KEY)

    @property
    def urls(self) -> list[str]:
        return [replica.url for replica in self.replicas]

    def restart(self, index: int) -> None:
        old = self.replicas[index]
        old.stop()
        self.replicas[index] = start_server(
            self.base, self.logs, port=old.port, env=self.env, args=("--max-loras", "32"), api_key=KEY
        )

    def all(self) -> list[ServeProcess]:
        return [*self.replicas, self.small]


@pytest.fixture(autouse=True)
def vllm_api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TUNELOOP_VLLM_API_KEY", KEY)
    get_settings.cache_clear()


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("deploy")


@pytest.fixture(scope="module")
def base(root: Path) -> Path:
    return build_tiny_model(root / "base")


@pytest.fixture(scope="module")
def farm(root: Path, base: Path) -> Iterator[Farm]:
    servers = Farm(base, root / "logs", {"TUNELOOP_HOME": str(root / "serve-home")})
    try:
        yield servers
    finally:
        for server in servers.all():
            server.stop()


@pytest.fixture(scope="module")
def adapters(root: Path, base: Path) -> dict[str, Path]:
    made = {f"seed{seed}": make_adapter(base, root / f"adapter-{seed}", seed=seed) for seed in range(1, 5)}
    made["other_base"] = make_adapter(base, root / "adapter-other-base", seed=9, base_name="some/other-model")
    return made


@pytest.fixture
def servers(farm: Farm) -> Iterator[list[str]]:
    """The two replicas' URLs; what a test loads is unloaded after it."""
    yield farm.urls
    for server in farm.all():
        for name in loaded(server.url):
            httpx.post(f"{server.url}/v1/unload_lora_adapter", json={"lora_name": name}, headers=HEADERS, timeout=30)


@pytest.fixture
def session(db_engine: Engine) -> Iterator[Session]:
    with Session(db_engine, expire_on_commit=False) as session:
        yield session


def loaded(url: str) -> dict[str, str]:
    """Adapter name → path, as the server lists them."""
    models = httpx.get(f"{url}/v1/models", headers=HEADERS, timeout=30).json()["data"]
    return {m["id"]: m["root"] for m in models if m.get("parent")}


def answer(url: str, model: str) -> str:
    with openai.OpenAI(base_url=f"{url}/v1", api_key=KEY) as client:
        reply = client.chat.completions.create(model=model, messages=PROMPT, max_tokens=12, temperature=0)
    return reply.choices[0].message.content or ""


def add_run(session: Session, project: str, adapter: Path, base: Path, *, rank: int = 8) -> Run:
    """A run of `project` whose recorded adapter is `adapter`, as training leaves it."""
    row = get_or_create_project(session, project)
    iteration = len(session.exec(select(Run).where(Run.project_id == row.id)).all()) + 1
    run = Run(project_id=row.id, iteration=iteration, state="awaiting_approval")  # type: ignore[arg-type]
    session.add(run)
    session.flush()
    sha256, size = adapter_digest(adapter)
    session.add(
        Adapter(
            project_id=row.id,  # type: ignore[arg-type]
            run_id=run.id,
            path=str(adapter),
            sha256=sha256,
            size_bytes=size,
            base_model=str(base),
            rank=rank,
        )
    )
    session.commit()
    return run


def deploy(session: Session, run: Run, servers: list[str], by: str = "alice"):
    outcome = deploy_run(session, run.id, by, servers=servers, platform="slack")  # type: ignore[arg-type]
    session.commit()
    return outcome


def test_promotion_loads_every_replica_and_moves_the_stable_name(
    session: Session, servers: list[str], adapters: dict[str, Path], base: Path
) -> None:
    run = add_run(session, "promo", adapters["seed1"], base)
    outcome = deploy(session, run, servers)

    assert outcome.ok and outcome.changed, outcome.message
    deployment = outcome.deployment
    assert deployment.version_name == "promo-v1" and deployment.model_name == "promo"
    copy = version_path("promo", "promo-v1")
    assert copy == (get_settings().resolved_adapters_dir / "promo" / "promo-v1").resolve()
    assert adapter_digest(copy)[0] == adapter_digest(adapters["seed1"])[0]
    assert not [p for p in copy.parent.iterdir() if p.name.startswith(".")]  # no staging folder left behind
    for url in servers:
        assert loaded(url) == {"promo-v1": str(copy)}
        assert answer(url, "promo-v1") == answer(servers[0], "promo-v1")
    assert set(outcome.answers) == set(servers)
    assert [s["url"] for s in deployment.servers or []] == servers

    assert resolve_model_name(session, "promo") == "promo-v1"
    assert resolve_model_name(session, "promo-v1") == "promo-v1"
    assert resolve_model_name(session, "promo-v9") is None
    assert resolve_model_name(session, "unknown") is None

    assert (deployment.status, deployment.approved_by, deployment.previous_deployment_id) == ("active", "alice", None)
    assert deployment.approved_at is not None
    event = session.exec(select(AuditEvent).where(AuditEvent.action == "deploy.promote")).one()
    assert (event.actor, event.platform, event.subject_type, event.subject_id) == (
        "alice",
        "slack",
        "deployment",
        deployment.id,
    )
    assert event.detail and event.detail["run"] == run.id and event.detail["version"] == "promo-v1"


@SQLITE_ONLY
def test_second_promotion_switches_the_alias_and_keeps_the_first_loaded(
    session: Session, servers: list[str], adapters: dict[str, Path], base: Path
) -> None:
    first = deploy(session, add_run(session, "switch", adapters["seed1"], base), servers).deployment
    second = deploy(session, add_run(session, "switch", adapters["seed2"], base), servers)

    assert second.ok and "switch-v1 stays loaded for rollback" in second.message
    assert second.deployment.version_name == "switch-v2"
    assert second.deployment.previous_deployment_id == first.id
    session.refresh(first)
    assert first.status == "superseded"
    assert resolve_model_name(session, "switch") == "switch-v2"
    assert resolve_model_name(session, "switch-v1") == "switch-v1"  # kept, so still callable by its own name
    for url in servers:
        assert set(loaded(url)) == {"switch-v1", "switch-v2"}
        assert answer(url, "switch-v1") != answer(url, "switch-v2")


@SQLITE_ONLY
def test_rollback_moves_the_alias_back_and_reloads_where_missing(
    session: Session, servers: list[str], adapters: dict[str, Path], base: Path
) -> None:
    first = deploy(session, add_run(session, "back", adapters["seed1"], base), servers).deployment
    second = deploy(session, add_run(session, "back", adapters["seed2"], base), servers).deployment
    # A replica that lost v1 (say, a restart nobody synced): rollback loads it there before moving the alias.
    unload = {"lora_name": "back-v1"}
    httpx.post(f"{servers[1]}/v1/unload_lora_adapter", json=unload, headers=HEADERS, timeout=30).raise_for_status()

    outcome = rollback(session, "back", "bob", servers=servers, platform="telegram")
    session.commit()

    assert outcome.ok and outcome.changed and outcome.deployment.id == first.id
    assert outcome.message == "back serves back-v1 again (rolled back from back-v2)"
    assert resolve_model_name(session, "back") == "back-v1"
    session.refresh(second)
    assert (first.status, second.status) == ("active", "rolled_back")
    for url in servers:
        assert set(loaded(url)) == {"back-v1"}  # the rolled-back version is no longer wanted anywhere
    event = session.exec(select(AuditEvent).where(AuditEvent.action == "deploy.rollback")).one()
    assert (event.actor, event.platform, event.detail) == (
        "bob",
        "telegram",
        {"from": "back-v2", "to": "back-v1", "from_deployment": second.id},
    )

    with pytest.raises(DeployError, match="back-v1 is back's first deployment: there is nothing to roll back to"):
        rollback(session, "back", "bob", servers=servers)
    with pytest.raises(NotFoundError, match="no project named 'nowhere'"):
        rollback(session, "nowhere", "bob", servers=servers)


@SQLITE_ONLY
def test_same_adapter_again_changes_nothing_and_old_weights_keep_their_name(
    session: Session, servers: list[str], adapters: dict[str, Path], base: Path
) -> None:
    run = add_run(session, "again", adapters["seed1"], base)
    first = deploy(session, run, servers).deployment
    repeat = deploy(session, run, servers, by="carol")
    assert not repeat.changed and repeat.ok and repeat.deployment.id == first.id
    assert repeat.message == f"again already serves run {run.id}'s adapter as again-v1; nothing changed"
    # Another run whose adapter has the very same files is the same deployment too.
    assert not deploy(session, add_run(session, "again", adapters["seed1"], base), servers).changed
    assert len(session.exec(select(Deployment)).all()) == 1

    deploy(session, add_run(session, "again", adapters["seed2"], base), servers)
    back_to_first = deploy(session, add_run(session, "again", adapters["seed1"], base), servers)
    assert back_to_first.ok and back_to_first.deployment.version_name == "again-v1"  # same weights, same name
    assert resolve_model_name(session, "again") == "again-v1"


@SQLITE_ONLY
def test_only_the_active_and_two_previous_versions_stay_loaded(
    session: Session, servers: list[str], adapters: dict[str, Path], base: Path
) -> None:
    for seed in range(1, 5):
        outcome = deploy(session, add_run(session, "keep", adapters[f"seed{seed}"], base), servers)
        assert outcome.ok, outcome.message
    for url in servers:
        assert set(loaded(url)) == {"keep-v2", "keep-v3", "keep-v4"}
    assert [d.version_name for d in desired_deployments(session, outcome.deployment.project_id)] == [
        "keep-v4",
        "keep-v3",
        "keep-v2",
    ]
    assert resolve_model_name(session, "keep-v1") is None
    assert [d.version_name for d, _ in list_deployments(session, "keep")] == [
        "keep-v4",
        "keep-v3",
        "keep-v2",
        "keep-v1",
    ]


@SQLITE_ONLY
def test_rank_too_large_for_one_replica_is_caught_before_anything_loads(
    session: Session, servers: list[str], farm: Farm, adapters: dict[str, Path], base: Path
) -> None:
    previous = deploy(session, add_run(session, "rank", adapters["seed1"], base), servers).deployment
    targets = [servers[0], f"{farm.small.url}#max-lora-rank=4"]
    outcome = deploy(session, add_run(session, "rank", adapters["seed2"], base), targets)

    assert not outcome.ok and not outcome.changed
    assert outcome.deployment.status == "failed"
    assert f"adapter rank 8 is larger than {farm.small.url}'s --max-lora-rank 4" in outcome.message
    assert "restart vLLM with --max-lora-rank 8 or train with lora_rank ≤ 4" in outcome.message
    assert "rank-v1 is still serving" in outcome.message
    assert set(loaded(servers[0])) == {"rank-v1"} and loaded(farm.small.url) == {}
    assert not version_path("rank", "rank-v2").exists()  # not even copied
    assert resolve_model_name(session, "rank") == "rank-v1"
    session.refresh(previous)
    assert previous.status == "active"
    failed = session.exec(select(AuditEvent).where(AuditEvent.action == "deploy.failed")).one()
    assert failed.subject_id == outcome.deployment.id and "larger than" in (failed.detail or {})["error"]


@SQLITE_ONLY
def test_a_replica_that_refuses_the_load_undoes_it_on_the_others(
    session: Session, servers: list[str], farm: Farm, adapters: dict[str, Path], base: Path
) -> None:
    """Nobody told tuneloop the third server's rank limit: the pre-check passes, the server refuses, and the
    replica that had already loaded the version unloads it again."""
    deploy(session, add_run(session, "undo", adapters["seed1"], base), servers)
    outcome = deploy(session, add_run(session, "undo", adapters["seed2"], base), [*servers, farm.small.url])

    assert outcome.deployment.status == "failed"
    assert f"{farm.small.url} could not load undo-v2: LoRA rank 8 is greater than max_lora_rank 4." in outcome.message
    assert "restart vLLM with a larger --max-lora-rank" in outcome.message
    assert f"unloaded undo-v2 again from {servers[0]}, {servers[1]}" in outcome.message
    for url in servers:
        assert set(loaded(url)) == {"undo-v1"}
    assert resolve_model_name(session, "undo") == "undo-v1"
    assert resolve_model_name(session, "undo-v2") is None

    # Once the servers can take it, the same adapter deploys under the name it was first given.
    retry = deploy(session, add_run(session, "undo", adapters["seed2"], base), servers)
    assert retry.ok and retry.deployment.version_name == "undo-v2"


@SQLITE_ONLY
def test_a_replica_that_is_down_stops_the_promotion(
    session: Session, servers: list[str], adapters: dict[str, Path], base: Path
) -> None:
    down = f"http://127.0.0.1:{free_port()}"
    outcome = deploy(session, add_run(session, "down", adapters["seed1"], base), [servers[0], down])
    assert outcome.deployment.status == "failed"
    assert f"cannot ask {down} what it serves: cannot reach {down}" in outcome.message
    assert "nothing was deployed before" in outcome.message
    assert loaded(servers[0]) == {}
    assert resolve_model_name(session, "down") is None


@SQLITE_ONLY
def test_bad_adapter_path_and_wrong_base_model_fail_with_a_reason(
    session: Session, servers: list[str], adapters: dict[str, Path], base: Path, tmp_path: Path
) -> None:
    gone = tmp_path / "moved-away"
    run = add_run(session, "bad", adapters["seed1"], base)
    adapter = session.exec(select(Adapter).where(Adapter.run_id == run.id)).one()
    adapter.path = str(gone)
    session.add(adapter)
    session.commit()
    missing = deploy(session, run, servers)
    assert missing.deployment.status == "failed"
    assert f"adapter folder {gone} does not exist" in missing.message

    other = deploy(session, add_run(session, "bad", adapters["other_base"], base), servers)
    assert other.deployment.status == "failed"
    assert "the adapter was trained on some/other-model but" in other.message
    assert f"serves {base}" in other.message
    for url in servers:
        assert loaded(url) == {}
    assert [d.status for d, _ in list_deployments(session, "bad")] == ["failed", "failed"]


@SQLITE_ONLY
def test_sync_reloads_what_a_restart_lost_and_then_changes_nothing(
    session: Session, servers: list[str], farm: Farm, adapters: dict[str, Path], base: Path
) -> None:
    deploy(session, add_run(session, "sync", adapters["seed1"], base), servers)
    deploy(session, add_run(session, "sync", adapters["seed2"], base), servers)
    farm.restart(1)
    assert loaded(servers[1]) == {}

    report = sync(session, servers=servers)
    assert report.loaded == [(servers[1], "sync-v2"), (servers[1], "sync-v1")]
    assert (report.unloaded, report.problems) == ([], [])
    assert set(loaded(servers[1])) == {"sync-v1", "sync-v2"}
    assert answer(servers[1], "sync-v2") == answer(servers[0], "sync-v2")

    again = sync(session, servers=servers, project="sync")
    assert not again.changed and again.problems == []

    # A version that should not be there (an unload that failed earlier) is unloaded; others' adapters are not.
    rollback(session, "sync", "dave", servers=servers)
    session.commit()
    stray = str(version_path("sync", "sync-v2"))
    for name in ("sync-v2", "not-ours"):
        body = {"lora_name": name, "lora_path": stray}
        httpx.post(f"{servers[0]}/v1/load_lora_adapter", json=body, headers=HEADERS, timeout=60).raise_for_status()
    down = f"http://127.0.0.1:{free_port()}"
    report = sync(session, servers=[*servers, down])
    assert report.unloaded == [(servers[0], "sync-v2")] and report.loaded == []
    assert len(report.problems) == 1 and report.problems[0].startswith(
        f"cannot ask {down} what it serves: cannot reach"
    )
    assert set(loaded(servers[0])) == {"sync-v1", "not-ours"}


@SQLITE_ONLY
def test_nothing_to_deploy_is_an_error_before_anything_is_tried(
    session: Session, adapters: dict[str, Path], base: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TUNELOOP_VLLM_URLS", raising=False)
    get_settings.cache_clear()
    run = add_run(session, "none", adapters["seed1"], base)
    with pytest.raises(DeployError, match=re.escape("no vLLM servers to deploy to: set TUNELOOP_VLLM_URLS")):
        deploy_run(session, run.id, "alice")  # type: ignore[arg-type]
    with pytest.raises(DeployError, match="a server URL starts with http"):
        deploy_run(session, run.id, "alice", servers=["gpu-1:8000"])  # type: ignore[arg-type]
    with pytest.raises(NotFoundError, match="no run 999"):
        deploy_run(session, 999, "alice")
    bare = Run(project_id=run.project_id, iteration=2, state="training")
    session.add(bare)
    session.flush()
    with pytest.raises(DeployError, match=f"run {bare.id} has no adapter to deploy yet \\(the run is training\\)"):
        deploy_run(session, bare.id, "alice", servers=["http://127.0.0.1:1"])  # type: ignore[arg-type]
    assert session.exec(select(Deployment)).all() == []


@SQLITE_ONLY
def test_cli_deploy_deployments_rollback_and_sync(
    db_url: str,
    db_engine: Engine,
    servers: list[str],
    adapters: dict[str, Path],
    base: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TUNELOOP_DATABASE_URL", db_url)
    monkeypatch.delenv("TUNELOOP_VLLM_URLS", raising=False)
    get_settings.cache_clear()
    with Session(db_engine, expire_on_commit=False) as session:
        runs = [add_run(session, "cli", adapters[f"seed{seed}"], base) for seed in (1, 2)]
        evaluating = add_run(session, "cli", adapters["seed1"], base)
        evaluating.state = "evaluating"
        session.get(Project, evaluating.project_id).approvers = ["erin"]
        session.add_all(
            [evaluating, *(Evaluation(run_id=run.id, judge_kind="metric", gate_passed=True) for run in runs)]
        )
        session.commit()
    runner = CliRunner()

    def tuneloop(*args: str) -> tuple[int, str]:
        result = runner.invoke(cli, list(args))
        return result.exit_code, result.output

    # The attack: deploying a run still being evaluated, as someone who is not an approver. Deploy is an approval.
    code, out = tuneloop("deploy", "--run", str(evaluating.id), "--approved-by", "anyone")
    assert code == 2 and "anyone may not approve or roll back deployments in cli" in out, out
    code, out = tuneloop("deploy", str(evaluating.id), "--by", "erin")
    assert code == 2 and f"run {evaluating.id} is evaluating; only a run in reviewing or awaiting_approval" in out
    with Session(db_engine) as session:
        assert session.exec(select(Deployment)).all() == []
        assert session.get(Run, evaluating.id).state == "evaluating"
        refused = session.exec(select(AuditEvent).where(AuditEvent.action == "refused.approve")).one()
        assert refused.actor == "anyone" and refused.platform == "cli"

    code, out = tuneloop("deploy", str(runs[0].id), "--by", "erin")
    assert code == 2 and "no vLLM servers to deploy to" in out and "Traceback" not in out
    code, out = tuneloop("retry", str(runs[0].id), "--by", "erin")
    assert code == 2 and "approve it again to retry" in out

    monkeypatch.setenv("TUNELOOP_VLLM_URLS", f'["{servers[0]}", "{servers[1]}"]')
    get_settings.cache_clear()
    for run in runs:
        code, out = tuneloop("deploy", str(run.id), "--by", "erin")
        assert code == 0, out
    assert "cli now serves cli-v2" in out and "answered the test prompt" in out
    code, out = tuneloop("deploy", "--run", str(runs[1].id), "--approved-by", "erin")  # the old spelling
    assert code == 2 and "notice: --run is now positional" in out and f"run {runs[1].id} is deployed" in out

    code, out = tuneloop("deployments", "--project", "cli")
    assert code == 0 and "cli-v2" in out and "active" in out and "superseded" in out and "erin" in out

    code, out = tuneloop("rollback", "cli", "--by", "erin")
    assert code == 0 and "cli serves cli-v1 again" in out
    code, out = tuneloop("rollback", "--project", "cli", "--by", "erin")
    assert code == 2 and "nothing to roll back to" in out

    code, out = tuneloop("serve", "sync")
    assert code == 0 and "nothing changed" in out

    code, out = tuneloop("deploy", "999")
    assert code == 1 and "no run 999" in out
    # The operator's way around approval, audited: the same adapter again, to a server that is down.
    down = f"http://127.0.0.1:{free_port()}"
    code, out = tuneloop("deploy", str(runs[1].id), "--unapproved", "re-publish after an outage", "--server", down)
    assert code == 2 and "failed (cli-v1 is still serving)" in out and "Traceback" not in out
    with Session(db_engine) as session:
        audited = session.exec(select(AuditEvent).where(AuditEvent.action == "run.deploy_unapproved")).one()
        assert audited.detail["reason"] == "re-publish after an outage"
    code, out = tuneloop("deployments")
    assert code == 0 and "failed" in out


def test_publish_copies_whole_checked_files_and_never_replaces_a_version(
    adapters: dict[str, Path], tmp_path: Path
) -> None:
    source = adapters["seed1"]
    sha256, _ = adapter_digest(source)
    destination = tmp_path / "adapters" / "cs" / "cs-v1"
    assert publish(source, destination, sha256) is True
    assert adapter_digest(destination)[0] == sha256
    assert [p.name for p in destination.parent.iterdir()] == ["cs-v1"]  # the staging folder is gone
    assert publish(source, destination, sha256) is False  # already there: nothing to do

    other_sha256, _ = adapter_digest(adapters["seed2"])
    with pytest.raises(DeployError, match="already holds other files than this adapter"):
        publish(adapters["seed2"], destination, other_sha256)
    with pytest.raises(DeployError, match="changed after training recorded them"):
        publish(source, tmp_path / "adapters" / "cs" / "cs-v2", other_sha256)
    assert [p.name for p in destination.parent.iterdir()] == ["cs-v1"]  # no half-written copy


@SQLITE_ONLY
def test_weights_loaded_under_our_version_name_are_replaced_by_deploy_and_by_sync(
    session: Session, servers: list[str], adapters: dict[str, Path], base: Path
) -> None:
    """The attack: someone who reaches a server's admin API loads their own adapter under the name the next
    deployment will get. Without the key the server refuses; with it (a leaked key, an open vLLM), deploy and sync
    find the name listed from a path that is not the published copy, unload it, load ours, and say so."""
    deploy(session, add_run(session, "swap", adapters["seed1"], base), servers)
    evil = {"lora_name": "swap-v2", "lora_path": str(adapters["seed3"])}
    refused = httpx.post(f"{servers[0]}/v1/load_lora_adapter", json=evil, timeout=60)
    assert (refused.status_code, refused.json()) == (401, {"error": "Unauthorized"})
    assert "swap-v2" not in loaded(servers[0])

    for url in servers:
        httpx.post(f"{url}/v1/load_lora_adapter", json=evil, headers=HEADERS, timeout=60).raise_for_status()
    evil_answer = answer(servers[0], "swap-v2")
    outcome = deploy(session, add_run(session, "swap", adapters["seed2"], base), servers)

    assert outcome.ok and outcome.deployment.version_name == "swap-v2", outcome.message
    published = version_path("swap", "swap-v2")
    assert len(outcome.warnings) == 2
    for url, warning in zip(servers, outcome.warnings, strict=True):
        assert f"{url} listed swap-v2 from {adapters['seed3']}, not from its published copy {published}" in warning
        assert loaded(url)["swap-v2"] == str(published)
        assert answer(url, "swap-v2") != evil_answer

    # The version kept for rollback, swapped on one replica: sync puts the published copy back.
    unload = {"lora_name": "swap-v1"}
    httpx.post(f"{servers[0]}/v1/unload_lora_adapter", json=unload, headers=HEADERS, timeout=30).raise_for_status()
    evil["lora_name"] = "swap-v1"
    httpx.post(f"{servers[0]}/v1/load_lora_adapter", json=evil, headers=HEADERS, timeout=60).raise_for_status()
    report = sync(session, servers=servers, project="swap")
    assert report.loaded == [(servers[0], "swap-v1")] and report.problems == []
    (replaced,) = report.replaced
    assert f"{servers[0]} listed swap-v1 from {adapters['seed3']}, not from its published copy" in replaced
    assert loaded(servers[0])["swap-v1"] == str(version_path("swap", "swap-v1"))
    assert answer(servers[0], "swap-v1") == answer(servers[1], "swap-v1")
    assert not sync(session, servers=servers, project="swap").changed


@SQLITE_ONLY
def test_a_rollback_target_evicted_by_max_loras_answers_again(
    session: Session, adapters: dict[str, Path], base: Path, root: Path
) -> None:
    """A server that holds one adapter's weights at a time (vLLM's --max-loras 1): the second deployment evicts the
    first, which stays listed, and a rollback to it loads its weights again and answers as it did."""
    with running_server(base, root / "logs", args=("--max-loras", "1"), api_key=KEY) as small:
        first = deploy(session, add_run(session, "evict", adapters["seed1"], base), [small.url])
        first_answer = answer(small.url, "evict-v1")
        second = deploy(session, add_run(session, "evict", adapters["seed2"], base), [small.url])
        assert second.ok, second.message
        stats = httpx.get(f"{small.url}/stats", timeout=30).json()
        assert (stats["loaded_adapters"], stats["resident_adapters"]) == (2, 1)  # evict-v1 evicted, still listed

        back = rollback(session, "evict", "bob", servers=[small.url])
        session.commit()

        assert back.ok and back.deployment.id == first.deployment.id, back.message
        assert back.answers[small.url] == first.answers[small.url]
        assert answer(small.url, "evict-v1") == first_answer
        assert httpx.get(f"{small.url}/stats", timeout=30).json()["adapter_reloads"] >= 1
