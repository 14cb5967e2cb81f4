"""The optional monitoring profile: Compose services, Prometheus targets, and a Grafana
dashboard that only queries metrics foodpipe really exports.

Grafana itself cannot be run here, so its dashboard is validated statically: the JSON
loads, every query is valid PromQL (parsed by ``promtool``) over exported metrics, and
the panels have unique ids and refIds and tile the 24-column grid without overlapping.
The alert rules have their own tests: tests/unit/test_alert_rules.py.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from foodpipe.consumer.stats import ConsumerStats
from foodpipe.observability import ConsumerMetrics, ProducerMetrics
from foodpipe.producer.stats import ProducerStats

from ..compose_support import example_env, load_compose
from ..support import REPO

MONITORING = REPO / "deploy" / "monitoring"
DASHBOARD = MONITORING / "grafana" / "dashboards" / "foodpipe.json"
#: The port the scrape configuration expects METRICS_PORT to be.
SCRAPE_PORT = 9100


def promtool() -> str:
    """The promtool binary; missing, it fails the test (CI must never skip these)."""
    path = shutil.which("promtool")
    if path is None:
        pytest.fail(
            "promtool is missing: run scripts/bootstrap.sh (it installs Debian's prometheus"
            " package), or apt-get install prometheus",
            pytrace=False,
        )
    return path


def compose_services() -> dict[str, dict[str, Any]]:
    services: dict[str, dict[str, Any]] = load_compose("local", example_env())["services"]
    return services


def exported_sample_names() -> set[str]:
    """Every sample name the producer and the consumer expose, suffixes included."""
    names: set[str] = set()
    for build in (
        lambda r: ProducerMetrics(r, ProducerStats()),
        lambda r: ConsumerMetrics(
            r, ConsumerStats(), lag_reader=lambda owned: dict.fromkeys(owned, 0)
        ),
    ):
        registry = CollectorRegistry()
        metrics = build(registry)
        if isinstance(metrics, ConsumerMetrics):
            metrics.set_assignment([("orders", 0)])  # so the lag series exists
        for family in registry.collect():
            names.add(family.name)
            if family.type == "counter":  # a labelled counter may have no sample yet
                names.add(f"{family.name}_total")
            names.update(sample.name for sample in family.samples)
    return names


def dashboard() -> dict[str, Any]:
    document: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return document


def test_monitoring_services_are_behind_the_profile_and_bound_to_loopback() -> None:
    services = compose_services()
    monitoring = {name for name, s in services.items() if "monitoring" in s.get("profiles", [])}
    assert monitoring == {"prometheus", "grafana"}
    for name in monitoring:
        service = services[name]
        assert service["profiles"] == ["monitoring"], "must stay off by default"
        assert all(str(p).startswith("127.0.0.1:") for p in service["ports"])
        assert "mem_limit" in service
        assert float(service["cpus"]) > 0
        assert ":latest" not in service["image"]
        for volume in service["volumes"]:
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (REPO / source).exists(), f"{name} mounts a missing {source}"


def test_grafana_has_no_default_admin_password_to_forget() -> None:
    env = compose_services()["grafana"]["environment"]
    assert env["GF_SECURITY_DISABLE_INITIAL_ADMIN_CREATION"] == "true"
    assert env["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"
    assert "GF_SECURITY_ADMIN_PASSWORD" not in env


def test_prometheus_scrapes_every_producer_and_consumer_replica() -> None:
    config = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    for service in ("producer", "consumer"):
        (sd,) = jobs[service]["dns_sd_configs"]
        assert sd["names"] == [service]  # Docker DNS answers one A record per replica
        assert sd["type"] == "A"
        assert sd["port"] == SCRAPE_PORT
    assert "prometheus.yml" in " ".join(compose_services()["prometheus"]["volumes"])


def test_grafana_provisioning_points_at_the_mounted_dashboard_and_datasource() -> None:
    provisioning = MONITORING / "grafana" / "provisioning"
    datasource = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())
    (source,) = datasource["datasources"]
    assert source["url"] == "http://prometheus:9090"
    provider = yaml.safe_load((provisioning / "dashboards" / "foodpipe.yml").read_text())
    path = provider["providers"][0]["options"]["path"]
    mounts = compose_services()["grafana"]["volumes"]
    assert f"./deploy/monitoring/grafana/dashboards:{path}:ro" in mounts
    uids = {
        target["datasource"]["uid"]
        for panel in dashboard()["panels"]
        for target in panel.get("targets", [])
    }
    assert uids == {source["uid"]}


def test_the_dashboard_queries_only_metrics_that_exist() -> None:
    exported = exported_sample_names()
    queried: set[str] = set()
    for panel in dashboard()["panels"]:
        for target in panel.get("targets", []):
            queried.update(re.findall(r"\bfoodpipe_[a-z0-9_]+", target["expr"]))
    assert queried, "the dashboard queries nothing"
    assert queried <= exported, sorted(queried - exported)
    # And it shows what issue 6 lists: throughput, lag, rebalances, latencies, DLQ.
    for needed in (
        "foodpipe_orders_delivered_total",
        "foodpipe_orders_written_total",
        "foodpipe_orders_duplicate_total",
        "foodpipe_orders_dead_lettered_total",
        "foodpipe_consumer_lag",
        "foodpipe_rebalances_total",
        "foodpipe_batch_latency_seconds_bucket",
        "foodpipe_batch_size_sum",
        "foodpipe_end_to_end_latency_seconds_bucket",
        "foodpipe_orders_failed_total",
    ):
        assert needed in queried, needed


def test_dashboard_panels_have_unique_ids_and_fit_the_grid() -> None:
    panels = dashboard()["panels"]
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids))
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] >= 0, panel["title"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]


def test_every_dashboard_query_is_valid_promql(tmp_path: Path) -> None:
    """promtool parses each query, as the expression of a recording rule."""
    queries = [
        (panel["title"], target["refId"], target["expr"])
        for panel in dashboard()["panels"]
        for target in panel.get("targets", [])
    ]
    # Grafana's own variables are not PromQL; the dashboard uses none today.
    assert not [q for q in queries if "$" in q[2]], "replace Grafana variables before parsing"
    rules = [
        {"record": f"dashboard:query_{i}", "expr": expr} for i, (_t, _r, expr) in enumerate(queries)
    ]
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = subprocess.run(
        [promtool(), "check", "rules", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout


def test_dashboard_panels_have_targets_with_unique_ref_ids_and_do_not_overlap() -> None:
    document = dashboard()
    assert document["uid"] == "foodpipe"
    assert isinstance(document["schemaVersion"], int)
    taken: dict[tuple[int, int], str] = {}
    for panel in document["panels"]:
        title = panel["title"]
        assert title.strip(), panel["id"]
        if panel["type"] != "row":
            refs = [target["refId"] for target in panel.get("targets", [])]
            assert refs, f"{title} queries nothing"
            assert len(refs) == len(set(refs)), f"{title}: duplicate refId"
        grid = panel["gridPos"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in taken, f"{title} overlaps {taken[(x, y)]}"
                taken[(x, y)] = title


def test_the_monitoring_files_are_where_the_docs_say() -> None:
    for relative in (
        "prometheus.yml",
        "alerts.yml",
        "alerts.test.yml",
        "grafana/provisioning/datasources/prometheus.yml",
        "grafana/provisioning/dashboards/foodpipe.yml",
        "grafana/dashboards/foodpipe.json",
    ):
        assert (MONITORING / relative).is_file(), relative
