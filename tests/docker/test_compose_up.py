"""The Compose stacks for real: up, 100 orders end to end, two consumers, down.

Opt-in and slow (it builds the image and pulls Kafka and PostgreSQL): run it with

    .venv/bin/pytest -m docker tests/docker        # or FOODPIPE_DOCKER_TESTS=1

on a machine with a Docker engine and Docker Compose (v2 plugin or the older
docker-compose). Everywhere else every test here is skipped with the reason. Each stack
runs under its own project name, on free host ports, with generated passwords in a
private env file, and is removed with its volumes at the end.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.compose_support import COMPOSE_FILES, example_env
from tests.support import REPO, wait_until

pytestmark = [pytest.mark.docker, pytest.mark.slow, pytest.mark.timeout(1800)]


def _compose_front_end() -> list[str] | None:
    if shutil.which("docker") and _ok(["docker", "compose", "version"]):
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return None


def _ok(argv: list[str]) -> bool:
    try:
        return subprocess.run(argv, capture_output=True, timeout=30, check=False).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _why_not(config: pytest.Config) -> str | None:
    """None when the tests can run; otherwise the reason to skip."""
    selected = "docker" in (config.getoption("-m") or "")
    if not selected and os.environ.get("FOODPIPE_DOCKER_TESTS") != "1":
        return "opt-in: run `pytest -m docker tests/docker` (or FOODPIPE_DOCKER_TESTS=1)"
    if shutil.which("docker") is None:
        return "no docker command on PATH"
    info = subprocess.run(
        ["docker", "info", "--format", "{{.ServerVersion}}"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if info.returncode != 0:
        first = (info.stderr.strip().splitlines() or ["no answer"])[0]
        return f"no Docker engine answers (docker info: {first})"
    if _compose_front_end() is None:
        return "neither `docker compose` nor `docker-compose` is installed"
    return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class ComposeStack:
    file: Path
    project: str
    env_file: Path
    front_end: list[str]
    admin_user: str

    def compose(self, *args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                *self.front_end,
                "-p",
                self.project,
                "--env-file",
                str(self.env_file),
                "-f",
                str(self.file),
                *args,
            ],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=REPO,
            check=False,
        )

    def must(self, *args: str, timeout: float = 900) -> str:
        result = self.compose(*args, timeout=timeout)
        assert result.returncode == 0, f"compose {' '.join(args)}:\n{result.stderr[-4000:]}"
        return result.stdout

    def sql(self, query: str) -> str:
        return self.must(
            "exec", "-T", "postgres", "psql", "-U", self.admin_user, "-d", "foodpipe", "-tAc", query
        ).strip()

    def healthcheck(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                str(REPO / "scripts" / "healthcheck.sh"),
                "--compose",
                str(self.file),
                "--env-file",
                str(self.env_file),
                *args,
            ],
            env={**os.environ, "COMPOSE_PROJECT_NAME": self.project},
            capture_output=True,
            text=True,
            timeout=600,
            cwd=REPO,
            check=False,
        )


@pytest.fixture(scope="module", params=sorted(COMPOSE_FILES))
def compose_stack(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ComposeStack]:
    reason = _why_not(request.config)
    if reason:
        pytest.skip(reason)
    front_end = _compose_front_end()
    assert front_end is not None
    env = example_env()
    env.update(
        POSTGRES_PASSWORD=secrets.token_urlsafe(18),
        POSTGRES_ADMIN_PASSWORD=secrets.token_urlsafe(18),
        KAFKA_HOST_PORT=str(_free_port()),
        POSTGRES_HOST_PORT=str(_free_port()),
    )
    env_file = tmp_path_factory.mktemp("compose") / "test.env"
    env_file.write_text("".join(f"{key}={value}\n" for key, value in env.items()))
    stack = ComposeStack(
        file=COMPOSE_FILES[request.param],
        project=f"foodpipe-test-{uuid.uuid4().hex[:8]}",
        env_file=env_file,
        front_end=front_end,
        admin_user="foodpipe_admin",
    )
    try:
        # Everything but the producer, whose orders the test counts itself.
        stack.must("build")
        stack.must("up", "-d", "consumer")
        yield stack
    finally:
        logs = stack.compose("logs", "--no-color", "--tail", "200", timeout=120)
        (tmp_path_factory.getbasetemp() / f"{stack.project}.log").write_text(logs.stdout)
        stack.compose("down", "-v", "--remove-orphans", timeout=300)


def test_100_orders_go_end_to_end(compose_stack: ComposeStack) -> None:
    produced = compose_stack.compose(
        "run", "--rm", "-T", "producer", "produce", "--count", "100", "--seed", "42", "--rate", "0"
    )
    assert produced.returncode == 0, produced.stderr[-4000:]
    wait_until(
        lambda: compose_stack.sql("SELECT count(*) FROM orders") == "100",
        timeout=180,
        interval=2,
        message=lambda: f"100 rows (got {compose_stack.sql('SELECT count(*) FROM orders')})",
    )
    assert compose_stack.sql("SELECT count(DISTINCT order_id) FROM orders") == "100"
    health = compose_stack.healthcheck("--max-lag", "0", "--wait", "120")
    assert health.returncode == 0, health.stdout + health.stderr
    assert "HEALTHY (6/6 checks ok)" in health.stdout
    # The services connect as the least-privilege role, which may not delete.
    role = compose_stack.sql("SELECT has_table_privilege('foodpipe_app', 'orders', 'DELETE')")
    assert role == "f"


def test_two_consumers_share_the_partitions(compose_stack: ComposeStack) -> None:
    compose_stack.must("up", "-d", "--no-recreate", "--scale", "consumer=2", "consumer")
    health = compose_stack.healthcheck("--min-members", "2", "--json", "--wait", "180")
    assert health.returncode == 0, health.stdout + health.stderr
    assert '"assigned_partitions": 3' in health.stdout
