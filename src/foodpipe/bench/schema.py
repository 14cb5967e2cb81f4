"""JSON Schema (draft 2020-12) of ``bench/results/<date>.json``.

Kept next to the code that writes the file, so a change to one shows up in review next
to the other; ``tests/integration/test_bench.py`` validates a real result against it.
"""

from __future__ import annotations

from typing import Any

from foodpipe.bench.metrics import METRICS, OPTIONAL, RATIOS

_NUMBER = {"type": "number"}
_SUMMARY: dict[str, Any] = {
    "type": "object",
    "required": ["runs", "median", "min", "max", "spread_pct"],
    "properties": {
        "runs": {"type": "array", "items": _NUMBER, "minItems": 1},
        "median": _NUMBER,
        "min": _NUMBER,
        "max": _NUMBER,
        "spread_pct": {"type": "number", "minimum": 0},
    },
}

RESULT_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "foodpipe bench result",
    "type": "object",
    "required": [
        "schema_version",
        "date",
        "started_at",
        "finished_at",
        "command",
        "conditions",
        "runs",
        "metrics",
        "ratios",
        "targets",
        "disturbed_runs",
    ],
    "properties": {
        "schema_version": {"const": 1},
        "date": {"type": "string", "pattern": r"^\d{4}-\d{2}-\d{2}$"},
        "started_at": {"type": "string"},
        "finished_at": {"type": "string"},
        "command": {"type": "string", "minLength": 1},
        "conditions": {
            "type": "object",
            "required": [
                "cpu_count",
                "versions",
                "producer",
                "consumer",
                "postgres_settings",
                "bench",
            ],
            "properties": {
                "cpu_count": {"type": "integer", "minimum": 1},
                "versions": {
                    "type": "object",
                    "required": [
                        "python",
                        "confluent_kafka",
                        "librdkafka",
                        "kafka",
                        "postgres",
                    ],
                    "additionalProperties": {"type": "string"},
                },
                "producer": {"type": "object", "required": ["acks", "linger.ms"]},
                "consumer": {"type": "object", "required": ["batch_size", "batch_timeout_ms"]},
                "bench": {
                    "type": "object",
                    "required": ["orders", "runs", "naive_rows", "db_batch_page_rows", "seed"],
                },
            },
        },
        "runs": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": [
                    "index",
                    "started_at",
                    "seconds",
                    "cpu_busy_before_pct",
                    "disturbed",
                    "values",
                ],
                "properties": {
                    "index": {"type": "integer", "minimum": 1},
                    "disturbed": {"type": "boolean"},
                    "values": {
                        "type": "object",
                        "propertyNames": {"enum": sorted(METRICS)},
                        "additionalProperties": _NUMBER,
                    },
                },
            },
        },
        "metrics": {
            "type": "object",
            "required": sorted(set(METRICS) - OPTIONAL),
            "propertyNames": {"enum": sorted(METRICS)},
            "additionalProperties": {
                **_SUMMARY,
                "required": [*_SUMMARY["required"], "label", "unit", "group"],
            },
        },
        "ratios": {
            "type": "object",
            "required": sorted(set(RATIOS) - OPTIONAL),
            "propertyNames": {"enum": sorted(RATIOS)},
            "additionalProperties": {
                **_SUMMARY,
                "required": [*_SUMMARY["required"], "numerator", "denominator"],
            },
        },
        "targets": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["description", "metric", "op", "threshold", "value", "met"],
                "properties": {
                    "op": {"enum": [">=", "<="]},
                    "value": {"type": ["number", "null"]},
                    "met": {"type": ["boolean", "null"]},
                },
            },
        },
        "disturbed_runs": {"type": "array", "items": {"type": "integer"}},
    },
}
