"""``scripts/local_stack.sh`` keeps its generated passwords off stdout and off ``ps``.

Found by issue 17's review: ``start`` printed both database URLs, passwords included,
and the app role's password was passed on psql's command line, where ``ps`` shows it.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from ..conftest import Stack
from ..support import REPO

SCRIPT = REPO / "scripts" / "local_stack.sh"


def _passwords() -> list[str]:
    stack_dir = Path(os.environ.get("STACK_DIR") or REPO / ".stack")
    lines = (stack_dir / "secrets.env").read_text().splitlines()
    found = [line.split("=", 1)[1] for line in lines if "PASSWORD=" in line]
    assert len(found) >= 2, "secrets.env holds at least the owner's and the app role's"
    return found


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", *args], capture_output=True, text=True, timeout=300, check=False, cwd=REPO
    )


def test_start_prints_no_password_and_psql_never_gets_one_as_an_argument(stack: Stack) -> None:
    if stack.source != "local":
        pytest.skip(f"scripts/local_stack.sh is not in use (services from {stack.source})")
    # -x traces every command with its expanded arguments: what ps would show.
    result = _run("-x", str(SCRIPT), "start")
    assert result.returncode == 0, result.stderr[-2000:]
    passwords = _passwords()
    assert not [p for p in passwords if p in result.stdout], "start printed a password"
    psql_calls = [
        line.split("/psql ", 1)[1] for line in result.stderr.splitlines() if "/psql " in line
    ]
    assert any("app_role.sql" in call or "-f -" in call for call in psql_calls)
    leaks = [call for call in psql_calls for p in passwords if p in call]
    assert not leaks, "a password on psql's command line"


def test_env_gives_the_owner_url_only_when_asked(stack: Stack) -> None:
    if stack.source != "local":
        pytest.skip(f"scripts/local_stack.sh is not in use (services from {stack.source})")
    services = _run(str(SCRIPT), "env")
    assert services.returncode == 0, services.stderr
    assert "DATABASE_URL=" in services.stdout
    assert "DATABASE_ADMIN_URL" not in services.stdout
    owner = _run(str(SCRIPT), "env", "--admin")
    assert "DATABASE_ADMIN_URL=" in owner.stdout
    assert _run(str(SCRIPT), "env", "--bogus").returncode != 0
