"""docker-compose.yml can only be parsed here (no Docker): check what parsing can prove.

Every tuneloop service's command must be a real `tuneloop` command with valid options, resolved
through the same command tree the terminal uses; vLLM must be able to hot-load adapters.
"""

import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import typer.main
import yaml

try:  # typer >= 0.2x carries its own fork of click
    from typer._click.exceptions import UsageError
except ImportError:  # older typer is built on click itself
    from click.exceptions import UsageError

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text(encoding="utf-8"))
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
TUNELOOP_IMAGE = COMPOSE["x-tuneloop"]["image"]
TUNELOOP_SERVICES = sorted(name for name, service in SERVICES.items() if service.get("image") == TUNELOOP_IMAGE)


def _argv(service: dict[str, Any]) -> list[str]:
    """What the container runs: entrypoint + command, each a list or a shell-style string."""
    argv: list[str] = []
    for part in (service.get("entrypoint"), service.get("command")):
        if part is None:
            continue
        argv += shlex.split(part) if isinstance(part, str) else [str(item) for item in part]
    return argv


def _resolve(argv: list[str]) -> Any:
    """Walk `tuneloop <group>... <command> --options` as the CLI would, invoking nothing; the leaf's
    context comes back, with the parsed values in `.params`.

    Raises UsageError (no such command or option, bad or missing value...) for a command, option or
    value the CLI does not accept: the terminal's own parsing, through click's make_context and
    resolve_command on the command tree typer builds.
    """
    from bot.cli import app

    command = typer.main.get_command(app)
    ctx = command.make_context("tuneloop", list(argv))
    while hasattr(command, "resolve_command"):  # a group: find the subcommand, then parse its options
        # A group's make_context keeps the subcommand and its arguments back; its invoke() does the same.
        rest = [*ctx._protected_args, *ctx.args]
        if not rest:
            raise UsageError("a command group, not a command", ctx=ctx)
        name, sub, args = command.resolve_command(ctx, rest)
        assert name is not None and sub is not None
        command, ctx = sub, sub.make_context(name, args, parent=ctx)
    return ctx


def _volume_targets(service: dict[str, Any], volume: str) -> set[str]:
    """The container paths where named volume `volume` is mounted (short or long syntax)."""
    targets = set()
    for entry in service.get("volumes", []):
        if isinstance(entry, str):
            source, _, rest = entry.partition(":")
            if source == volume:
                targets.add(rest.split(":")[0])
        elif entry.get("source") == volume:
            targets.add(entry["target"])
    return targets


def test_there_are_tuneloop_services() -> None:
    assert "migrate" in TUNELOOP_SERVICES


@pytest.mark.parametrize("name", TUNELOOP_SERVICES)
def test_command_exists_in_the_cli(name: str) -> None:
    argv = _argv(SERVICES[name])
    assert argv[:1] == ["tuneloop"], f"{name}: runs {argv!r}, not the tuneloop command"
    try:
        ctx = _resolve(argv[1:])
    except UsageError as error:
        pytest.fail(f"{name}: `{shlex.join(argv)}` is not a valid tuneloop command: {error.format_message()}")
    assert ctx.command.callback is not None, f"{name}: `{shlex.join(argv)}` names no runnable command"


def test_migrate_runs_db_upgrade_after_postgres() -> None:
    migrate = SERVICES["migrate"]
    assert _argv(migrate) == ["tuneloop", "db", "upgrade"]
    assert migrate["restart"] == "no"  # a one-shot job
    assert migrate["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_resolution_rejects_unknown_commands_and_options() -> None:
    # Guards the test above: the walk must fail for what the CLI does not have.
    for argv in (["nope"], ["db", "nope"], ["db", "upgrade", "--no-such-option"], ["db"]):
        with pytest.raises(UsageError):
            _resolve(argv)
    assert _resolve(["db", "upgrade", "--revision", "head"]).params == {"revision": "head"}


def test_tuneloop_services_share_settings() -> None:
    for name in TUNELOOP_SERVICES:
        env = SERVICES[name]["environment"]
        assert env["TUNELOOP_DATABASE_URL"].startswith("postgresql+psycopg://"), name
        assert env["TUNELOOP_DATABASE_URL"].endswith("@postgres:5432/tuneloop"), name
        assert env["TUNELOOP_REDIS_URL"].startswith("redis://:${REDIS_PASSWORD:?set REDIS_PASSWORD}@redis:6379"), name
        assert env["TUNELOOP_HOME"] in _volume_targets(SERVICES[name], "tuneloop-home"), name


def test_postgres_and_redis() -> None:
    postgres, redis = SERVICES["postgres"], SERVICES["redis"]
    assert "/var/lib/postgresql/data" in _volume_targets(postgres, "postgres-data")
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])
    assert "ping" in redis["healthcheck"]["test"]
    # Whoever can write to Redis can queue work: it asks for the password the tuneloop services' URL carries.
    assert '--requirepass "$$REDISCLI_AUTH"' in " ".join(_argv(redis))
    assert redis["environment"]["REDISCLI_AUTH"] == "${REDIS_PASSWORD:?set REDIS_PASSWORD}"
    assert {"postgres-data", "redis-data", "adapters", "tuneloop-home"} <= set(COMPOSE["volumes"])


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_every_image_has_a_fixed_tag(name: str) -> None:
    # A moving tag (none, :latest, a bare major) is another image the next time it is pulled.
    image = SERVICES[name]["image"]
    written = re.fullmatch(r"[^:]+:(?:\$\{\w+:-(?P<default>[^}]+)\}|(?P<tag>[^:{}]+))", image)  # tag, or ${VAR:-tag}
    assert written, f"{name}: {image} has no tag"
    assert re.fullmatch(r"v?\d+\.\d+(\.\d+)*", written["default"] or written["tag"]), f"{name}: {image}"


def test_vllm_hot_loads_lora_adapters() -> None:
    vllm = SERVICES["vllm"]
    assert vllm["image"].startswith("vllm/vllm-openai")
    argv = _argv(vllm)
    assert "--enable-lora" in argv
    assert argv[argv.index("--max-lora-rank") + 1] == "64"
    # ${VLLM_MAX_LORAS:-4}: during a promotion the outgoing and the incoming version serve side by side.
    max_loras = argv[argv.index("--max-loras") + 1]
    assert int(max_loras.removeprefix("${VLLM_MAX_LORAS:-").removesuffix("}")) >= 2
    assert vllm["environment"]["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] in ("True", "true", "1")
    devices = vllm["deploy"]["resources"]["reservations"]["devices"]
    assert any(d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", []) for d in devices)


def test_adapters_volume_is_shared_at_one_path() -> None:
    # A path tuneloop hands to vLLM's /v1/load_lora_adapter must exist at that path inside vLLM.
    (vllm_path,) = _volume_targets(SERVICES["vllm"], "adapters")
    for name in TUNELOOP_SERVICES:
        assert _volume_targets(SERVICES[name], "adapters") == {vllm_path}, name
        assert SERVICES[name]["environment"]["TUNELOOP_ADAPTERS_DIR"] == vllm_path, name


def test_gateway_routes_to_vllm_and_is_what_clients_reach() -> None:
    gateway, vllm = SERVICES["gateway"], SERVICES["vllm"]
    params = _resolve(_argv(gateway)[1:]).params
    vllm_argv = _argv(vllm)
    vllm_port = vllm_argv[vllm_argv.index("--port") + 1]
    assert params["servers"] == [f"http://vllm:{vllm_port}"]
    assert params["host"] == "0.0.0.0"  # reachable from outside its container
    assert gateway["ports"] == [f"{params['port']}:{params['port']}"]
    # Clients must not reach vLLM around the gateway: there, stable names do not exist.
    assert "ports" not in vllm
    assert gateway["environment"]["TUNELOOP_VLLM_URLS"] == f'["http://vllm:{vllm_port}"]'
    assert gateway["depends_on"]["migrate"]["condition"] == "service_completed_successfully"


def _required_variable(value: str) -> str:
    """The variable in `${NAME:?message}`, compose's form for one that must be set (compose refuses to start
    without it); fails for a literal value, a default (`:-`) or an optional variable."""
    assert value.startswith("${") and ":?" in value and value.endswith("}"), f"{value!r} is not a required variable"
    return value[2 : value.index(":?")]


def test_vllm_and_the_gateway_need_keys_and_tuneloop_sends_vllm_its_own() -> None:
    # vLLM reads --api-key from VLLM_API_KEY; without it anyone on the network could load adapters (issue 15).
    vllm_key = _required_variable(SERVICES["vllm"]["environment"]["VLLM_API_KEY"])
    assert not any(arg.startswith("--api-key") for arg in _argv(SERVICES["vllm"]))  # not in the process list
    for name in TUNELOOP_SERVICES:
        assert _required_variable(SERVICES[name]["environment"]["TUNELOOP_VLLM_API_KEY"]) == vllm_key, name
    # The gateway is published on every interface, so it must have client keys of its own, not vLLM's.
    gateway = SERVICES["gateway"]
    assert _resolve(_argv(gateway)[1:]).params["host"] == "0.0.0.0" and gateway["ports"]
    assert _required_variable(gateway["environment"]["TUNELOOP_API_KEYS"]) not in ("", vllm_key)
    assert all(
        "TUNELOOP_API_KEYS" not in SERVICES[name]["environment"] for name in TUNELOOP_SERVICES if name != "gateway"
    )
