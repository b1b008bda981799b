"""The gateway in front of real `tuneloop serve` processes: a project's stable name answers as its active version,
a promotion or rollback takes effect for the very next request, and replicas that are down are routed around.

Two random adapters (they answer differently) are loaded under version names on one server; the gateway runs
in-process on a free port, its database a SQLite file holding the deployments."""

from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import openai
import pytest
from sqlalchemy.engine import Engine
from sqlmodel import select
from typer.testing import CliRunner

from bot.cli import app as cli
from engine.serve.local import local_gateway
from engine.train.tiny import build_tiny_model
from storage.db import session_scope
from storage.models import Adapter, Deployment, Project
from tests.serving import ServeProcess, free_port, make_adapter, running_server

STABLE = "customer_service"
VERSIONS = ("customer_service-v1", "customer_service-v2")
PROMPT = [{"role": "user", "content": "where is my order?"}]

# Every gateway test needs the deployments' database; SQLite is enough to route by it.
pytestmark = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    """One `tuneloop serve` on a tiny model, with two adapters loaded under their version names."""
    root = tmp_path_factory.mktemp("serve")
    base = build_tiny_model(root / "base")
    with running_server(base, root / "logs", env={"TUNELOOP_HOME": str(root / "home")}) as process:
        for seed, version in enumerate(VERSIONS, start=1):
            adapter = make_adapter(base, root / version, seed=seed)
            body = {"lora_name": version, "lora_path": str(adapter)}
            httpx.post(f"{process.url}/v1/load_lora_adapter", json=body, timeout=60).raise_for_status()
        yield process


@pytest.fixture
def deployments(db_engine: Engine) -> Engine:
    """customer_service with both versions recorded, v1 active."""
    with session_scope(db_engine) as session:
        project = Project(name=STABLE, base_model="tiny")
        session.add(project)
        session.flush()
        for version in VERSIONS:
            adapter = Adapter(
                project_id=project.id, path=f"/adapters/{version}", sha256="0" * 64, size_bytes=1, base_model="tiny"
            )
            session.add(adapter)
            session.flush()
            status = "active" if version == VERSIONS[0] else "pending"
            session.add(
                Deployment(
                    project_id=project.id,
                    adapter_id=adapter.id,
                    model_name=STABLE,
                    version_name=version,
                    servers=["http://replica:8000"],
                    status=status,
                )
            )
    return db_engine


def activate(engine: Engine, version: str) -> None:
    """What a promotion or a rollback commits: the version's deployment becomes the active one."""
    with session_scope(engine) as session:
        for deployment in session.exec(select(Deployment).where(Deployment.model_name == STABLE)):
            deployment.status = "active" if deployment.version_name == version else "superseded"


@contextmanager
def running_gateway(servers: list[str], engine: Engine) -> Iterator[str]:
    """The gateway served by uvicorn in a thread; yields its root URL."""
    with local_gateway(servers, engine) as gateway:
        yield gateway.url


def client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=60)


def answer(url: str, model: str) -> openai.types.chat.ChatCompletion:
    return client(url).chat.completions.create(model=model, messages=PROMPT, temperature=0, max_tokens=12)


def test_the_stable_name_answers_as_the_active_version_from_the_next_request(
    server: ServeProcess, deployments: Engine
) -> None:
    direct = {version: answer(server.url, version).choices[0].message.content for version in VERSIONS}
    assert direct[VERSIONS[0]] != direct[VERSIONS[1]]  # else the test could not tell the versions apart
    with running_gateway([server.url], deployments) as gateway:
        first = answer(gateway, STABLE)
        assert (first.model, first.choices[0].message.content) == (STABLE, direct[VERSIONS[0]])

        activate(deployments, VERSIONS[1])  # promotion
        promoted = answer(gateway, STABLE)
        assert (promoted.model, promoted.choices[0].message.content) == (STABLE, direct[VERSIONS[1]])

        activate(deployments, VERSIONS[0])  # rollback
        assert answer(gateway, STABLE).choices[0].message.content == direct[VERSIONS[0]]

        # A version keeps its own name too, deployed or not.
        pinned = answer(gateway, VERSIONS[1])
        assert (pinned.model, pinned.choices[0].message.content) == (VERSIONS[1], direct[VERSIONS[1]])


def test_streaming_passes_through_under_the_stable_name(server: ServeProcess, deployments: Engine) -> None:
    direct = answer(server.url, VERSIONS[0]).choices[0].message.content
    with running_gateway([server.url], deployments) as gateway:
        stream = client(gateway).chat.completions.create(
            model=STABLE, messages=PROMPT, temperature=0, max_tokens=12, stream=True
        )
        chunks = list(stream)
        # Plain completions stream through the same path.
        completion = client(gateway).completions.create(model=STABLE, prompt="hello", max_tokens=4, stream=True)
        completion_models = {chunk.model for chunk in completion}
    assert len(chunks) > 2  # token by token, not one buffered reply
    assert {chunk.model for chunk in chunks} == {STABLE}
    assert "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices) == direct
    assert completion_models == {STABLE}


def test_models_lists_each_stable_name_with_its_version(server: ServeProcess, deployments: Engine) -> None:
    served = {card["id"]: card for card in httpx.get(f"{server.url}/v1/models").json()["data"]}
    with running_gateway([server.url], deployments) as gateway:
        listed = {card.id: card for card in client(gateway).models.list()}
    assert set(served) | {STABLE} == set(listed)
    stable = listed[STABLE].model_dump()
    assert stable["root"] == VERSIONS[0]
    assert stable["parent"] == served[VERSIONS[0]]["parent"]


def test_unknown_models_get_the_replicas_404_and_the_base_passes_through(
    server: ServeProcess, deployments: Engine
) -> None:
    base = next(card["id"] for card in httpx.get(f"{server.url}/v1/models").json()["data"] if not card.get("parent"))
    with running_gateway([server.url], deployments) as gateway:
        with pytest.raises(openai.NotFoundError) as error:
            answer(gateway, "no_such_project")
        through_gateway = answer(gateway, base)
    assert "no_such_project" in error.value.message
    assert through_gateway.choices[0].message.content == answer(server.url, base).choices[0].message.content


def test_no_replica_up_is_a_503_that_says_so(deployments: Engine) -> None:
    down = f"http://127.0.0.1:{free_port()}"
    with running_gateway([down], deployments) as gateway:
        with pytest.raises(openai.APIStatusError) as error:
            answer(gateway, STABLE)
        health = httpx.get(f"{gateway}/health")
    assert error.value.status_code == 503
    assert "no model server answered" in error.value.message and down in error.value.message
    assert health.status_code == 503 and down in health.json()["error"]["message"]


def test_requests_go_around_a_replica_that_is_down(server: ServeProcess, deployments: Engine) -> None:
    down = f"http://127.0.0.1:{free_port()}"
    expected = answer(server.url, VERSIONS[0]).choices[0].message.content
    with running_gateway([down, server.url], deployments) as gateway:
        answers = [answer(gateway, STABLE).choices[0].message.content for _ in range(4)]
        health = httpx.get(f"{gateway}/health").json()
    assert answers == [expected] * 4
    assert health["servers"] == {down: "down", server.url: "up"}


def test_a_malformed_request_is_a_400_in_the_openai_form(deployments: Engine) -> None:
    with running_gateway([f"http://127.0.0.1:{free_port()}"], deployments) as gateway:
        response = httpx.post(f"{gateway}/v1/chat/completions", content=b"{not json")
        missing = httpx.get(f"{gateway}/v1/no_such_endpoint")
    assert response.status_code == 400
    assert response.json()["error"]["message"] == "the request body is not valid JSON"
    assert missing.status_code == 404 and set(missing.json()["error"]) == {"message", "type", "param", "code"}


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["gateway"], "no model servers to route to"),
        (["gateway", "--servers", "vllm:8000"], "vllm:8000: a server URL starts with http://"),
    ],
)
def test_the_command_refuses_bad_servers_plainly(db_url: str, argv: list[str], message: str) -> None:
    result = CliRunner().invoke(cli, argv, env={"TUNELOOP_DATABASE_URL": db_url, "TUNELOOP_VLLM_URLS": "[]"})
    assert result.exit_code == 2
    assert message in result.output and "Traceback" not in result.output
