"""The README's no-Docker run command, end to end, on the local stack."""

from __future__ import annotations

import subprocess

import pytest

from ..conftest import Stack
from ..support import REPO


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_run_local_count_produces_consumes_and_audits(stack: Stack) -> None:
    if stack.source != "local":
        pytest.skip(f"scripts/run_local.sh drives the local stack (services from {stack.source})")
    result = subprocess.run(
        [
            "bash",
            str(REPO / "scripts" / "run_local.sh"),
            "--count",
            "60",
            "--rate",
            "0",
            "--consumers",
            "2",
        ],
        capture_output=True,
        text=True,
        timeout=280,
        cwd=REPO,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "producer confirmed 60 orders" in result.stderr
    assert "foodpipe audit: CONSISTENT" in result.stdout
    # The services' settings: the app role's password, readable by this user only, and
    # no owner URL (the producer and the consumer run as the least-privilege role).
    env_file = REPO / ".stack" / "local.env"
    assert env_file.stat().st_mode & 0o077 == 0, oct(env_file.stat().st_mode)
    assert "DATABASE_ADMIN_URL" not in env_file.read_text()
    assert "DATABASE_URL=" in env_file.read_text()
    # Nothing of the run is left behind.
    assert not list((REPO / ".stack" / "run").glob("*.pid"))
