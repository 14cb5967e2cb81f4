"""``foodpipe bench`` runs end to end with a small N and writes a well-formed result.

No assertion here is about speed: a shared CI machine cannot promise any figure. The
test proves that every scenario ran against the real services (every metric and ratio
is present, the row counts the bench checks internally held, every process exited 0)
and that the three result files are what the README links to.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import jsonschema
import pytest
from sqlalchemy import text
from sqlalchemy.engine import Engine, make_url

from foodpipe.bench.metrics import METRICS, OPTIONAL, RATIOS, TARGETS
from foodpipe.bench.schema import RESULT_SCHEMA
from foodpipe.commands.bench import StackUnavailable, find_kafka_tools

from ..conftest import APP_ROLE, Stack
from ..support import run_foodpipe

pytestmark = pytest.mark.slow


def _small_bench(
    stack: Stack,
    app_password: str,
    out: Path,
    extra_args: list[str] | None = None,
    extra_env: dict[str, str] | None = None,
    timeout: float = 240,
) -> subprocess.CompletedProcess[str]:
    try:
        find_kafka_tools()
    except StackUnavailable as exc:
        pytest.skip(f"Kafka's own tools are not available here: {exc}")
    admin_url = make_url(stack.admin_url)
    app_url = admin_url.set(username=APP_ROLE, password=app_password)
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": stack.bootstrap,
        "DATABASE_URL": app_url.render_as_string(hide_password=False),
        "DATABASE_ADMIN_URL": admin_url.render_as_string(hide_password=False),
        # Where the stack's jars are cached, when it is not the checkout's own .stack.
        **{k: os.environ[k] for k in ("FOODPIPE_CACHE_DIR",) if k in os.environ},
        **(extra_env or {}),
    }
    return run_foodpipe(
        [
            "bench",
            "--orders", "2000",
            "--runs", "1",
            "--naive-rows", "200",
            "--window", "2",
            "--warmup", "1",
            "--out", str(out),
            *(extra_args or []),
        ],
        env,
        timeout=timeout,
    )  # fmt: skip


def test_a_small_bench_writes_a_complete_result(
    stack: Stack, template_db: str, app_password: str, admin_engine: Engine, tmp_path: Path
) -> None:
    """The whole bench, the JDBC-sink peer included (its jars come through Maven)."""
    out = tmp_path / "results"

    # The peer adds Connect's start-up and a copy of the topic to the 240 s of the rest.
    result = _small_bench(stack, app_password, out, timeout=420)

    assert result.returncode == 0, result.stderr[-3000:]
    [json_path] = out.glob("*.json")
    document = json.loads(json_path.read_text())
    jsonschema.validate(document, RESULT_SCHEMA)
    assert set(document["metrics"]) == set(METRICS)
    assert set(document["ratios"]) == set(RATIOS)
    assert len(document["targets"]) == len(TARGETS)
    assert all(t["value"] is not None for t in document["targets"])
    assert document["conditions"]["bench"]["orders"] == 2000
    assert document["conditions"]["cpu_count"] >= 1
    run = document["runs"][0]
    assert run["details"]["preload"]["delivered"] == 2000
    assert {run["details"][f"drain_{n}"]["rows"] for n in (1, 2, 3)} == {2000}
    # The peer drained the same 2,000 orders, and the report says what it ran.
    assert run["details"]["peer_jdbc"]["rows"] == 2000
    assert document["conditions"]["peer"]["status"] == "measured"
    assert "JDBC-sink peer" not in result.stderr
    # The markdown is the table printed on stdout, and it links the chart beside it.
    markdown = json_path.with_suffix(".md").read_text()
    assert markdown == result.stdout
    assert "| measurement | median | min | max | spread | unit |" in markdown
    assert "JDBC-sink peer: Kafka Connect 4.3.1 standalone with the Debezium JDBC sink" in markdown
    assert "| drain, 1 consumer vs the JDBC-sink peer, first row → last row |" in markdown
    assert f"]({json_path.stem}.png)" in markdown
    assert json_path.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Nothing left behind: every scratch database was dropped.
    with admin_engine.connect() as conn:
        leftovers = conn.execute(
            text("SELECT datname FROM pg_database WHERE datname LIKE 'fpbench%'")
        ).scalars()
        prefix = document["conditions"]["bench"]["scratch_prefix"]
        assert not [name for name in leftovers if name.startswith(prefix)]


def test_a_peer_that_cannot_be_had_is_one_line_and_the_bench_goes_on(
    stack: Stack, template_db: str, app_password: str, tmp_path: Path
) -> None:
    """No plugin archive for the sink (a version Maven does not serve): one line, no row."""
    out = tmp_path / "results"

    result = _small_bench(
        stack,
        app_password,
        out,
        extra_env={"DEBEZIUM_VERSION": "0.0.0.NotServed"},
    )

    assert result.returncode == 0, result.stderr[-3000:]
    said = [line for line in result.stderr.splitlines() if "JDBC-sink peer" in line]
    assert len(said) == 1, said
    assert "JDBC-sink peer not measured:" in said[0]
    assert "debezium-connector-jdbc:0.0.0.NotServed" in said[0]
    assert "the bench goes on" in said[0]
    [json_path] = out.glob("*.json")
    document = json.loads(json_path.read_text())
    jsonschema.validate(document, RESULT_SCHEMA)
    # Everything but the peer's figures is there.
    assert set(document["metrics"]) == set(METRICS) - OPTIONAL
    assert set(document["ratios"]) == set(RATIOS) - OPTIONAL
    for target in document["targets"]:
        assert (target["value"] is None) == (target["metric"] in OPTIONAL), target
    assert document["conditions"]["peer"]["status"].startswith("could not be had:")
    assert "peer_jdbc" not in document["runs"][0]["details"]
    markdown = json_path.with_suffix(".md").read_text()
    assert "JDBC-sink peer: not measured, could not be had:" in markdown
