"""scripts/pin_images.sh against a real registry, and Compose running the pinned image.

No public registry can be reached where we test, so the test runs one: the registry of
go-containerregistry (``cmd/registry``, an in-memory OCI registry), built from its Go
module and listening on 127.0.0.1, which Docker trusts without TLS. The postgres
stand-in is pushed to it under a tag; then, as a user with a mirror would:

- ``scripts/pin_images.sh POSTGRES_IMAGE`` writes ``name:tag@sha256:<digest>`` into .env,
  and that digest is the one the registry itself reports for the tag;
- Compose runs ``postgres`` and ``db-init`` from exactly that reference;
- when the tag moves to a rebuilt image, the pin holds until the script runs again,
  which moves it to the new digest; a second run changes nothing;
- a wrong variable, and an image the registry does not have, are one line each.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import REPO, free_port, wait_until

from .harness import Checkout, inspect, run, wait_healthy

pytestmark = [pytest.mark.docker, pytest.mark.slow, pytest.mark.timeout(600)]

REGISTRY_MODULE = "github.com/google/go-containerregistry/cmd/registry"
REGISTRY_VERSION = "v0.22.1"
MANIFEST_TYPES = ", ".join(
    (
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    )
)


def _registry_binary(work: Path) -> Path:
    binary = REPO / ".docker-engine" / "bin" / f"oci-registry-{REGISTRY_VERSION}"
    if binary.exists():
        return binary
    if shutil.which("go") is None:
        pytest.fail("the registry for this test is built with Go, which is not installed")
    env = {**os.environ, "GOBIN": str(work), "CGO_ENABLED": "0"}
    run(
        ["go", "install", "-trimpath", f"{REGISTRY_MODULE}@{REGISTRY_VERSION}"],
        env=env,
        timeout=900,
    )
    binary.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(work / "registry", binary)
    return binary


@pytest.fixture(scope="module")
def registry(images: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``127.0.0.1:<port>`` of a registry that lives as long as this module."""
    work = tmp_path_factory.mktemp("registry")
    port = free_port()
    log = (work / "registry.log").open("w")
    server = subprocess.Popen(
        [str(_registry_binary(work)), "-port", str(port)], stdout=log, stderr=log
    )
    address = f"127.0.0.1:{port}"

    def answers() -> bool:
        try:
            with urllib.request.urlopen(f"http://{address}/v2/", timeout=2) as reply:
                return bool(reply.status == 200)
        except OSError:
            return server.poll() is not None  # ends the wait; the assert below says why

    wait_until(answers, timeout=30, interval=0.2, message="the registry at " + address)
    assert server.poll() is None, (work / "registry.log").read_text()
    try:
        yield address
    finally:
        server.terminate()
        server.wait(timeout=10)
        log.close()


def served_digest(address: str, repository: str, tag: str) -> str:
    """The digest the registry serves for ``repository:tag`` (Docker-Content-Digest)."""
    request = urllib.request.Request(
        f"http://{address}/v2/{repository}/manifests/{tag}",
        method="HEAD",
        headers={"Accept": MANIFEST_TYPES},
    )
    with urllib.request.urlopen(request, timeout=10) as reply:  # noqa: S310 - our registry
        return str(reply.headers["Docker-Content-Digest"])


def push(source: str, target: str) -> None:
    run(["docker", "tag", source, target])
    run(["docker", "push", target], timeout=300)
    run(["docker", "rmi", target])  # only the tag: pin_images.sh must pull it


def test_pin_images_pins_what_the_registry_serves_and_compose_runs_it(
    images: dict[str, str], registry: str, tmp_path: Path
) -> None:
    # The checkout's environment does not name the postgres image: .env does, as for a
    # user (Compose prefers the environment to .env).
    others = {key: value for key, value in images.items() if key != "POSTGRES_IMAGE"}
    user = Checkout.create(tmp_path, others)
    user.setup_env_file()
    tagged = f"{registry}/postgres:16-alpine"
    push(images["POSTGRES_IMAGE"], tagged)
    first = served_digest(registry, "postgres", "16-alpine")
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", first)
    env_file = user.root / ".env"
    with env_file.open("a") as env:
        env.write(f"POSTGRES_IMAGE={tagged}\n")
    try:
        pinned = user.sh(["scripts/pin_images.sh", "POSTGRES_IMAGE"], timeout=300)
        assert user.dotenv()["POSTGRES_IMAGE"] == f"{tagged}@{first}"
        assert f"POSTGRES_IMAGE={tagged}@{first} (was {tagged})" in pinned.stderr
        assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
        lines = env_file.read_text().splitlines()
        assert sum(line.startswith("POSTGRES_IMAGE=") for line in lines) == 1

        user.compose("up", "-d", "postgres", "db-init", timeout=600)
        wait_healthy(user, ["postgres"], ["db-init"], timeout=180)
        for service in ("postgres", "db-init"):
            config = inspect(user.container_ids(service)[0])["Config"]
            assert config["Image"] == f"{tagged}@{first}", service

        # The tag moves to a rebuilt image; the pin keeps the old one until asked.
        rebuilt = tmp_path / "rebuilt"
        rebuilt.mkdir()
        (rebuilt / "Dockerfile").write_text(f"FROM {tagged}@{first}\nLABEL rebuilt=yes\n")
        run(["docker", "build", "-q", "-t", tagged, str(rebuilt)], timeout=300)
        run(["docker", "push", tagged], timeout=300)
        second = served_digest(registry, "postgres", "16-alpine")
        assert second != first
        assert user.dotenv()["POSTGRES_IMAGE"] == f"{tagged}@{first}"
        moved = user.sh(["scripts/pin_images.sh", "POSTGRES_IMAGE"], timeout=300)
        assert user.dotenv()["POSTGRES_IMAGE"] == f"{tagged}@{second}"
        assert f"(was {tagged}@{first})" in moved.stderr
        again = user.sh(["scripts/pin_images.sh", "POSTGRES_IMAGE"], timeout=300)
        assert f"POSTGRES_IMAGE={tagged}@{second} (unchanged)" in again.stderr

        # Bad input: one line each, naming the problem, .env untouched.
        before = env_file.read_text()
        unknown = user.sh(["scripts/pin_images.sh", "REDIS_IMAGE"], check=False)
        assert unknown.returncode == 2
        assert unknown.stderr.strip().count("\n") == 0
        assert "unknown image variable 'REDIS_IMAGE'" in unknown.stderr
        with env_file.open("a") as env:
            env.write(f"PROMETHEUS_IMAGE={registry}/prometheus:v0-missing\n")
        missing = user.sh(["scripts/pin_images.sh", "PROMETHEUS_IMAGE"], check=False)
        assert missing.returncode == 3
        assert missing.stderr.strip().count("\n") == 0
        assert "PROMETHEUS_IMAGE: cannot pull" in missing.stderr
        assert env_file.read_text().startswith(before)
    finally:
        user.compose("down", "-v", timeout=300, check=False)
        for reference in (tagged, f"{tagged}@{first}"):
            run(["docker", "rmi", reference], check=False)
