"""docker-compose.aws.yml with its real memory and CPU limits, under a realistic load.

One stack for the module, two measurements on it, in order:

1. the footprint (tests/docker/footprint.py): the default rate for
   ``FOODPIPE_AWS_STEADY_S`` seconds (30 by default, to keep CI within its budget; the
   committed figures come from a 3-minute run), then a 20,000-order backlog drained;
   every container under its limit, the total under the t2.small budget, no restart,
   no OOM kill, audit CONSISTENT;
2. the stability run (tests/docker/soak.py) as a 2-minute smoke test: a consumer crash
   and a scale to 2 and back, each recovered (lag back to 0), nothing OOM-killed, the
   audit CONSISTENT, the report and chart written. The committed run lasts an hour.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from . import soak
from .footprint import AWS_FILE, check, markdown, measure
from .harness import Checkout, anonymous_volumes, user_checkout

pytestmark = [pytest.mark.docker, pytest.mark.slow, pytest.mark.timeout(1200)]


@pytest.fixture(scope="module")
def aws_user(
    images: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Checkout]:
    with user_checkout(images, tmp_path_factory, AWS_FILE) as checkout:
        yield checkout


def test_aws_file_fits_a_t2_small_under_load(aws_user: Checkout) -> None:
    steady = float(os.environ.get("FOODPIPE_AWS_STEADY_S", "30"))
    result = measure(aws_user, steady_s=steady, backlog=20_000)
    print(markdown(result))
    assert check(result) == []
    services = {c["service"] for c in result["containers"]}
    assert {"kafka", "postgres", "producer", "consumer"} <= services
    assert result["steady_rows"] >= steady * 10 * 0.8, "the default rate did not reach the table"


def test_two_minute_soak_recovers_from_every_event(aws_user: Checkout, tmp_path: Path) -> None:
    result = soak.soak(aws_user, minutes=2, period=5)
    print(soak.markdown(result))
    soak.chart(result, tmp_path / "soak.png")
    assert (tmp_path / "soak.png").stat().st_size > 10_000
    assert soak.problems(result) == []
    names = [e["event"] for e in result["events"]]
    assert names.count("lag back to 0") == 2, names
    assert "consumer restarted by the restart policy" in names
    assert "2 members" in names
    # Every long-running container was sampled, with descriptors and threads.
    sampled = {name.rsplit("_", 2)[-2] for name in result["series"]}
    assert {"kafka", "postgres", "producer", "consumer"} <= sampled
    assert all("fds" in entry and "threads" in entry for entry in result["series"].values())


def test_aws_down_v_leaves_nothing(aws_user: Checkout, no_leftover_volumes: set[str]) -> None:
    aws_user.compose("down", "-v", timeout=300)
    assert aws_user.project_objects() == {"containers": [], "volumes": [], "networks": []}
    assert anonymous_volumes() <= no_leftover_volumes
