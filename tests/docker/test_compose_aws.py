"""docker-compose.aws.yml with its real memory and CPU limits, under a realistic load.

The measurement is tests/docker/footprint.py; the committed figures come from its
command form with a 3-minute steady phase. Here the steady phase is
``FOODPIPE_AWS_STEADY_S`` seconds (60 by default, to keep CI within its budget); the
20,000-order backlog is the same.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from .footprint import AWS_FILE, check, markdown, measure
from .harness import Checkout, anonymous_volumes

pytestmark = [pytest.mark.docker, pytest.mark.slow, pytest.mark.timeout(1200)]


@pytest.fixture
def aws_user(
    images: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Checkout]:
    checkout = Checkout.create(tmp_path_factory.mktemp("aws"), images, AWS_FILE)
    checkout.setup_env_file()
    try:
        yield checkout
    finally:
        logs = checkout.compose("logs", "--no-color", "--tail", "200", check=False, timeout=120)
        (tmp_path_factory.getbasetemp() / f"{checkout.project}.log").write_text(logs.stdout)
        checkout.down("-v")


def test_aws_file_fits_a_t2_small_under_load(
    aws_user: Checkout, no_leftover_volumes: set[str]
) -> None:
    steady = float(os.environ.get("FOODPIPE_AWS_STEADY_S", "60"))
    result = measure(aws_user, steady_s=steady, backlog=20_000)
    print(markdown(result))
    assert check(result) == []
    services = {c["service"] for c in result["containers"]}
    assert {"kafka", "postgres", "producer", "consumer"} <= services
    assert result["steady_rows"] >= steady * 10 * 0.8, "the default rate did not reach the table"
    aws_user.compose("down", "-v", timeout=300)
    assert aws_user.project_objects() == {"containers": [], "volumes": [], "networks": []}
    assert anonymous_volumes() <= no_leftover_volumes
