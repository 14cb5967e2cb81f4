"""What the setup downloads is checked, not trusted (issue 17: "pins carry no hashes").

- Python: requirements.lock and requirements-dev.lock hold every package, transitive
  ones included, with sha256 hashes; bootstrap.sh installs with ``--require-hashes``.
- Maven (the Kafka jars of the native stack) runs with strict checksums (``-C``).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ..support import REPO

LOCKS = {"requirements.txt": "requirements.lock", "requirements-dev.txt": "requirements-dev.lock"}


def requirements(path: Path) -> dict[str, list[str]]:
    """``{name: [hashes]}`` of a pip requirements file (continuation lines joined)."""
    text = re.sub(r"\\\n", " ", path.read_text())
    found: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()  # hashes never hold a "#"
        match = re.match(r"^([A-Za-z0-9_.\[\]-]+)==([^\s;]+)", line)
        if match:
            name = re.sub(r"[-_.]+", "-", match.group(1).split("[")[0]).lower()
            found[f"{name}=={match.group(2)}"] = re.findall(r"--hash=sha256:[0-9a-f]{64}", line)
    return found


@pytest.mark.parametrize(("pins", "lock"), sorted(LOCKS.items()))
def test_every_locked_package_has_hashes_and_matches_the_pins(pins: str, lock: str) -> None:
    locked = requirements(REPO / lock)
    assert locked, f"{lock} is empty"
    unhashed = [name for name, hashes in locked.items() if not hashes]
    assert not unhashed, f"{lock}: no --hash for {unhashed}"
    own = set(requirements(REPO / pins))
    if pins == "requirements-dev.txt":
        own |= set(requirements(REPO / "requirements.txt"))
    stale = own - set(locked)
    assert not stale, f"{lock} does not lock {sorted(stale)} as {pins} pins them; regenerate it"


def test_bootstrap_installs_only_hash_checked_files() -> None:
    script = (REPO / "scripts" / "bootstrap.sh").read_text()
    installs = [line for line in script.splitlines() if "pip install" in line and "#" not in line]
    assert installs
    for line in installs:
        assert "--require-hashes -r requirements-dev.lock" in line or (
            "--no-deps" in line and "--no-build-isolation" in line and "-e ." in line
        ), line


def test_maven_resolves_the_kafka_jars_with_strict_checksums() -> None:
    script = (REPO / "scripts" / "local_stack.sh").read_text()
    calls = [line for line in script.splitlines() if re.match(r"^\s*mvn\s", line)]
    assert calls
    assert all(re.search(r"\s(-C|--strict-checksums)\s", line) for line in calls), calls
