"""The same user commands with Compose v2 (`docker compose`), where it is installed.

scripts/test.sh builds the v2 plugin (scripts/docker_compose_v2.sh) when Go is there, so
CI runs this; the thorough suite is test_compose_local.py with the legacy front end.
Here: up, every service healthy, `logs -f consumer` as text, two consumers, the audit,
and `down -v` leaving nothing.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import wait_until

from .harness import V2, Checkout, anonymous_volumes, follow, run, user_checkout, wait_healthy
from .test_compose_local import ONE_SHOTS, SERVICES, assert_consistent, owners

pytestmark = [pytest.mark.docker, pytest.mark.slow, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def v2_user(images: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Checkout]:
    status = os.environ.get("FOODPIPE_COMPOSE_V2_STATUS")
    if status:
        # scripts/test.sh builds the plugin in the background; wait for its exit status.
        done = Path(status)
        wait_until(done.exists, timeout=900, interval=1, message="the Compose v2 build")
        log = done.with_name("compose-v2.log")
        if done.read_text().strip() != "0" and log.exists():
            last = (log.read_text().strip().splitlines() or ["no output"])[-1]
            pytest.skip(f"Compose v2 could not be built: {last}")
    if run(["docker", "compose", "version"], check=False).returncode != 0:
        pytest.skip("Compose v2 is not installed (scripts/docker_compose_v2.sh builds it)")
    with user_checkout(images, tmp_path_factory, front_end=V2) as checkout:
        yield checkout


def test_v2_up_logs_scale_audit_down(v2_user: Checkout, no_leftover_volumes: set[str]) -> None:
    v2_user.compose("up", "-d", timeout=900)
    wait_healthy(v2_user, SERVICES, ONE_SHOTS, timeout=240)
    with follow(
        ["docker", "compose", "logs", "-f", "consumer"], v2_user.root, v2_user.env()
    ) as lines:
        wait_until(
            lambda: (
                any("partitions assigned" in line for line in lines)
                and any("consumer stats" in line for line in lines)
            ),
            timeout=60,
            interval=0.5,
            message=lambda: f"an assignment and a stats line in {lines[-5:]}",
        )
    assert not [line for line in lines if line.split("|", 1)[-1].strip().startswith("{")]

    v2_user.compose("up", "-d", "--scale", "consumer=2")
    wait_until(
        lambda: (found := owners(v2_user.status())) and len(found) == 2 and all(found.values()),
        timeout=120,
        interval=1,
        message="2 members sharing the partitions",
    )
    assert_consistent(v2_user, allow_lag=True)

    v2_user.compose("down", "-v", timeout=300)
    assert v2_user.project_objects() == {"containers": [], "volumes": [], "networks": []}
    assert anonymous_volumes() <= no_leftover_volumes
