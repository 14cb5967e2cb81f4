"""Fixtures of the fault-injection suite (reliability.md, "Faults and bad inputs to cover").

These tests SIGKILL consumers, freeze and kill Kafka brokers and stop PostgreSQL. They
run against the session's local stack (``tests/conftest.py``'s ``stack``) and, for the
broker-failure case with replication, a 3-broker KRaft cluster of their own.

Isolation. Never point them at a stack other people use: give the session a private one,
e.g. ``STACK_DIR=/tmp/fault-stack KAFKA_PORT=29092 PG_PORT=25432 pytest tests/fault``
(``local_stack.sh`` starts it and stops it at the end). As a safety net, when the fault
tests are selected and the stack the session would use was already running before it
(so it belongs to someone) and no STACK_DIR was given, the session moves to a private
stack of its own (``.stack/fault-session``, ports ``FAULT_STACK_KAFKA_PORT`` and
``FAULT_STACK_PG_PORT``, default 47092/47432) instead of killing someone else's broker.

``--soak`` lengthens every case (more orders, longer faults, the 500k backlog, a long
soak) for runs outside CI: ``pytest tests/fault --soak``. The option is registered here,
so name ``tests/fault`` on the command line to use it.

At the end of the run the suite prints one table (orders, invalid messages,
redeliveries, time to recover, duration per case) and writes it as JSON to
``$FAULT_REPORT`` (default ``<STACK_DIR or .stack>/fault-report.json``).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from foodpipe.settings import Settings
from tests.conftest import Pipeline, Stack
from tests.fault.harness import CaseResult, Fault
from tests.support import REPO

RESULTS: list[CaseResult] = []
SCRIPT = REPO / "scripts" / "local_stack.sh"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--soak",
        action="store_true",
        default=False,
        help="fault suite: longer cases (more orders, longer faults, 500k backlog, long soak)",
    )


def _stack_dir() -> Path:
    return Path(os.environ.get("STACK_DIR") or REPO / ".stack")


def _local_stack_running() -> bool:
    result = subprocess.run(
        [str(SCRIPT), "status"], capture_output=True, timeout=60, check=False, env=os.environ
    )
    return result.returncode == 0


def pytest_collection_finish(session: pytest.Session) -> None:
    """Move the session to a private stack rather than fault a shared one (see top)."""
    if not any(item.get_closest_marker("fault") for item in session.items):
        return
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS") and os.environ.get("DATABASE_URL"):
        return  # services from the environment: process control is not available anyway
    if os.environ.get("STACK_DIR"):
        return  # a stack chosen on purpose for this run
    if not _local_stack_running():
        return  # the session starts this stack itself, and stops it at the end
    private = _stack_dir() / "fault-session"
    os.environ["STACK_DIR"] = str(private)
    os.environ["KAFKA_PORT"] = os.environ.get("FAULT_STACK_KAFKA_PORT", "47092")
    os.environ["PG_PORT"] = os.environ.get("FAULT_STACK_PG_PORT", "47432")
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(
            "fault suite: the local stack is already running (it may be shared); this "
            f"session uses a private one in {private} (Kafka {os.environ['KAFKA_PORT']},"
            f" PostgreSQL {os.environ['PG_PORT']})"
        )


@pytest.fixture(scope="session")
def soak(request: pytest.FixtureRequest) -> bool:
    return bool(request.config.getoption("--soak", default=False))


@pytest.fixture
def controlled_stack(stack: Stack) -> Stack:
    """The session stack, which these tests may kill and restart (local processes only)."""
    if stack.source != "local":
        pytest.skip(
            f"services come from {stack.source}: the fault suite needs the local stack"
            " (scripts/local_stack.sh) to signal Kafka and PostgreSQL processes"
        )
    return stack


#: Every case runs in the product's default group protocol; the cases about consumers,
#: rebalances and brokers (1-8) run once more in the other one, so a switch of
#: KAFKA_GROUP_PROTOCOL is covered too. ``-k "consumer]"`` (or ``classic]``) picks a pass.
DEFAULT_PROTOCOL: str = Settings.model_fields["kafka_group_protocol"].default
OTHER_PROTOCOL = "classic" if DEFAULT_PROTOCOL == "consumer" else "consumer"
BOTH_PROTOCOLS = re.compile(r"test_case0[1-8]_")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "group_protocol" in metafunc.fixturenames and BOTH_PROTOCOLS.match(metafunc.definition.name):
        metafunc.parametrize("group_protocol", [DEFAULT_PROTOCOL, OTHER_PROTOCOL], indirect=True)


@pytest.fixture
def group_protocol(request: pytest.FixtureRequest) -> str:
    """KAFKA_GROUP_PROTOCOL of the case's consumers (see pytest_generate_tests)."""
    return str(getattr(request, "param", DEFAULT_PROTOCOL))


@pytest.fixture
def fault(
    controlled_stack: Stack,
    make_pipeline: Callable[..., Pipeline],
    log_dir: Path,
    request: pytest.FixtureRequest,
    group_protocol: str,
) -> Iterator[Callable[..., Fault]]:
    """Factory: ``fault(case, title, pipeline=None, **Fault options)`` -> :class:`Fault`."""
    made: list[Fault] = []

    def make(case: str, title: str, pipeline: Pipeline | None = None, **options: object) -> Fault:
        pipe = pipeline if pipeline is not None else make_pipeline()
        if group_protocol != DEFAULT_PROTOCOL:
            case = f"{case}/{group_protocol}"  # the report tells the two passes apart
        case_obj = Fault(
            case=case,
            title=title,
            pipeline=pipe,
            stack=controlled_stack,
            log_dir=log_dir,
            results=RESULTS,
            group_protocol=group_protocol,
            **options,  # type: ignore[arg-type]
        )
        made.append(case_obj)
        return case_obj

    yield make
    for case_obj in made:
        case_obj.cleanup()


# --------------------------------------------------------------------------- 3-broker cluster


@dataclass
class Cluster:
    """A 3-broker KRaft cluster (replication 3, min.insync.replicas 2) for case 8."""

    bootstrap: str
    env: dict[str, str]

    def script(self, *args: str, timeout: float = 180.0) -> str:
        result = subprocess.run(
            [str(SCRIPT), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=self.env,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"local_stack.sh {' '.join(args)} failed: {result.stderr.strip()}")
        return result.stdout


@pytest.fixture(scope="session")
def cluster(stack: Stack) -> Iterator[Cluster]:
    """Started on first use with its own STACK_DIR and ports, stopped at session end."""
    if stack.source != "local":
        pytest.skip(f"services come from {stack.source}: the cluster needs scripts/local_stack.sh")
    base = Path(os.environ.get("FAULT_CLUSTER_DIR") or _stack_dir() / "fault-cluster")
    env = {
        **os.environ,
        "STACK_DIR": str(base),
        "KAFKA_NODES": "3",
        "KAFKA_PORT": os.environ.get("FAULT_CLUSTER_PORT", "39092"),
        "STACK_SERVICES": "kafka",
        # Three JVMs on a small machine: a smaller heap each is plenty for a test cluster.
        "KAFKA_HEAP_MB": os.environ.get("FAULT_CLUSTER_HEAP_MB", "256"),
    }
    env.pop("KAFKA_BOOTSTRAP_SERVERS", None)
    probe = Cluster("", env)
    # A fresh cluster every session: no broker or data left from an interrupted run.
    probe.script("stop")
    shutil.rmtree(base / "kafka", ignore_errors=True)
    out = probe.script("start", timeout=300)
    values = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    try:
        yield Cluster(values["KAFKA_BOOTSTRAP_SERVERS"], env)
    finally:
        # Its data is thrown away: SIGKILL is enough, and a graceful stop of the last two
        # brokers waits ~30 s for a controller quorum that is already gone.
        for node in (1, 2, 3):
            with contextlib.suppress(RuntimeError):
                probe.script("kafka-kill", str(node))
        probe.script("stop")
        shutil.rmtree(base / "kafka", ignore_errors=True)


# --------------------------------------------------------------------------- the summary


def _table(results: list[CaseResult]) -> list[str]:
    header = (
        f"{'case':<5} {'orders':>7} {'invalid':>7} {'redeliv.':>8} {'dup sent':>8}"
        f" {'recover (s)':<20} {'time (s)':>8}  title"
    )
    lines = [header, "-" * len(header)]
    for r in results:
        recover = ", ".join(f"{x:.1f}" for x in r.recovery_s) or "-"
        lines.append(
            f"{r.case:<5} {r.orders:>7} {r.invalid:>7} {r.redeliveries:>8}"
            f" {r.producer_repeats:>8} {recover[:20]:<20} {r.duration_s:>8.1f}  {r.title}"
            + (f" [{r.notes}]" if r.notes else "")
        )
    return lines


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not RESULTS:
        return
    results = sorted(RESULTS, key=lambda r: (len(r.case), r.case))
    terminalreporter.section("fault injection: orders, redeliveries, recovery")
    for line in _table(results):
        terminalreporter.write_line(line)
    path = Path(os.environ.get("FAULT_REPORT") or _stack_dir() / "fault-report.json")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps([r.as_dict() for r in results], indent=2) + "\n")
        terminalreporter.write_line(f"(written to {path})")
    except OSError as exc:
        terminalreporter.write_line(f"(could not write {path}: {exc})")
