"""``foodpipe health`` and ``scripts/healthcheck.sh`` against real Kafka and PostgreSQL.

The healthy case runs the producer and the consumer with the very commands the Compose
files give their containers (read from docker-compose.yml), natively, so the containers
run what these tests run. The other cases break one thing each and expect the check that
names it, and the exit code that scripts and orchestrators act on.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from tests.compose_support import load_compose
from tests.conftest import APP_ROLE, Pipeline
from tests.poison import produce_records, record, valid_order
from tests.support import (
    REPO,
    run_foodpipe,
    spawn_foodpipe,
    stop_process,
    subprocess_env,
    wait_until,
)


def health(pipe_env: dict[str, str], *args: str) -> tuple[int, dict[str, Any], str]:
    result = run_foodpipe(["health", "--json", "--timeout", "5", *args], pipe_env, timeout=120)
    assert result.stdout, result.stderr
    return result.returncode, json.loads(result.stdout), result.stderr


def by_name(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {check["name"]: check for check in report["checks"]}


def compose_command(service: str) -> list[str]:
    command: list[str] = load_compose("local")["services"][service]["command"]
    return command


def test_the_compose_commands_run_natively_and_the_pipeline_reports_healthy(
    make_pipeline: Callable[..., Pipeline], log_dir: Path, tmp_path: Path
) -> None:
    pipe = make_pipeline()
    env = {**pipe.env, "PRODUCER_STATE_DIR": str(tmp_path / "state"), "ORDER_RATE": "0"}
    consumer = spawn_foodpipe(compose_command("consumer"), env, log_dir / "consumer.log")
    try:
        produced = run_foodpipe(
            [*compose_command("producer"), "--count", "60", "--seed", "7"], env, timeout=120
        )
        assert produced.returncode == 0, produced.stderr[-2000:]
        wait_until(
            lambda: pipe.row_count() == 60,
            timeout=90,
            message=lambda: f"60 rows (got {pipe.row_count()})",
        )
        # --wait: the consumer commits its offsets right after the database commit.
        code, report, stderr = health(env, "--max-lag", "0", "--wait", "30")
        assert code == 0, (report, stderr)
        assert report["healthy"] is True
        checks = by_name(report)
        assert [c["status"] for c in report["checks"]] == ["ok"] * 6
        assert checks["topic"]["data"]["partitions"] == 3
        assert checks["consumer_group"]["data"]["members"] == 1
        assert checks["consumer_group"]["data"]["assigned_partitions"] == 3
        assert checks["lag"]["data"]["lag"] == 0
        assert "***" in checks["database"]["data"]["url"]

        # The script gives the same verdict, and its table is for humans.
        script = subprocess.run(
            [str(REPO / "scripts" / "healthcheck.sh"), "--native", "--max-lag", "0"],
            env={**subprocess_env(env), "FOODPIPE": str(Path(REPO / ".venv/bin/foodpipe"))},
            capture_output=True,
            text=True,
            timeout=120,
            cwd=REPO,
            check=False,
        )
        assert script.returncode == 0, script.stdout + script.stderr
        assert script.stdout.startswith("foodpipe health: HEALTHY (6/6 checks ok)")
    finally:
        assert stop_process(consumer) == 0, (log_dir / "consumer.log").read_text()[-3000:]

    # The consumer has left: the group check fails (exit 1) unless none is expected.
    code, report, _ = health(env)
    assert code == 1
    assert by_name(report)["consumer_group"]["status"] == "fail"
    assert by_name(report)["lag"]["status"] == "ok"
    assert health(env, "--min-members", "0")[0] == 0


def test_lag_above_the_threshold_is_unhealthy(make_pipeline: Callable[..., Pipeline]) -> None:
    pipe = make_pipeline()
    produce_records(pipe.bootstrap, pipe.topic, [record(valid_order(n)) for n in range(1, 21)])
    # No consumer has committed anything: all 20 retained messages are lag.
    code, report, _ = health(pipe.env, "--min-members", "0", "--max-lag", "5")
    assert code == 1
    lag = by_name(report)["lag"]
    assert lag["status"] == "fail"
    assert lag["data"]["lag"] == 20
    assert sum(lag["data"]["partitions"].values()) == 20
    assert health(pipe.env, "--min-members", "0", "--max-lag", "20")[0] == 0


def test_a_topic_with_the_wrong_partition_count_is_unhealthy(
    make_pipeline: Callable[..., Pipeline],
) -> None:
    pipe = make_pipeline(partitions=1)
    env = {**pipe.env, "KAFKA_TOPIC_PARTITIONS": "3"}
    code, report, _ = health(env, "--min-members", "0")
    assert code == 1
    topic = by_name(report)["topic"]
    assert topic["status"] == "fail"
    assert topic["data"] == {"topic": pipe.topic, "partitions": 1, "expected_partitions": 3}


def test_missing_topics_are_unhealthy(make_pipeline: Callable[..., Pipeline]) -> None:
    pipe = make_pipeline()
    env = {**pipe.env, "KAFKA_TOPIC": f"{pipe.topic}-absent", "KAFKA_DLQ_TOPIC": "absent.dlq"}
    code, report, _ = health(env, "--min-members", "0")
    assert code == 1
    checks = by_name(report)
    assert (checks["topic"]["status"], checks["dlq_topic"]["status"]) == ("fail", "fail")
    assert checks["lag"]["status"] == "skip"
    assert checks["database"]["status"] == "ok"


def test_an_unreachable_broker_is_exit_3_and_the_database_is_still_checked(
    make_pipeline: Callable[..., Pipeline],
) -> None:
    pipe = make_pipeline()
    env = {**pipe.env, "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9"}
    code, report, _ = health(env, "--timeout", "2")
    assert code == 3
    checks = by_name(report)
    assert checks["broker"]["status"] == "fail"
    assert checks["broker"]["unreachable"] is True
    assert checks["database"]["status"] == "ok"
    assert {checks[n]["status"] for n in ("topic", "dlq_topic", "consumer_group", "lag")} == {
        "skip"
    }


def test_refused_database_credentials_are_exit_3_and_no_password_is_shown(
    make_pipeline: Callable[..., Pipeline],
) -> None:
    pipe = make_pipeline()
    wrong = pipe.settings.sqlalchemy_url().set(password="wrong-Pa55word")
    env = {**pipe.env, "DATABASE_URL": wrong.render_as_string(hide_password=False)}
    result = run_foodpipe(["health", "--min-members", "0"], env, timeout=120)
    assert result.returncode == 3
    assert "FAIL  database" in result.stdout
    assert "password authentication failed" in result.stdout
    assert "wrong-Pa55word" not in result.stdout + result.stderr


def test_an_unreadable_orders_table_is_unhealthy_with_the_fix(
    make_pipeline: Callable[..., Pipeline],
) -> None:
    pipe = make_pipeline()
    with pipe.admin_engine.begin() as conn:
        conn.execute(text(f"REVOKE SELECT ON orders FROM {APP_ROLE}"))
    code, report, _ = health(pipe.env, "--min-members", "0")
    assert code == 1
    database = by_name(report)["database"]
    assert database["status"] == "fail"
    assert database["unreachable"] is False
    assert "permission denied" in database["detail"]
    assert "app_role.sql" in database["detail"]


def test_wait_gives_up_at_its_deadline(make_pipeline: Callable[..., Pipeline]) -> None:
    pipe = make_pipeline()
    result = run_foodpipe(["health", "--wait", "3"], pipe.env, timeout=120)
    assert result.returncode == 1, result.stdout  # no consumer ever joins
    assert result.stdout.count("foodpipe health:") == 1, "one report, after the last try"


@pytest.mark.parametrize("mode", ["--native", "--local"])
def test_the_script_passes_the_exit_code_through(
    mode: str, make_pipeline: Callable[..., Pipeline], stack: Any
) -> None:
    if mode == "--local" and stack.source != "local":
        pytest.skip(f"--local needs the native stack (services from {stack.source})")
    pipe = make_pipeline()
    env = subprocess_env(pipe.env)
    env["FOODPIPE"] = str(REPO / ".venv" / "bin" / "foodpipe")
    if mode == "--local":
        # The settings come from local_stack.sh; the standard topics exist there.
        for key in ("KAFKA_BOOTSTRAP_SERVERS", "DATABASE_URL"):
            env.pop(key, None)
    result = subprocess.run(
        [str(REPO / "scripts" / "healthcheck.sh"), mode, "--min-members", "5", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        check=False,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert by_name(report)["consumer_group"]["data"]["min_members"] == 5
