"""CI never passes without its servers: under any truthy `CI` a test needing Redis or PostgreSQL fails when they are
unreachable (tests/conftest.py), and `.ci/run` fails when a test was skipped for a missing service, when a test
failed, or when none ran."""

import os
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
NEEDS_SERVERS = """
def test_needs_redis(redis_url):
    pass


def test_needs_postgresql(postgres_admin):
    pass
"""


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]  # nothing listens once the probe is closed


def run_without_servers(tmp_path: Path, ci: str | None) -> subprocess.CompletedProcess[str]:
    (tmp_path / "test_needs_servers.py").write_text(NEEDS_SERVERS, encoding="utf-8")
    env = {key: value for key, value in os.environ.items() if key != "CI"}
    port = closed_port()
    env |= {
        "PYTHONPATH": str(REPO),
        "TUNELOOP_TEST_REDIS_URL": f"redis://127.0.0.1:{port}/0",
        "TUNELOOP_TEST_POSTGRES_URL": f"postgresql+psycopg://postgres@127.0.0.1:{port}/test",
        **({"CI": ci} if ci is not None else {}),
    }
    command = [sys.executable, "-m", "pytest", "-p", "tests.conftest", "-ra", "-q", "-p", "no:cacheprovider"]
    return subprocess.run(
        [*command, "--rootdir", str(tmp_path), str(tmp_path)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize("ci", ["true", "1", "YES"])
def test_under_any_truthy_ci_a_test_whose_server_is_away_fails(tmp_path: Path, ci: str) -> None:
    result = run_without_servers(tmp_path, ci)
    assert result.returncode == 1, result.stdout
    assert "2 errors" in result.stdout and "skipped" not in result.stdout, result.stdout
    assert "Redis tests must run in CI" in result.stdout and "PostgreSQL tests must run in CI" in result.stdout


@pytest.mark.parametrize("ci", [None, "false"])
def test_outside_ci_a_test_whose_server_is_away_is_skipped_as_a_missing_service(tmp_path: Path, ci: str) -> None:
    result = run_without_servers(tmp_path, ci)
    assert result.returncode == 0, result.stdout
    assert "2 skipped" in result.stdout, result.stdout
    skips = [line for line in result.stdout.splitlines() if line.startswith("SKIPPED ")]
    assert len(skips) == 2 and all("service missing: " in line for line in skips), result.stdout


def fake_tools(folder: Path, make_output: str, make_status: int = 0) -> dict[str, str]:
    """A PATH whose `make` prints `make_output` and whose Redis and PostgreSQL probes answer: .ci/run's own
    judgement of a test run, without running the suite."""
    folder.mkdir()
    (folder / "make.out").write_text(make_output, encoding="utf-8")
    scripts = {
        "make": f'#!/bin/sh\ncat "{folder / "make.out"}"\nexit {make_status}\n',
        "redis-cli": "#!/bin/sh\nexit 0\n",
        "pg_isready": "#!/bin/sh\nexit 0\n",
    }
    for name, body in scripts.items():
        path = folder / name
        path.write_text(body, encoding="utf-8")
        path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return {**os.environ, "PATH": f"{folder}{os.pathsep}{os.environ['PATH']}"}


GREEN = "........\n8 passed in 1.00s\n"
SKIPPED_FOR_REDIS = (
    "........s\n=== short test summary info ===\n"
    "SKIPPED [1] tests/conftest.py:131: service missing: Redis is not reachable at 'redis://127.0.0.1:6379/0'\n"
    "8 passed, 1 skipped in 1.00s\n"
)
SKIPPED_FOR_ANOTHER_REASON = (
    "........s\n=== short test summary info ===\n"
    "SKIPPED [1] tests/test_malformed_input.py:191: needs /dev/zero\n8 passed, 1 skipped in 1.00s\n"
)


@pytest.mark.parametrize(
    ("output", "status", "green"),
    [
        (GREEN, 0, True),
        (SKIPPED_FOR_ANOTHER_REASON, 0, True),
        (SKIPPED_FOR_REDIS, 0, False),
        ("\nno tests ran in 0.01s\n", 0, False),
        ("....F\n1 failed, 4 passed in 1.00s\n", 2, False),
    ],
    ids=["passed", "skipped-for-a-platform-reason", "skipped-for-a-missing-service", "empty", "failed"],
)
def test_ci_run_is_green_only_when_tests_passed_and_none_was_skipped_for_a_missing_service(
    tmp_path: Path, output: str, status: int, green: bool
) -> None:
    result = subprocess.run(
        [str(REPO / ".ci" / "run")],
        env=fake_tools(tmp_path / "bin", output, status),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (result.returncode == 0) is green, result.stdout + result.stderr
    if output is SKIPPED_FOR_REDIS:
        assert "skipped because Redis or PostgreSQL was not reachable" in result.stderr
