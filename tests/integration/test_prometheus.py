"""Prometheus against the live native stack: it scrapes a real producer and consumer, and
stopping the consumer makes the lag alert fire.

Debian's ``prometheus`` binary (installed by scripts/bootstrap.sh) runs with its own data
directory and a generated configuration: both services as static targets, scraped and
evaluated every second. The rules are a test-only copy of deploy/monitoring/alerts.yml
with every ``for:`` cut to 2 s; expressions and thresholds are the shipped ones (so the
producer runs fast enough to pass the 1000-message lag threshold in a few seconds).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import Pipeline
from tests.integration.test_metrics_endpoints import ready
from tests.support import REPO, free_port, spawn_foodpipe, stop_process, wait_until

RULES = REPO / "deploy" / "monitoring" / "alerts.yml"
#: Orders/s while the consumer is stopped: lag passes 1000 in about 3 s.
RATE = 300
TEST_FOR = "2s"


def api(base: str, path: str, **params: str) -> Any:
    """GET a Prometheus HTTP API path; the ``data`` of a success, None otherwise."""
    url = f"{base}{path}?{urllib.parse.urlencode(params)}" if params else f"{base}{path}"
    try:
        with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - local http
            document = json.loads(response.read())
    except (urllib.error.URLError, ConnectionError, json.JSONDecodeError):
        return None
    return document["data"] if document.get("status") == "success" else None


def query(base: str, promql: str) -> list[dict[str, Any]]:
    data = api(base, "/api/v1/query", query=promql)
    return list(data["result"]) if data else []


def alerts(base: str, name: str, state: str) -> list[dict[str, Any]]:
    data = api(base, "/api/v1/alerts")
    found = data["alerts"] if data else []
    return [a for a in found if a["labels"]["alertname"] == name and a["state"] == state]


def shortened_rules(path: Path) -> Path:
    """The shipped rules with every ``for:`` shortened; nothing else changed."""
    document = yaml.safe_load(RULES.read_text())
    for group in document["groups"]:
        for rule in group["rules"]:
            if "for" in rule:
                rule["for"] = TEST_FOR
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


@pytest.fixture
def prometheus_binary() -> str:
    path = shutil.which("prometheus")
    if path is None:
        pytest.fail(
            "the prometheus binary is missing: run scripts/bootstrap.sh (Debian's prometheus"
            " package)",
            pytrace=False,
        )
    return path


@pytest.fixture
def prometheus(
    prometheus_binary: str, tmp_path: Path, log_dir: Path
) -> Iterator[tuple[str, int, int]]:
    """A Prometheus scraping the ports it returns: ``(api base, producer, consumer)``."""
    producer_port, consumer_port, web_port = free_port(), free_port(), free_port()
    rules = shortened_rules(tmp_path / "alerts.yml")
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(rules)],
        "scrape_configs": [
            {"job_name": job, "static_configs": [{"targets": [f"127.0.0.1:{port}"]}]}
            for job, port in (("producer", producer_port), ("consumer", consumer_port))
        ],
    }
    config_path = tmp_path / "prometheus.yml"
    config_path.write_text(yaml.safe_dump(config))
    log = open(log_dir / "prometheus.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [
            prometheus_binary,
            f"--config.file={config_path}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{web_port}",
            "--storage.tsdb.retention.time=1h",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{web_port}"
    try:
        wait_until(
            lambda: api(base, "/api/v1/status/buildinfo") is not None,
            timeout=30,
            message=lambda: (
                "Prometheus's API to answer; its log:\n"
                + (log_dir / "prometheus.log").read_text()[-2000:]
            ),
        )
        yield base, producer_port, consumer_port
    finally:
        stop_process(proc)
        log.close()


def test_prometheus_scrapes_both_services_and_fires_the_lag_alert_without_a_consumer(
    pipeline: Pipeline,
    prometheus: tuple[str, int, int],
    tmp_path: Path,
    log_dir: Path,
) -> None:
    base, producer_port, consumer_port = prometheus
    consumer = spawn_foodpipe(
        ["consume"], {**pipeline.env, "METRICS_PORT": str(consumer_port)}, log_dir / "consumer.log"
    )
    producer_env = {
        **pipeline.env,
        "METRICS_PORT": str(producer_port),
        "PRODUCER_STATE_DIR": str(tmp_path / "ids"),
    }
    producer = spawn_foodpipe(["produce", "--rate", str(RATE)], producer_env, log_dir / "p.log")
    try:
        # Both targets are up, and each is the service it should be.
        both = {"producer", "consumer"}
        wait_until(
            lambda: {r["metric"]["job"] for r in query(base, "up == 1")} == both,
            timeout=60,
            message=lambda: f"up == 1 for both jobs (got {query(base, 'up')})",
        )
        builds = {
            (r["metric"]["job"], r["metric"]["service"]) for r in query(base, "foodpipe_build_info")
        }
        assert builds == {("producer", "producer"), ("consumer", "consumer")}
        # The consumer owns the 3 partitions and keeps up: orders are written, the alert
        # is not firing, and the producer reports the group's lag on every partition.
        wait_until(lambda: ready(consumer_port)[0] == 200, timeout=60, message="consumer ready")
        wait_until(
            lambda: query(base, "sum(foodpipe_orders_written_total) > 0"),
            timeout=30,
            message="orders written, as Prometheus sees it",
        )
        lag = query(base, f'foodpipe_group_lag{{topic="{pipeline.topic}"}}')
        assert {r["metric"]["partition"] for r in lag} == {"0", "1", "2"}, lag
        assert {r["metric"]["group"] for r in lag} == {pipeline.group}
        assert query(base, "sum(foodpipe_consumer_assigned_partitions)")[0]["value"][1] == "3"
        assert not alerts(base, "FoodpipeConsumerLagHigh", "firing")
        # It fired while the consumer was starting (no partitions yet); it resolves now.
        wait_until(
            lambda: not alerts(base, "FoodpipeNoConsumer", "firing"),
            timeout=30,
            message="FoodpipeNoConsumer to resolve while the consumer owns partitions",
        )

        # Stop the consumer while the producer runs: the lag alert must fire.
        assert stop_process(consumer) == 0
        stopped = time.monotonic()
        firing = wait_until(
            lambda: alerts(base, "FoodpipeConsumerLagHigh", "firing"),
            timeout=60,
            interval=0.2,
            message=lambda: (
                "FoodpipeConsumerLagHigh firing; lag by Prometheus: "
                f"{query(base, 'sum(foodpipe_group_lag)')}"
            ),
        )
        fired_after = time.monotonic() - stopped
        print(f"\nFoodpipeConsumerLagHigh fired {fired_after:.1f} s after the consumer stopped")
        (alert,) = firing
        assert alert["labels"]["topic"] == pipeline.topic
        assert alert["labels"]["severity"] == "warning"
        assert float(alert["value"]) > 1000
        assert "docs/deployment/alerts.md" in alert["annotations"]["description"]
        # And no consumer is scraped any more: that alert fires too.
        wait_until(
            lambda: alerts(base, "FoodpipeNoConsumer", "firing"),
            timeout=30,
            interval=0.2,
            message="FoodpipeNoConsumer firing",
        )
        assert query(base, 'up{job="consumer"}')[0]["value"][1] == "0"
    finally:
        stop_process(consumer)
        assert stop_process(producer) == 0, (log_dir / "p.log").read_text()[-2000:]
