"""The docker suite's engine and images, once per session.

The suite runs when it is selected (``-m docker``) or when ``FOODPIPE_DOCKER_TESTS=1``
(scripts/test.sh sets it, so CI runs it). Selected but without an engine that can be
started, it fails with the scripts' one-line reason instead of skipping: a docker test
that CI skips proves nothing.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .harness import anonymous_volumes, docker_tests_wanted, engine_and_images


@pytest.fixture(scope="session")
def images(request: pytest.FixtureRequest) -> dict[str, str]:
    if not docker_tests_wanted(request.config):
        pytest.skip(
            "opt-in: `pytest -m docker` or FOODPIPE_DOCKER_TESTS=1 (scripts/test.sh sets it)"
        )
    return engine_and_images()


@pytest.fixture(scope="session")
def no_leftover_volumes(images: dict[str, str]) -> Iterator[set[str]]:
    """The anonymous volumes that existed before the suite; none may be added by it."""
    return anonymous_volumes()
