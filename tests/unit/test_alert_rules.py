"""The Prometheus alert rules (deploy/monitoring/alerts.yml), checked and unit-tested by
``promtool`` (Debian's ``prometheus`` package; scripts/bootstrap.sh installs it).

- ``promtool check rules`` and ``check config``: the files parse, the PromQL is valid;
- ``promtool test rules alerts.test.yml``: every alert fires on the series it is meant
  for and stays quiet on the others; this test checks that each alert has both cases;
- every rule reads only metrics foodpipe really exports, and points at its runbook.

promtool is required, not optional: a missing binary fails these tests (with the command
that installs it) instead of skipping them, so CI can never pass without running them.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import yaml

from ..support import REPO
from .test_monitoring import MONITORING, exported_sample_names, promtool

RULES = MONITORING / "alerts.yml"
RULE_TESTS = MONITORING / "alerts.test.yml"
RUNBOOK = REPO / "docs" / "deployment" / "alerts.md"
ALERTS = {
    "FoodpipeConsumerLagHigh",
    "FoodpipeDeadLettersGrowing",
    "FoodpipeNoConsumer",
    "FoodpipeConsumerRestarting",
    "FoodpipeProducerDeliveryFailing",
}


def run_promtool(*args: str, cwd: Path = MONITORING) -> str:
    result = subprocess.run(
        [promtool(), *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"promtool {' '.join(args)} failed:\n{output}"
    return output


def rules() -> list[dict[str, Any]]:
    document = yaml.safe_load(RULES.read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


def test_promtool_checks_the_rules_and_the_config_that_loads_them() -> None:
    assert f"SUCCESS: {len(ALERTS)} rules found" in run_promtool("check", "rules", RULES.name)
    output = run_promtool("check", "config", "prometheus.yml")
    assert "SUCCESS: 1 rule files found" in output, output


def test_promtool_unit_tests_of_the_rules_pass() -> None:
    output = run_promtool("test", "rules", RULE_TESTS.name)
    assert "SUCCESS" in output, output


def test_each_alert_is_tested_firing_and_not_firing() -> None:
    assert {rule["alert"] for rule in rules()} == ALERTS
    document = yaml.safe_load(RULE_TESTS.read_text())
    assert document["rule_files"] == [RULES.name]
    firing: set[str] = set()
    quiet: set[str] = set()
    for test in document["tests"]:
        for case in test["alert_rule_test"]:
            (firing if case["exp_alerts"] else quiet).add(case["alertname"])
    assert firing == ALERTS, f"never shown firing: {sorted(ALERTS - firing)}"
    assert quiet == ALERTS, f"never shown quiet: {sorted(ALERTS - quiet)}"


def test_the_rules_read_only_metrics_foodpipe_exports() -> None:
    exported = exported_sample_names()
    assert "process_start_time_seconds" in exported  # the restart alert reads it
    for rule in rules():
        names = set(re.findall(r"\b(?:foodpipe|process)_[a-z0-9_]+", rule["expr"]))
        assert names, rule["alert"]
        assert names <= exported, (rule["alert"], sorted(names - exported))


def test_each_alert_says_what_to_do_and_links_its_runbook_section() -> None:
    runbook = RUNBOOK.read_text()
    anchors = {
        re.sub(r"[^a-z0-9 -]", "", heading.lower()).replace(" ", "-")
        for heading in re.findall(r"^#+ (.+)$", runbook, flags=re.MULTILINE)
    }
    for rule in rules():
        name = rule["alert"]
        assert rule["labels"]["severity"] in ("warning", "critical"), name
        annotations = rule["annotations"]
        assert annotations["summary"].strip(), name
        link = f"docs/deployment/alerts.md#{name.lower()}"
        assert link in annotations["description"], name
        assert name.lower() in anchors, f"{RUNBOOK.name} has no section {name}"


def test_the_shipped_thresholds_are_the_documented_ones() -> None:
    """The runbook's table and the rules agree on threshold and duration."""
    runbook = RUNBOOK.read_text()
    for rule in rules():
        row = next(
            (line for line in runbook.splitlines() if line.startswith(f"| `{rule['alert']}`")),
            None,
        )
        assert row is not None, f"{rule['alert']} missing from the table in {RUNBOOK.name}"
        assert f"`{rule.get('for', '0s')}`" in row, (rule["alert"], row)
