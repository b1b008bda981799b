"""The gateway in front of real `tuneloop serve` processes: a project's stable name answers as its active version,
a promotion or rollback takes effect for the very next request, and replicas that are down are routed around.
And what it refuses: callers without its key, names nobody deployed, the LoRA admin endpoints, bodies too big or
too deep; nor does it show them replica URLs, file paths or its own API description.

Two random adapters (they answer differently) are loaded under version names on one server; the gateway runs
in-process on a free port, its database a SQLite file holding the deployments."""

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import openai
import pytest
from sqlalchemy.engine import Engine
from sqlmodel import select
from typer.testing import CliRunner

from bot.cli import app as cli
from engine.serve.guards import bearer, new_api_key
from engine.serve.local import LocalGateway, local_gateway
from engine.serve.protocol import DEFAULT_MAX_REQUEST_BYTES
from engine.train.tiny import build_tiny_model
from storage.db import session_scope
from storage.models import Adapter, Deployment, Project
from tests.serving import ServeProcess, free_port, make_adapter, running_server

STABLE = "customer_service"
VERSIONS = ("customer_service-v1", "customer_service-v2")
PROMPT = [{"role": "user", "content": "where is my order?"}]
SERVER_KEY = new_api_key()  # the model server's; the gateway sends it, clients never see it

# Every gateway test needs the deployments' database; SQLite is enough to route by it.
pytestmark = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    """One `tuneloop serve` on a tiny model, with two adapters loaded under their version names."""
    root = tmp_path_factory.mktemp("serve")
    base = build_tiny_model(root / "base")
    env = {"TUNELOOP_HOME": str(root / "home")}
    with running_server(base, root / "logs", env=env, api_key=SERVER_KEY) as process:
        for seed, version in enumerate(VERSIONS, start=1):
            adapter = make_adapter(base, root / version, seed=seed)
            body = {"lora_name": version, "lora_path": str(adapter)}
            url = f"{process.url}/v1/load_lora_adapter"
            httpx.post(url, json=body, headers=process.headers, timeout=60).raise_for_status()
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
def running_gateway(servers: list[str], engine: Engine, base_model: str | None = None) -> Iterator[LocalGateway]:
    """The gateway served by uvicorn in a thread, calling the servers with their key."""
    with local_gateway(servers, engine, upstream_api_key=SERVER_KEY, base_model=base_model) as gateway:
        yield gateway


def client(target: ServeProcess | LocalGateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=target.base_url, api_key=target.api_key, max_retries=0, timeout=60)


def answer(target: ServeProcess | LocalGateway, model: str) -> openai.types.chat.ChatCompletion:
    return client(target).chat.completions.create(model=model, messages=PROMPT, temperature=0, max_tokens=12)


def test_the_stable_name_answers_as_the_active_version_from_the_next_request(
    server: ServeProcess, deployments: Engine
) -> None:
    direct = {version: answer(server, version).choices[0].message.content for version in VERSIONS}
    assert direct[VERSIONS[0]] != direct[VERSIONS[1]]  # else the test could not tell the versions apart
    with running_gateway([server.url], deployments) as gateway:
        first = answer(gateway, STABLE)
        assert (first.model, first.choices[0].message.content) == (STABLE, direct[VERSIONS[0]])

        activate(deployments, VERSIONS[1])  # promotion
        promoted = answer(gateway, STABLE)
        assert (promoted.model, promoted.choices[0].message.content) == (STABLE, direct[VERSIONS[1]])
        # A deployed version answers by its own name too.
        pinned = answer(gateway, VERSIONS[1])
        assert (pinned.model, pinned.choices[0].message.content) == (VERSIONS[1], direct[VERSIONS[1]])

        activate(deployments, VERSIONS[0])  # rollback
        assert answer(gateway, STABLE).choices[0].message.content == direct[VERSIONS[0]]
        # Rolled back, and not kept for a later rollback: the server still has it, the gateway no longer serves it.
        with pytest.raises(openai.NotFoundError, match=f"The model `{VERSIONS[1]}` does not exist"):
            answer(gateway, VERSIONS[1])


def test_streaming_passes_through_under_the_stable_name(server: ServeProcess, deployments: Engine) -> None:
    direct = answer(server, VERSIONS[0]).choices[0].message.content
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


def test_models_lists_the_stable_names_and_no_paths(server: ServeProcess, deployments: Engine) -> None:
    with running_gateway([server.url], deployments) as gateway:
        listed = {card.id: card.model_dump() for card in client(gateway).models.list()}
        raw = httpx.get(f"{gateway.base_url}/models", headers=bearer(gateway.api_key)).text
    with running_gateway([server.url], deployments, base_model=base_name(server)) as with_base:
        with_base_listed = [card.id for card in client(with_base).models.list()]
    assert list(listed) == [STABLE]  # not the versions, not the base, not what else the server has loaded
    assert listed[STABLE]["root"] == VERSIONS[0]
    assert "/" not in raw and server.url not in raw  # no file path, no replica URL
    assert with_base_listed == [STABLE, base_name(server)]


def base_name(server: ServeProcess) -> str:
    models = httpx.get(f"{server.base_url}/models", headers=server.headers).json()["data"]
    return next(card["id"] for card in models if not card.get("parent"))


def test_only_deployed_names_reach_the_servers_and_the_base_only_when_configured(
    server: ServeProcess, deployments: Engine
) -> None:
    base = base_name(server)
    with running_gateway([server.url], deployments) as gateway:
        for name in ("no_such_project", base, VERSIONS[1]):  # VERSIONS[1] is loaded on the server, never deployed
            with pytest.raises(openai.NotFoundError) as error:
                answer(gateway, name)
            assert error.value.response.json()["error"]["message"] == f"The model `{name}` does not exist."
    with running_gateway([server.url], deployments, base_model=base) as with_base:
        through_gateway = answer(with_base, base)
        with pytest.raises(openai.NotFoundError):
            answer(with_base, VERSIONS[1])
    assert through_gateway.choices[0].message.content == answer(server, base).choices[0].message.content


def test_keys_are_required_and_the_admin_api_is_not_there(
    server: ServeProcess, deployments: Engine, tmp_path: Path
) -> None:
    """The attacks on the gateway: no key, a wrong key, the server's own key (the gateway's clients never hold it,
    and it opens nothing here), and the LoRA admin endpoints with a valid key."""
    adapter = {"lora_name": "customer_service-v3", "lora_path": str(tmp_path)}
    with running_gateway([server.url], deployments) as gateway:
        chat = {"model": STABLE, "messages": PROMPT, "max_tokens": 4}
        for headers in ({}, bearer("wrong"), bearer(SERVER_KEY), {"Authorization": gateway.api_key}):
            refused = httpx.post(f"{gateway.base_url}/chat/completions", json=chat, headers=headers)
            assert (refused.status_code, refused.json()) == (401, {"error": "Unauthorized"})
            assert httpx.get(f"{gateway.base_url}/models", headers=headers).status_code == 401
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=gateway.base_url, api_key="wrong", max_retries=0).models.list()
        for action in ("load", "unload"):
            url = f"{gateway.base_url}/{action}_lora_adapter"
            assert httpx.post(url, json=adapter, headers=bearer(gateway.api_key)).status_code == 404
        health = httpx.get(f"{gateway.url}/health")  # open, as vLLM's, for probes: it says only how many are up
        paths = [httpx.get(f"{gateway.url}{path}").status_code for path in ("/docs", "/redoc", "/openapi.json")]
    assert "customer_service-v3" not in httpx.get(f"{server.base_url}/models", headers=server.headers).text
    assert health.json() == {"status": "ok", "servers_up": 1, "servers_down": 0}
    assert paths == [404, 404, 404]


def test_no_replica_up_is_a_503_that_names_no_url(deployments: Engine) -> None:
    down = f"http://127.0.0.1:{free_port()}"
    with running_gateway([down], deployments) as gateway:
        with pytest.raises(openai.APIStatusError) as error:
            answer(gateway, STABLE)
        health = httpx.get(f"{gateway.url}/health")
    assert error.value.status_code == 503
    assert error.value.response.json()["error"]["message"] == "no model server answered"
    assert health.status_code == 503 and health.json()["error"]["message"] == "no model server is healthy"
    assert "127.0.0.1" not in health.text + error.value.response.text


def test_requests_go_around_a_replica_that_is_down(server: ServeProcess, deployments: Engine) -> None:
    down = f"http://127.0.0.1:{free_port()}"
    expected = answer(server, VERSIONS[0]).choices[0].message.content
    with running_gateway([down, server.url], deployments) as gateway:
        answers = [answer(gateway, STABLE).choices[0].message.content for _ in range(4)]
        health = httpx.get(f"{gateway.url}/health").json()
    assert answers == [expected] * 4
    assert health == {"status": "ok", "servers_up": 1, "servers_down": 1}


def test_malformed_deep_and_huge_bodies_are_400s_and_413s_in_the_openai_form(deployments: Engine) -> None:
    with running_gateway([f"http://127.0.0.1:{free_port()}"], deployments) as gateway:
        url, headers = f"{gateway.base_url}/chat/completions", bearer(gateway.api_key)
        not_json = httpx.post(url, content=b"{not json", headers=headers)
        deep = httpx.post(url, content=b"[" * 100_000 + b"]" * 100_000, headers=headers)
        huge = httpx.post(url, content=b" " * (DEFAULT_MAX_REQUEST_BYTES + 1), headers=headers)
        no_model = httpx.post(url, json={"messages": PROMPT}, headers=headers)
        missing = httpx.get(f"{gateway.base_url}/no_such_endpoint", headers=headers)
    assert not_json.status_code == 400
    assert not_json.json()["error"]["message"] == "the request body is not valid JSON"
    assert deep.status_code == 400  # not a 500 with a RecursionError
    assert deep.json()["error"]["message"] == "the request body is nested too deeply"
    assert (huge.status_code, huge.text) == (413, "Content Too Large")  # Starlette's, before the body is read
    assert no_model.status_code == 400
    assert missing.status_code == 404 and set(missing.json()["error"]) == {"message", "type", "param", "code"}


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        (["gateway"], {"TUNELOOP_API_KEYS": "k"}, "no model servers to route to"),
        (["gateway", "--servers", "vllm:8000"], {"TUNELOOP_API_KEYS": "k"}, "vllm:8000: a server URL starts with"),
        (["gateway", "--servers", "http://vllm:8000"], {}, "no API key: pass --api-key KEY or set TUNELOOP_API_KEYS"),
    ],
)
def test_the_command_refuses_bad_servers_and_no_key_plainly(
    db_url: str, argv: list[str], env: dict[str, str], message: str
) -> None:
    env = {"TUNELOOP_DATABASE_URL": db_url, "TUNELOOP_VLLM_URLS": "[]", "TUNELOOP_API_KEYS": "", **env}
    result = CliRunner().invoke(cli, argv, env=env)
    assert result.exit_code == 2
    assert message in result.output and "Traceback" not in result.output
