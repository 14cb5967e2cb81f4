"""The fixtures' testcontainers path, for real: the round-trip tests in containers.

The session fixture of tests/conftest.py uses testcontainers when an engine answers and
the images named by KAFKA_IMAGE / POSTGRES_IMAGE are on it. The main test run keeps the
local stack (scripts/test.sh sets FOODPIPE_TEST_STACK=local, for the fault suite), so
this test runs tests/integration/test_roundtrip.py in a child pytest with
FOODPIPE_TEST_STACK=containers and the local stand-ins named: the fixtures must start
Kafka and PostgreSQL in containers, without a pull, and every round-trip test must pass.
"""

from __future__ import annotations

import os
import re
import sys

import pytest

from tests.support import REPO

from .harness import run

pytestmark = [pytest.mark.docker, pytest.mark.slow, pytest.mark.timeout(600)]


def test_round_trip_runs_on_testcontainers(images: dict[str, str]) -> None:
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("KAFKA_BOOTSTRAP_SERVERS", "DATABASE_URL", "DATABASE_ADMIN_URL")
        and not key.startswith("PYTEST_")
    }
    env.pop("FOODPIPE_NO_DOCKER", None)
    env.update(
        FOODPIPE_TEST_STACK="containers",
        KAFKA_IMAGE=images["KAFKA_IMAGE"],
        POSTGRES_IMAGE=images["POSTGRES_IMAGE"],
    )

    def left_by_testcontainers() -> list[str]:
        # testcontainers labels what it starts; other stacks may share the engine.
        return run(
            ["docker", "ps", "-aq", "--filter", "label=org.testcontainers=true"]
        ).stdout.split()

    assert left_by_testcontainers() == []
    result = run(
        [
            sys.executable,
            "-m",
            "pytest",
            "tests/integration/test_roundtrip.py",
            "-p",
            "no:cacheprovider",
            "--no-cov",
            "-rA",
            "-q",
        ],
        cwd=REPO,
        env=env,
        timeout=540,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    passed = re.findall(r"^PASSED (\S+)", output, re.MULTILINE)
    assert passed, output[-2000:]
    assert " skipped" not in output.splitlines()[-1], output[-2000:]
    # The containers it started are gone again.
    assert left_by_testcontainers() == []
