"""docker-compose.yml as a user runs it, in a real engine, start to finish.

One stack for the module, driven through the user's own commands in order:

    scripts/setup_local.sh --env-only      # .env with generated passwords
    docker-compose up -d
    docker-compose logs -f consumer
    docker-compose up -d --scale consumer=2   (then back to 1)
    a consumer crashed from inside its container under 500 orders/s
    docker-compose down ; docker-compose up -d
    docker-compose down -v

Each test builds on the state the previous one left, so they run in file order. Every
step ends with ``foodpipe audit`` run from the host through the published ports.
"""

from __future__ import annotations

import json
import re
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import wait_until

from .harness import (
    Checkout,
    crash_consumer,
    follow,
    health,
    inspect,
    user_checkout,
    wait_healthy,
)

pytestmark = [pytest.mark.docker, pytest.mark.slow, pytest.mark.timeout(900)]

SERVICES = ("kafka", "postgres", "producer", "consumer", "dashboard")
ONE_SHOTS = ("db-init", "topics-init")
STATS = re.compile(r"consumer stats .*\bwritten=(\d+)")


@pytest.fixture(scope="module")
def user(
    images: dict[str, str], tmp_path_factory: pytest.TempPathFactory, no_leftover_volumes: set[str]
) -> Iterator[Checkout]:
    with user_checkout(images, tmp_path_factory) as checkout:
        yield checkout


def assert_consistent(user: Checkout, *, allow_lag: bool) -> dict[str, object]:
    report = user.audit(allow_lag=allow_lag)
    assert report["exit_code"] == 0, f"audit INCONSISTENT: {report}"
    assert report["ok"]
    assert report["lost"] == 0
    assert report["duplicate_rows"] == 0
    assert report["messages"] == report["distinct_orders"], "an order id was produced twice"
    return report


def owners(status: dict[str, object]) -> dict[str, list[int]]:
    group = status.get("group") or {}
    assert isinstance(group, dict)
    return {m["member_id"]: sorted(m["partitions"]) for m in group.get("members", [])}


def written(cid: str, user: Checkout) -> int:
    """The latest ``written=`` of a consumer container's stats lines (0 before the first)."""
    logs = user.sh(["docker", "logs", "--tail", "50", cid]).stdout
    found = STATS.findall(logs)
    return int(found[-1]) if found else 0


def test_up_turns_every_service_healthy(user: Checkout) -> None:
    started = time.monotonic()
    user.compose("up", "-d", timeout=900)
    seconds = wait_healthy(user, SERVICES, ONE_SHOTS, timeout=240)
    table = user.compose("ps").stdout
    for service in SERVICES:
        assert re.search(rf"_{service}_1 .* Up \(healthy\)", table), table
    for service in ONE_SHOTS:
        assert re.search(rf"_{service}_1 .* Exit 0", table), table
    print(
        f"docker-compose up -d: every service healthy after {time.monotonic() - started:.0f}s "
        f"({seconds:.0f}s after up returned)"
    )
    # The producer runs at its default rate: 10 orders/s.
    producer = inspect(user.container_ids("producer")[0])
    assert "ORDER_RATE=10" in producer["Config"]["Env"]
    # The passwords are Compose secrets: no container's configuration holds one, and
    # the services that need one read it where Compose mounted it.
    passwords = [user.secret("postgres_password"), user.secret("postgres_admin_password")]
    for service in [*SERVICES, *ONE_SHOTS]:
        for cid in user.container_ids(service):
            config = json.dumps(inspect(cid)["Config"])
            assert not [p for p in passwords if p in config], f"{service}: a password in inspect"
    consumer = user.container_ids("consumer")[0]
    assert (
        "POSTGRES_PASSWORD_FILE=/run/secrets/postgres_password"
        in inspect(consumer)["Config"]["Env"]
    )


def test_orders_reach_postgres_and_the_audit_is_consistent(user: Checkout) -> None:
    wait_until(lambda: user.rows() >= 200, timeout=120, interval=2, message="200 rows")
    report = assert_consistent(user, allow_lag=True)
    assert report["valid_messages"] >= 200


def test_the_dashboard_serves_the_pipeline_on_the_published_port(user: Checkout) -> None:
    port = user.dotenv()["DASHBOARD_HOST_PORT"]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as page:
        assert page.status == 200
        assert "text/html" in page.headers["Content-Type"]

    def pipeline() -> dict[str, Any] | None:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/pipeline", timeout=10) as r:
            document: dict[str, Any] = json.loads(r.read())
        healthy = document["kafka"]["ok"] and document["postgres"]["ok"]
        return document if healthy and "food-orders" in json.dumps(document) else None

    document = wait_until(pipeline, timeout=60, interval=1, message="the dashboard's reading")
    assert user.secret("postgres_password") not in json.dumps(document)


def _prometheus(user: Checkout, path: str) -> Any:
    port = user.dotenv()["PROMETHEUS_HOST_PORT"]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as answer:
        return json.loads(answer.read())["data"]


def _lag_alert(user: Checkout) -> str | None:
    for alert in _prometheus(user, "/api/v1/alerts")["alerts"]:
        if alert["labels"]["alertname"] == "FoodpipeConsumerLagHigh":
            return str(alert["state"])
    return None


def test_prometheus_scrapes_both_services_and_the_lag_alert_fires(user: Checkout) -> None:
    """The monitoring profile's Prometheus with the shipped rules, but for one change in
    this checkout's copy: the lag alert's `for: 5m` becomes 10 s, so that the test sees it
    fire (promtool's rule tests prove the 5 minutes). It scrapes the producer and the
    consumer, and a stopped consumer behind 1,500 orders makes the alert fire."""
    rules = user.root / "deploy" / "monitoring" / "alerts.yml"
    text = rules.read_text()
    start = text.index("- alert: FoodpipeConsumerLagHigh")
    end = text.index("- alert:", start + 1)
    assert text[start:end].count("for: 5m") == 1
    rules.write_text(text[:start] + text[start:end].replace("for: 5m", "for: 10s") + text[end:])
    user.compose("--profile", "monitoring", "up", "-d", "prometheus")
    try:

        def both_up() -> bool:
            try:
                result = _prometheus(user, "/api/v1/query?query=up")["result"]
            except OSError:
                return False  # Prometheus is still starting
            jobs = {r["metric"]["job"]: r["value"][1] for r in result}
            return jobs.get("producer") == "1" and jobs.get("consumer") == "1"

        wait_until(both_up, timeout=120, interval=1, message="up == 1 for producer and consumer")
        rules = {
            rule["name"]
            for group in _prometheus(user, "/api/v1/rules")["groups"]
            for rule in group["rules"]
        }
        assert {"FoodpipeConsumerLagHigh", "FoodpipeNoConsumer"} <= rules
        assert _lag_alert(user) is None

        user.compose("stop", "consumer")
        stopped = time.monotonic()
        user.compose(
            "run",
            "--rm",
            "--no-deps",
            "-T",
            "producer",
            "produce",
            "--count",
            "1500",
            "--rate",
            "0",
        )
        wait_until(
            lambda: _lag_alert(user) == "pending",
            timeout=120,
            interval=1,
            message="FoodpipeConsumerLagHigh pending",
        )
        pending = time.monotonic() - stopped
        wait_until(
            lambda: _lag_alert(user) == "firing",
            timeout=120,
            interval=1,
            message="FoodpipeConsumerLagHigh firing",
        )
        print(
            f"lag alert pending {pending:.0f}s and firing {time.monotonic() - stopped:.0f}s "
            "after the consumer stopped (rules evaluated every 15 s)"
        )
        user.compose("start", "consumer")
        wait_until(
            lambda: _lag_alert(user) is None,
            timeout=180,
            interval=1,
            message="the lag alert cleared once the consumer caught up",
        )
    finally:
        user.compose("--profile", "monitoring", "rm", "-sf", "prometheus", check=False)


def test_logs_f_consumer_shows_assignment_and_stats_as_text(user: Checkout) -> None:
    with follow(["docker-compose", "logs", "-f", "consumer"], user.root, user.env()) as lines:
        wait_until(
            lambda: (
                any("partitions assigned" in line for line in lines)
                and sum("consumer stats" in line for line in lines) >= 2
            ),
            timeout=60,
            interval=0.5,
            message=lambda: f"an assignment and 2 stats lines in {lines[-5:]}",
        )
    app_lines = [line.split("|", 1)[1].strip() for line in lines if "|" in line]
    assert app_lines
    assert not [line for line in app_lines if line.startswith("{")], "logs read as JSON"
    assignment = next(line for line in app_lines if "partitions assigned" in line)
    assert "food-orders[0], food-orders[1], food-orders[2]" in assignment


def test_scale_to_two_consumers_splits_the_partitions_and_back_to_one(user: Checkout) -> None:
    user.compose("up", "-d", "--scale", "consumer=2")
    first, second = sorted(user.container_ids("consumer"), key=lambda c: inspect(c)["Created"])

    def split() -> dict[str, list[int]] | None:
        current = owners(user.status())
        if len(current) == 2 and all(current.values()):
            assert sorted(p for ps in current.values() for p in ps) == [0, 1, 2]
            return current
        return None

    wait_until(split, timeout=120, interval=1, message="2 members sharing the 3 partitions")
    # Both write: each one's written count grows while both are members.
    before = {cid: written(cid, user) for cid in (first, second)}
    wait_until(
        lambda: all(written(cid, user) > before[cid] for cid in (first, second)),
        timeout=60,
        interval=1,
        message=lambda: f"both consumers writing rows (written was {before})",
    )
    wait_until(lambda: health(second) == "healthy", timeout=90, interval=1, message="2nd healthy")
    # The README's own commands, in one-off containers (-T: no terminal here).
    shown = user.compose("run", "--rm", "--no-deps", "-T", "consumer", "status").stdout
    assert "group order-processors (stable, 2 members)" in shown, shown
    audit = user.compose("run", "--rm", "--no-deps", "-T", "consumer", "audit", "--allow-lag")
    assert audit.stdout.startswith("foodpipe audit: CONSISTENT"), audit.stdout

    user.compose("up", "-d", "--scale", "consumer=1")
    assert len(user.container_ids("consumer")) == 1
    wait_until(
        lambda: list(owners(user.status()).values()) == [[0, 1, 2]],
        timeout=90,
        interval=1,
        message="the remaining member owning all 3 partitions",
    )
    assert_consistent(user, allow_lag=True)


def test_wrong_database_password_exits_non_zero_with_one_line(user: Checkout) -> None:
    rows = user.rows()
    # The consumer's secret replaced, for this one container, by a file with a wrong one.
    wrong = user.root / "wrong-password"
    wrong.write_text("wrong-password\n")
    wrong.chmod(0o644)
    result = user.compose(
        "run",
        "--rm",
        "-T",
        "-v",
        f"{wrong}:/run/wrong-password:ro",
        "-e",
        "POSTGRES_PASSWORD_FILE=/run/wrong-password",
        "consumer",
        check=False,
        timeout=180,
    )
    assert result.returncode == 3, result.stderr[-2000:]
    # stderr: Compose's own "Creating ..." progress, foodpipe's error, then the exit
    # code, which docker-compose 1.29's `run` prints on a line of its own.
    errors = [
        line
        for line in result.stderr.splitlines()
        if line.strip() and not line.startswith(("Creating", "Starting")) and line != "3"
    ]
    assert len(errors) == 1, f"expected one error line, got: {errors}"
    assert errors[0].startswith("foodpipe: cannot use PostgreSQL")
    assert "password authentication failed" in errors[0]
    assert "POSTGRES_PASSWORD" in errors[0]
    assert "wrong-password" not in result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert user.rows() >= rows
    assert_consistent(user, allow_lag=True)


def test_consumer_crash_under_load_restarts_and_loses_nothing(user: Checkout) -> None:
    # 500 orders/s, as a user sets it: ORDER_RATE in the environment of `up`.
    user.compose("up", "-d", ORDER_RATE="500")
    wait_until(
        lambda: health(user.container_ids("producer")[0]) == "healthy",
        timeout=120,
        interval=1,
        message="the 500/s producer healthy",
    )
    start_rows = user.rows()
    wait_until(
        lambda: user.rows() >= start_rows + 2000,
        timeout=60,
        interval=1,
        message="2,000 rows written at 500/s",
    )
    (cid,) = user.container_ids("consumer")
    restarts = inspect(cid)["RestartCount"]

    crash_consumer(cid)
    killed = time.monotonic()
    # The dead process commits nothing more: these are the offsets the next member
    # starts from, and recovery is every partition committed past them.
    at_kill = {p["partition"]: p["committed"] or 0 for p in user.status()["topic"]["partitions"]}
    wait_until(
        lambda: inspect(cid)["RestartCount"] > restarts,
        timeout=60,
        interval=0.2,
        message="the restart policy restarting the consumer",
    )
    restarted = time.monotonic() - killed

    def progressing() -> bool:
        parts = user.status().get("topic", {}).get("partitions", [])
        return bool(parts) and all(
            p["owner"] and (p["committed"] or 0) > at_kill[p["partition"]] for p in parts
        )

    wait_until(
        progressing,
        timeout=180,
        interval=0.5,
        message="every partition owned and committed past its offset at the kill",
    )
    recovered = time.monotonic() - killed
    print(
        f"consumer SIGKILLed at 500/s: container restarted after {restarted:.1f}s; every "
        f"partition owned and committing again {recovered:.1f}s after the kill"
    )
    state = inspect(cid)["State"]
    assert state["Running"]
    assert not state["OOMKilled"]

    user.compose("up", "-d", ORDER_RATE="10")
    wait_until(
        lambda: user.status().get("lag") == 0,
        timeout=180,
        interval=1,
        message="lag back to 0 after the burst",
    )
    report = assert_consistent(user, allow_lag=True)
    assert report["rows"] == report["distinct_rows"]


def test_down_then_up_keeps_rows_topic_and_order_ids(user: Checkout) -> None:
    rows_before = user.rows()
    max_id = user.sql("SELECT max(order_id) FROM orders")
    log_end_before = user.status()["topic"]["log_end"]
    user.compose("down", timeout=300)
    objects = user.project_objects()
    assert objects["containers"] == []
    assert len(objects["volumes"]) >= 3

    user.compose("up", "-d", timeout=900)
    wait_healthy(user, SERVICES, ONE_SHOTS, timeout=240)
    assert user.rows() >= rows_before
    wait_until(
        lambda: int(user.sql(f"SELECT count(*) FROM orders WHERE order_id > '{max_id}'")) >= 50,
        timeout=60,
        interval=1,
        message="50 orders with ids after the last one before `down`",
    )
    status = user.status()
    assert status["topic"]["log_end"] > log_end_before
    report = assert_consistent(user, allow_lag=True)
    assert report["producer_repeats"] == 0


def test_down_v_leaves_nothing_behind(user: Checkout, no_leftover_volumes: set[str]) -> None:
    from .harness import anonymous_volumes

    user.compose("down", "-v", timeout=300)
    assert user.project_objects() == {"containers": [], "volumes": [], "networks": []}
    assert anonymous_volumes() <= no_leftover_volumes, "anonymous volumes were left behind"


def test_a_missing_env_file_stops_compose_with_one_line(
    images: dict[str, str], tmp_path: Path
) -> None:
    fresh = Checkout.create(tmp_path, images)
    result = fresh.compose("up", "-d", check=False, timeout=120)
    assert result.returncode != 0
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert "in .env; scripts/setup_local.sh --env-only writes both" in lines[0]
    assert fresh.project_objects() == {"containers": [], "volumes": [], "networks": []}

    fresh.setup_env_file()
    env_text = (fresh.root / ".env").read_text()
    (fresh.root / ".env").write_text(
        re.sub(r"(?m)^POSTGRES_PASSWORD_FILE=.*$", "POSTGRES_PASSWORD_FILE=", env_text)
    )
    result = fresh.compose("up", "-d", check=False, timeout=120)
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    assert result.returncode != 0
    assert len(lines) == 1, lines
    assert "POSTGRES_PASSWORD_FILE" in lines[0]
    assert fresh.project_objects() == {"containers": [], "volumes": [], "networks": []}

    # .env names a file that is not there: Docker refuses to mount it and says which.
    (fresh.root / ".env").write_text(env_text)
    (fresh.root / ".secrets" / "postgres_admin_password").unlink()
    result = fresh.compose("up", "-d", check=False, timeout=120)
    assert result.returncode != 0
    assert ".secrets/postgres_admin_password" in result.stdout + result.stderr
    fresh.compose("down", "-v", timeout=120)
