"""Run foodpipe's Compose files the way a user does, in a real Docker engine.

A ``Checkout`` is a copy of the repository's tracked files in a temporary folder, as a
user's clone would be. Commands run there literally (``docker-compose up -d``,
``docker-compose logs -f consumer``, ...), with two additions a user does not need:

- ``COMPOSE_PROJECT_NAME``: a unique project per test module, so a run never touches
  another stack on the same engine;
- ``KAFKA_IMAGE``, ``POSTGRES_IMAGE`` and ``PYTHON_IMAGE``: the local stand-ins that
  ``scripts/docker_images.sh`` builds, because no registry can be reached here. The
  compose files default to the official images, so a user's ``up`` pulls those.

The engine and the images come from ``scripts/docker_engine.sh`` and
``scripts/docker_images.sh``; the helpers here only read what Docker reports.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.support import REPO, free_port, wait_until

#: The front end the user's own words name; Compose v2 (`docker compose`) is run too
#: where it is installed (see test_compose_v2.py).
LEGACY = ("docker-compose",)
V2 = ("docker", "compose")
CGROUP_MEMORY = Path("/sys/fs/cgroup/memory/docker")
CGROUP_CPU = Path("/sys/fs/cgroup/cpuacct/docker")
ANSI = re.compile(r"\x1b\[[0-9;]*m")
MIB = 1024**2


def docker_tests_wanted(config: pytest.Config) -> bool:
    selected = "docker" in (config.getoption("-m") or "")
    return selected or os.environ.get("FOODPIPE_DOCKER_TESTS") == "1"


def run(
    argv: Sequence[str],
    *,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 600,
    check: bool = True,
    input_text: str | None = None,
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        list(argv),
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        input=input_text,
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"`{' '.join(argv)}` exited {result.returncode}:\n"
            f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        )
    return result


def engine_and_images() -> dict[str, str]:
    """Start the engine if needed, build the images (cached); return the image variables.

    Raises with the scripts' own one-line error when either cannot be had.
    """
    run([str(REPO / "scripts" / "docker_engine.sh"), "start"], timeout=600)
    built = run([str(REPO / "scripts" / "docker_images.sh")], timeout=1500)
    return dict(
        line.split("=", 1) for line in built.stdout.splitlines() if re.match(r"^[A-Z_]+=", line)
    )


def tracked_files() -> list[str]:
    """What a clone of the repository holds: tracked files plus new, not ignored ones."""
    out = run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO).stdout
    return [name for name in out.split("\0") if name and (REPO / name).exists()]


def anonymous_volumes() -> set[str]:
    names = run(["docker", "volume", "ls", "-q", "--filter", "dangling=true"]).stdout.split()
    return {name for name in names if re.fullmatch(r"[0-9a-f]{64}", name)}


@dataclass
class Checkout:
    root: Path
    project: str
    images: dict[str, str]
    file: str = "docker-compose.yml"
    front_end: tuple[str, ...] = LEGACY
    extra_env: dict[str, str] = field(default_factory=dict)
    #: Override files after ``file`` (the network-fault suite's 3-broker cluster).
    extra_files: tuple[str, ...] = ()

    @classmethod
    def create(
        cls,
        base: Path,
        images: dict[str, str],
        file: str = "docker-compose.yml",
        front_end: tuple[str, ...] = LEGACY,
        prefix: str = "fptest",
    ) -> Checkout:
        """A copy of the repository under ``base``; its Compose project is ``prefix``
        plus a random suffix (scripts/test.sh removes what ``fptest`` projects leave)."""
        root = base / "foodpipe"
        for name in tracked_files():
            target = root / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, target)
        return cls(root, f"{prefix}{uuid.uuid4().hex[:8]}", images, file, front_end)

    # ------------------------------------------------------------------ commands
    def env(self, **extra: str) -> dict[str, str]:
        env = {**os.environ, **self.images, "COMPOSE_PROJECT_NAME": self.project}
        # A user's shell has none of the test run's settings; keep them from leaking into
        # Compose's interpolation (its environment wins over .env).
        prefixes = ("KAFKA_", "POSTGRES_", "DATABASE_", "ORDER_", "BATCH_")
        for name in list(env):
            if name.startswith(prefixes) and name not in self.images:
                del env[name]
        env.update(self.extra_env)
        env.update(extra)
        return env

    def sh(
        self, argv: Sequence[str], *, timeout: float = 600, check: bool = True, **extra: str
    ) -> subprocess.CompletedProcess[str]:
        return run(argv, cwd=self.root, env=self.env(**extra), timeout=timeout, check=check)

    def compose(
        self, *args: str, timeout: float = 600, check: bool = True, **extra: str
    ) -> subprocess.CompletedProcess[str]:
        """``docker-compose [-f FILE] ARGS``: ``-f`` only for the AWS file (or with
        overrides), as a user types it."""
        flags = [] if self.file == "docker-compose.yml" else ["-f", self.file]
        if self.extra_files:
            flags = ["-f", self.file] + [arg for name in self.extra_files for arg in ("-f", name)]
        return self.sh([*self.front_end, *flags, *args], timeout=timeout, check=check, **extra)

    def setup_env_file(self) -> None:
        """``scripts/setup_local.sh --env-only``, then free host ports (9092/5432 may be taken)."""
        self.sh(["scripts/setup_local.sh", "--env-only"])
        with (self.root / ".env").open("a") as env_file:
            env_file.write(
                f"KAFKA_HOST_PORT={free_port()}\nPOSTGRES_HOST_PORT={free_port()}\n"
                f"DASHBOARD_HOST_PORT={free_port()}\nPROMETHEUS_HOST_PORT={free_port()}\n"
            )

    def dotenv(self) -> dict[str, str]:
        values: dict[str, str] = {}
        for line in (self.root / ".env").read_text().splitlines():
            if re.match(r"^[A-Z][A-Z0-9_]*=", line):
                key, value = line.split("=", 1)
                values[key] = value
        return values

    def secret(self, name: str) -> str:
        """A password that setup_local.sh generated into .secrets/ (Compose mounts it)."""
        return (self.root / ".secrets" / name).read_text().strip()

    def host_settings(self) -> dict[str, str]:
        """Settings for `foodpipe` on the host, through the published ports."""
        dotenv = self.dotenv()
        return {
            "KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{dotenv['KAFKA_HOST_PORT']}",
            "POSTGRES_HOST": "127.0.0.1",
            "POSTGRES_PORT": dotenv["POSTGRES_HOST_PORT"],
            "POSTGRES_PASSWORD": self.secret("postgres_password"),
        }

    def foodpipe(
        self, *args: str, timeout: float = 300, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        env = {
            key: os.environ[key] for key in ("PATH", "HOME", "LANG", "TMPDIR") if key in os.environ
        }
        env.update(self.host_settings(), LOG_FORMAT="json")
        argv = [str(REPO / ".venv" / "bin" / "foodpipe"), "--env-file", "/dev/null", *args]
        return run(argv, cwd=self.root, env=env, timeout=timeout, check=check)

    def status(self) -> dict[str, Any]:
        result = self.foodpipe("status", "--json", check=False)
        try:
            parsed: dict[str, Any] = json.loads(result.stdout)
        except json.JSONDecodeError:
            return {}
        return parsed

    def audit(self, *, allow_lag: bool = False) -> dict[str, Any]:
        args = ["audit", "--json", *(["--allow-lag"] if allow_lag else [])]
        result = self.foodpipe(*args, check=False)
        report: dict[str, Any] = json.loads(result.stdout)
        report["exit_code"] = result.returncode
        return report

    def sql(self, query: str) -> str:
        user = self.dotenv().get("POSTGRES_ADMIN_USER", "foodpipe_admin")
        return self.compose(
            "exec", "-T", "postgres", "psql", "-X", "-U", user, "-d", "foodpipe", "-tAc", query
        ).stdout.strip()

    def rows(self) -> int:
        return int(self.sql("SELECT count(*) FROM orders"))

    # ------------------------------------------------------------------ what Docker reports
    def container_ids(self, service: str) -> list[str]:
        """The service's containers, running or exited, not `run` one-offs (both front
        ends label them the same way; their `ps` flags differ)."""
        out = run(
            [
                "docker",
                "ps",
                "-aq",
                "--no-trunc",
                "--filter",
                f"label=com.docker.compose.project={self.project}",
                "--filter",
                f"label=com.docker.compose.service={service}",
                "--filter",
                "label=com.docker.compose.oneoff=False",
            ]
        ).stdout.split()
        return [cid for cid in out if cid]

    def project_objects(self) -> dict[str, list[str]]:
        label = f"label=com.docker.compose.project={self.project}"
        return {
            "containers": run(["docker", "ps", "-aq", "--filter", label]).stdout.split(),
            "volumes": run(["docker", "volume", "ls", "-q", "--filter", label]).stdout.split(),
            "networks": run(["docker", "network", "ls", "-q", "--filter", label]).stdout.split(),
        }

    def down(self, *args: str) -> None:
        self.compose("down", "--remove-orphans", *args, timeout=300, check=False)


@contextmanager
def user_checkout(
    images: dict[str, str],
    tmp_path_factory: pytest.TempPathFactory,
    file: str = "docker-compose.yml",
    front_end: tuple[str, ...] = LEGACY,
) -> Iterator[Checkout]:
    """A fixture's checkout with its .env; on the way out its logs are kept next to the
    test's temporary files and ``down -v`` removes the stack."""
    checkout = Checkout.create(tmp_path_factory.mktemp("stack"), images, file, front_end)
    checkout.setup_env_file()
    try:
        yield checkout
    finally:
        logs = checkout.compose("logs", "--no-color", "--tail", "300", check=False, timeout=120)
        (tmp_path_factory.getbasetemp() / f"{checkout.project}.log").write_text(logs.stdout)
        checkout.down("-v")


def write_results(
    stem: Path, result: dict[str, Any], report: str, what: str, problems: list[str]
) -> None:
    """``stem``.json and .md for a measurement command; exit non-zero naming ``problems``."""
    stem.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    stem.with_suffix(".md").write_text(report)
    print(report)
    if problems:
        raise SystemExit(f"{what}: " + "; ".join(problems))


def running_containers(project: str) -> list[tuple[str, str, str, bool]]:
    """(id, service, name, one-off) of each running container of a Compose project."""
    fmt = (
        '{{.ID}} {{.Label "com.docker.compose.service"}} {{.Names}} '
        '{{.Label "com.docker.compose.oneoff"}}'
    )
    label = f"label=com.docker.compose.project={project}"
    out = run(["docker", "ps", "--no-trunc", "--filter", label, "--format", fmt], check=False)
    found = []
    for line in out.stdout.splitlines():
        cid, service, name, oneoff = line.split(" ")
        found.append((cid, service, name, oneoff == "True"))
    return found


def inspect(cid: str) -> dict[str, Any]:
    data: list[dict[str, Any]] = json.loads(run(["docker", "inspect", cid]).stdout)
    return data[0]


def health(cid: str) -> str:
    state = inspect(cid)["State"]
    if "Health" in state:
        return str(state["Health"]["Status"])
    return f"{state['Status']}:{state['ExitCode']}"


def wait_healthy(
    checkout: Checkout, services: Sequence[str], one_shots: Sequence[str], timeout: float
) -> float:
    """Wait until every service is healthy and every one-shot exited 0; return the seconds."""
    start = time.monotonic()

    def states() -> dict[str, list[str]]:
        return {
            name: [health(cid) for cid in checkout.container_ids(name)]
            for name in [*services, *one_shots]
        }

    def ready() -> bool:
        current = states()
        return all(current[s] and set(current[s]) == {"healthy"} for s in services) and all(
            current[s] == ["exited:0"] for s in one_shots
        )

    wait_until(ready, timeout=timeout, interval=1, message=lambda: f"healthy services: {states()}")
    return time.monotonic() - start


def strip_ansi(text: str) -> str:
    return ANSI.sub("", text)


@contextmanager
def follow(argv: Sequence[str], cwd: Path, env: dict[str, str]) -> Iterator[list[str]]:
    """Run a following command (``logs -f``) and collect its lines until the block ends."""
    proc = subprocess.Popen(
        list(argv), cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    lines: list[str] = []

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(strip_ansi(line.rstrip("\n")))

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        yield lines
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        reader.join(timeout=5)


# ---------------------------------------------------------------------- cgroup v1 readings
def _cgroup_file(root: Path, cid: str, name: str) -> Path:
    return root / cid / name


def memory_reading(cid: str) -> dict[str, int] | None:
    """Memory of a running container from its cgroup (None once it has gone)."""
    try:
        usage = int(_cgroup_file(CGROUP_MEMORY, cid, "memory.usage_in_bytes").read_text())
        peak = int(_cgroup_file(CGROUP_MEMORY, cid, "memory.max_usage_in_bytes").read_text())
        stat = {
            key: int(value)
            for key, value in (
                line.split()
                for line in _cgroup_file(CGROUP_MEMORY, cid, "memory.stat").read_text().splitlines()
            )
        }
        cpu_ns = int(_cgroup_file(CGROUP_CPU, cid, "cpuacct.usage").read_text())
    except (OSError, ValueError):
        return None
    return {
        "usage": usage,
        "high_water": peak,
        # What `docker stats` shows on cgroup v1: usage minus the page cache the kernel
        # can drop at once (inactive files). Kafka's log segments sit in the cache.
        "working_set": usage - stat.get("total_inactive_file", 0),
        "rss": stat.get("total_rss", 0) + stat.get("total_mapped_file", 0),
        # The same usage broken down, so a drift can be told apart: anonymous memory
        # (heaps, stacks: a leak or a heap being committed shows here), shared memory
        # (PostgreSQL's shared_buffers as pages are first touched; cgroup v1 counts it
        # in the cache) and the page cache of files (data read or written, which the
        # kernel can drop).
        "anon": stat.get("total_rss", 0),
        "shmem": stat.get("total_shmem", 0),
        "file_cache": stat.get("total_cache", 0) - stat.get("total_shmem", 0),
        "active_file": stat.get("total_active_file", 0),
        "cpu_ns": cpu_ns,
    }


def crash_consumer(cid: str) -> None:
    """SIGKILL ``foodpipe consume`` inside its container: a crash, which the restart
    policy handles. ``docker kill`` would be a manual stop, which ``restart:`` ignores."""
    script = (
        "import os, signal\n"
        "for pid in filter(str.isdigit, os.listdir('/proc')):\n"
        "    try:\n"
        "        cmd = open(f'/proc/{pid}/cmdline', 'rb').read().split(b'\\0')\n"
        "    except OSError:\n"
        "        continue\n"
        "    if int(pid) not in (1, os.getpid()) and b'consume' in cmd:\n"
        "        os.kill(int(pid), signal.SIGKILL)\n"
    )
    run(["docker", "exec", cid, "python", "-c", script])


def process_reading(cid: str) -> dict[str, int] | None:
    """Threads and open file descriptors of every process in a container (cgroup v1
    pids controller, /proc of the host); None once the container has gone."""
    base = Path("/sys/fs/cgroup/pids/docker") / cid
    try:
        threads = len((base / "tasks").read_text().split())
        pids = (base / "cgroup.procs").read_text().split()
    except OSError:
        return None
    fds = 0
    for pid in pids:
        try:
            fds += len(os.listdir(f"/proc/{pid}/fd"))
        except OSError:
            continue  # the process ended between the two reads
    return {"threads": threads, "fds": fds}
