"""Fixtures of the network-fault suite: one three-broker topology per session, a case
factory, and the summary table (printed, and written as Markdown and JSON).

The suite needs a Docker engine and the local images, like tests/docker: it runs when
``FOODPIPE_DOCKER_TESTS=1`` (scripts/test.sh sets it) or ``-m docker`` selects it, and
fails with the scripts' one-line reason when the engine or an image cannot be had.

The table goes to ``$NETWORK_FAULTS_REPORT`` (a path ending in .md; default
``.stack/network-faults.md``), with the same rows in a .json beside it;
``bench/results/<date>-network-faults.md`` is such a run, committed.
"""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.docker.harness import docker_tests_wanted, engine_and_images, run, user_checkout
from tests.fault.harness import CaseResult
from tests.fault.network.cases import ROWS, NetworkCase
from tests.fault.network.topology import Topology
from tests.support import REPO, wait_until

OUTCOMES: dict[str, str] = {}
STARTUP: dict[str, float] = {}


@pytest.fixture(scope="session")
def network_images(request: pytest.FixtureRequest) -> dict[str, str]:
    if not docker_tests_wanted(request.config):
        pytest.skip(
            "opt-in: `pytest -m docker` or FOODPIPE_DOCKER_TESTS=1 (scripts/test.sh sets it)"
        )
    images = engine_and_images()
    status = os.environ.get("FOODPIPE_TOXIPROXY_STATUS")
    if status:
        # scripts/test.sh builds the image in the background: wait for that build
        # rather than start a second one next to it.
        wait_until(lambda: Path(status).exists(), timeout=900, interval=1, message=status)
    built = run([str(REPO / "scripts" / "toxiproxy_image.sh")], timeout=900)
    for line in built.stdout.splitlines():
        if line.startswith("TOXIPROXY_IMAGE="):
            images["TOXIPROXY_IMAGE"] = line.split("=", 1)[1]
    return images


@pytest.fixture(scope="session")
def topology(
    network_images: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Topology]:
    with user_checkout(network_images, tmp_path_factory) as checkout:
        topo = Topology(checkout)
        topo.write_files()
        STARTUP["seconds"] = topo.start()
        yield topo


@pytest.fixture
def net_case(
    topology: Topology, log_dir: Path, request: pytest.FixtureRequest
) -> Iterator[Callable[[str, str], NetworkCase]]:
    made: list[NetworkCase] = []
    results: list[CaseResult] = []

    def make(case: str, title: str) -> NetworkCase:
        made.append(
            NetworkCase(
                topology,
                case=case,
                title=title,
                test=request.node.name,
                log_dir=log_dir,
                results=results,
            )
        )
        return made[-1]

    yield make
    for case in made:
        case.save_logs()
        case.cleanup()
        case.pipeline.admin_engine.dispose()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if "network" in item.nodeid and (report.when == "call" or report.outcome != "passed"):
        OUTCOMES.setdefault(item.name, report.outcome)
        if report.outcome != "passed":
            OUTCOMES[item.name] = report.outcome


def _table(rows: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| case | what | orders | invalid | redeliveries | rebalances | restarts "
        "| recovery (s) | duration (s) | result |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- | ---: | --- |",
    ]
    for row in rows:
        recovery = ", ".join(f"{r:.1f}" for r in row.get("recovery_s", [])) or "-"
        lines.append(
            f"| {row['case']} | {row['title']} | {row.get('orders', '-')} "
            f"| {row.get('invalid', '-')} | {row.get('redeliveries', '-')} "
            f"| {row.get('rebalances', '-')} | {row.get('restarts', '-')} | {recovery} "
            f"| {row.get('duration_s', '-')} | {row['result']} |"
        )
    return lines


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not OUTCOMES:
        return
    by_test = {row["test"]: row for row in ROWS}
    rows: list[dict[str, Any]] = []
    for test, outcome in OUTCOMES.items():
        row = dict(by_test.get(test, {"case": test, "title": "(did not finish)"}))
        row["result"] = outcome
        rows.append(row)
    table = _table(rows)
    terminalreporter.section("network faults: orders, rebalances, recovery")
    for line in table:
        terminalreporter.write_line(line)
    details = [f"- **{row['case']}**: {row['notes']}" for row in rows if row.get("notes")]
    report = "\n".join(
        [
            f"# Network faults ({time.strftime('%Y-%m-%d')})",
            "",
            "`tests/fault/network` (scripts/test.sh runs it in CI): three KRaft brokers,"
            " PostgreSQL, Toxiproxy, one producer and two consumers, each its own container"
            " on the project's network, faults from iptables rules in a container's network"
            " namespace and Toxiproxy toxics. Every case ends with the fault suite's"
            " invariant check and `foodpipe audit`.",
            "",
            f"Machine: {os.cpu_count()} CPUs, {platform.system()} {platform.release()};"
            f" topology up and healthy in {STARTUP.get('seconds', 0):.0f} s.",
            "",
            *table,
            "",
            *details,
            "",
        ]
    )
    path = Path(os.environ.get("NETWORK_FAULTS_REPORT") or REPO / ".stack" / "network-faults.md")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(report)
        path.with_suffix(".json").write_text(json.dumps(rows, indent=1) + "\n")
        terminalreporter.write_line(f"(written to {path})")
    except OSError as exc:
        terminalreporter.write_line(f"(could not write {path}: {exc})")
