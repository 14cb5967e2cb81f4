"""The bench's pure parts: summaries, same-run ratios, targets, rendering, parsing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from foodpipe.bench import procs
from foodpipe.bench.ceilings import parse_perf_summary
from foodpipe.bench.data import COLUMNS, make_dataset
from foodpipe.bench.metrics import METRICS, TARGETS
from foodpipe.bench.report import build_document, render_markdown
from foodpipe.bench.runner import RunRecord
from foodpipe.bench.stats import summarize
from foodpipe.commands import bench as bench_command
from foodpipe.models import Order
from foodpipe.settings import ConfigError, load_settings

CONDITIONS: dict[str, Any] = {
    "cpu_count": 2,
    "cpu_model": "test CPU",
    "mem_total_mib": 1024,
    "os": "Linux test",
    "versions": {
        "python": "3.11",
        "confluent_kafka": "2.16.1",
        "librdkafka": "2.16.0",
        "kafka": "4.3.1",
        "java": "17",
        "postgres": "15",
    },
    "postgres_settings": {"synchronous_commit": "on"},
    "producer": {"acks": "all", "linger.ms": 10, "compression.type": "lz4"},
    "consumer": {"batch_size": 500, "batch_timeout_ms": 1000, "batch_linger_ms": 5},
    "bench": {
        "orders": 1000,
        "runs": 2,
        "naive_rows": 100,
        "db_batch_page_rows": 500,
        "seed": 1,
        "mean_order_bytes": 300.0,
        "rate_window_s": 30.0,
        "rate_warmup_s": 3.0,
    },
}


def record(index: int, busy: float = 5.0, **values: float) -> RunRecord:
    run = RunRecord(index, "2026-01-01T00:00:00+00:00", busy, 0.1)
    run.values.update(values)
    return run


def document(*runs: RunRecord) -> dict[str, Any]:
    return build_document(
        date="2026-01-01",
        started_at="s",
        finished_at="f",
        command="foodpipe bench",
        conditions=CONDITIONS,
        runs=list(runs),
    )


def test_summary_gives_median_and_spread() -> None:
    summary = summarize([10.0, 30.0, 20.0])
    assert (summary.median, summary.min, summary.max) == (20.0, 10.0, 30.0)
    assert summary.spread_pct == pytest.approx(100.0)
    assert summarize([0.0, 0.0]).spread_pct == 0.0
    with pytest.raises(ValueError, match="no values"):
        summarize([])


def test_ratios_are_taken_within_each_run_before_summarising() -> None:
    # Run 1: slow machine (both halved). Run 2: fast. The same-run ratio is 0.5 both times,
    # while the ratio of medians would mix the two machines' states.
    doc = document(
        record(1, drain_1=10_000, db_copy=20_000),
        record(2, drain_1=30_000, db_copy=60_000),
    )
    ratio = doc["ratios"]["drain_1_vs_db_copy"]
    assert ratio["runs"] == [0.5, 0.5]
    assert ratio["spread_pct"] == 0.0
    assert doc["metrics"]["drain_1"]["median"] == 20_000


def test_targets_use_the_median_or_the_worst_run() -> None:
    doc = document(
        record(1, rss_consumer_drain_1=100.0, rate_10_error=-0.5, producer_max=25_000),
        record(2, rss_consumer_drain_1=130.0, rate_10_error=-2.5, producer_max=15_000),
        record(3, rss_consumer_drain_1=90.0, rate_10_error=1.0, producer_max=21_000),
    )
    targets = {t["metric"]: t for t in doc["targets"]}
    # Memory: one run over the limit is an OOM kill, whatever the median says.
    assert targets["rss_consumer_drain_1"]["value"] == 130.0
    assert targets["rss_consumer_drain_1"]["met"] is False
    # Rate accuracy: the worst absolute error.
    assert targets["rate_10_error"]["value"] == 2.5
    assert targets["rate_10_error"]["met"] is False
    # Throughput: the median.
    assert targets["producer_max"]["value"] == 21_000
    assert targets["producer_max"]["met"] is True
    # Not measured is neither met nor missed.
    assert targets["e2e_1000_p99"]["met"] is None


def test_a_run_on_a_busy_machine_is_flagged() -> None:
    doc = document(record(1, busy=80.0, db_copy=1.0), record(2, busy=3.0, db_copy=1.0))
    assert doc["disturbed_runs"] == [1]
    assert [run["disturbed"] for run in doc["runs"]] == [True, False]


def test_markdown_has_every_table_and_marks_missed_targets() -> None:
    values = dict.fromkeys(METRICS, 1.0)
    values.update(drain_1=1000.0, db_copy=100_000.0, db_naive=2000.0, e2e_1000_p99=250.0)
    markdown = render_markdown(document(record(1, **values)), Path("2026-01-01.png"))
    assert "| measurement | median | min | max | spread | unit |" in markdown
    assert "BATCH_SIZE=500, BATCH_TIMEOUT_MS=1000, BATCH_LINGER_MS=5; producer" in markdown
    assert "| drain_1 / db_copy | 0.01 |" in markdown
    assert "| end-to-end p99 <= 100 ms at 1000/s | 250 | median | MISSED |" in markdown
    assert "not reached (aim)" in markdown
    # An aim reached is told apart from a floor met.
    assert (
        "| aim: consumer peak RSS while draining alone <= 80 MiB | 1.00 | worst | reached (aim) |"
        in (markdown)
    )
    assert markdown.rstrip().endswith("](2026-01-01.png)")
    assert len([t for t in TARGETS if t.required]) == markdown.count("MISSED") + sum(
        1 for line in markdown.splitlines() if line.endswith("| met |")
    )


def test_a_percentages_spread_is_in_points_not_relative_to_a_median_near_0() -> None:
    runs = [
        record(i, **{**dict.fromkeys(METRICS, 1.0), "rate_10_error": error})
        for i, error in enumerate((0.01, -0.03, 0.02), start=1)
    ]
    markdown = render_markdown(document(*runs), Path("x.png"))
    row = next(line for line in markdown.splitlines() if "| rate error at --rate 10 |" in line)
    assert row.endswith("| 0.05 pp | % |"), row
    assert "| drain, 1 consumer (start to lag 0) | 1.00 | 1.00 | 1.00 | 0.0% |" in markdown


def test_producer_performance_summary_is_parsed_from_the_last_line() -> None:
    output = (
        "150000 records sent, 29994.0 records/sec (9.52 MB/sec), 12.1 ms avg latency,"
        " 300.0 ms max latency.\n"
        "200000 records sent, 31250.5 records/sec (9.92 MB/sec), 10.25 ms avg latency,"
        " 412.00 ms max latency, 5 ms 50th, 20 ms 95th, 40 ms 99th, 90 ms 99.9th.\n"
    )
    summary = parse_perf_summary(output)
    assert summary is not None
    assert (summary.records, summary.rate, summary.mb_per_s) == (200_000, 31250.5, 9.92)
    assert parse_perf_summary("Exception in thread main") is None


def test_the_dataset_holds_valid_orders_in_copy_format() -> None:
    data = make_dataset(50, seed=7, sample=10)
    assert len(data.rows) == 50
    assert len(data.sample_values) == 10
    assert 150 < data.mean_value_bytes < 1000
    for value in data.sample_values:
        Order.model_validate_json(value)  # the producer's serialisation, valid by contract
    lines = data.copy_buffer().read().splitlines()
    assert len(lines) == 50
    assert all(len(line.split("\t")) == len(COLUMNS) for line in lines)
    assert len({row[0] for row in data.rows}) == 50  # unique order ids
    # The same seed gives the same contents.
    assert [r[1:4] for r in make_dataset(50, seed=7).rows] == [r[1:4] for r in data.rows]


def test_peak_rss_follows_a_process_until_it_exits() -> None:
    assert (procs.read_vm_hwm_kib(os.getpid()) or 0) > 0
    child = subprocess.Popen([sys.executable, "-c", "b = bytearray(40 * 2**20); input()"],
                             stdin=subprocess.PIPE)  # fmt: skip
    rss = procs.PeakRss(child.pid, interval_s=0.01)
    try:
        deadline = 200
        while rss.peak_mib < 40 and deadline:
            deadline -= 1
            rss._done.wait(0.05)
        assert rss.peak_mib >= 40
    finally:
        child.communicate(b"\n", timeout=10)
        rss.stop()
    assert procs.read_vm_hwm_kib(child.pid) is None
    assert rss.peak_mib >= 40


def test_children_get_every_setting_with_secrets_revealed() -> None:
    settings = load_settings(
        _env_file=None,
        database_url="postgresql://u:s3cret@h/d",
        database_admin_url="postgresql://o:0wner@h/d",
    )
    env = procs.child_env(settings, KAFKA_TOPIC="t")
    assert env["DATABASE_URL"] == "postgresql://u:s3cret@h/d"
    assert env["KAFKA_TOPIC"] == "t"
    assert env["FOODPIPE_ENV"] == "development"
    assert env["LOG_FORMAT"] == "json"
    assert isinstance(settings.database_admin_url, SecretStr)


def test_children_never_get_the_owner_url(monkeypatch: pytest.MonkeyPatch) -> None:
    # The consumer and producer run as the least-privilege role, in the bench as in
    # production: the owner's URL is for the bench's own scratch databases only.
    monkeypatch.setenv("DATABASE_ADMIN_URL", "postgresql://o:0wner-env@h/d")
    settings = load_settings(_env_file=None, database_admin_url="postgresql://o:0wner@h/d")
    env = procs.child_env(settings)
    assert "DATABASE_ADMIN_URL" not in env
    assert not any("0wner" in value for value in env.values())


def test_without_an_owner_url_the_bench_says_which_setting_is_missing(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(bench_command, "_broker_answers", lambda *_: True)
    monkeypatch.setattr(bench_command, "STACK_SCRIPT", tmp_path / "absent.sh")
    monkeypatch.delenv("DATABASE_ADMIN_URL", raising=False)
    settings = load_settings(_env_file=None)
    with pytest.raises(ConfigError, match=r"^DATABASE_ADMIN_URL is not set: .*local_stack\.sh env"):
        bench_command.ensure_stack(settings, "/dev/null", None)


def test_bad_arguments_are_refused_by_the_parser(capsys: pytest.CaptureFixture[str]) -> None:
    from foodpipe.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["bench", "--orders", "5"])
    assert exc.value.code == 2
    assert "5 must be at least 100" in capsys.readouterr().err
