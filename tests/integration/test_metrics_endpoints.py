"""/healthz, /readyz and /metrics of the real services, with orders flowing.

- exact counts after N orders (producer and consumer), duplicates and dead letters
  included;
- /readyz false before a consumer has partitions, true once it has;
- lag, read at scrape time, grows while the consumer is stuck and returns to 0.
"""

from __future__ import annotations

import json
import subprocess
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from confluent_kafka import Producer
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import text

from foodpipe.kafka import producer_config
from foodpipe.observability import ProducerMetrics
from foodpipe.producer.generator import OrderGenerator
from foodpipe.producer.ids import OrderIdAllocator
from foodpipe.producer.ratelimit import RateLimiter
from foodpipe.producer.service import OrderProducer
from foodpipe.producer.stats import ProducerStats
from tests.conftest import Pipeline
from tests.poison import POISON, produce_records, record, valid_order
from tests.support import end_offsets, free_port, spawn_foodpipe, stop_process, wait_until

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - local http
            return int(response.status), response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except (urllib.error.URLError, ConnectionError):
        return 0, ""


def scrape(port: int) -> Samples:
    status, body = get(f"http://127.0.0.1:{port}/metrics")
    assert status == 200, body
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(body)
        for sample in family.samples
    }


def metric(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def total(samples: Samples, name: str) -> float:
    return sum(value for (n, _labels), value in samples.items() if n == name)


def ready(port: int) -> tuple[int, dict[str, object]]:
    status, body = get(f"http://127.0.0.1:{port}/readyz")
    return status, (json.loads(body) if body else {})


def test_consumer_metrics_give_exact_counts_after_n_orders(
    pipeline: Pipeline, log_dir: Path
) -> None:
    orders = [valid_order(n) for n in range(1, 201)]
    resent = orders[:10]  # a producer retry after a lost acknowledgement
    poison = [c for c in POISON if c.error_class in ("json_invalid", "business_rule")]
    records: list[tuple[bytes | None, bytes | None]] = [record(o) for o in orders]
    records += [record(o) for o in resent]
    records += [(c.key, c.value) for c in poison]
    produce_records(pipeline.bootstrap, pipeline.topic, records)

    port = free_port()
    env = {**pipeline.env, "METRICS_PORT": str(port)}
    consumer = spawn_foodpipe(["consume"], env, log_dir / "consumer.log")
    try:
        wait_until(lambda: get(f"http://127.0.0.1:{port}/healthz")[0] == 200, timeout=30)
        wait_until(lambda: ready(port)[0] == 200, timeout=60, message="/readyz 200")
        wait_until(
            lambda: (
                metric(scrape(port), "foodpipe_orders_written_total") == len(orders)
                and total(scrape(port), "foodpipe_orders_dead_lettered_total") == len(poison)
            ),
            timeout=90,
            message=lambda: f"{len(orders)} written and {len(poison)} dead-lettered",
        )
        wait_until(
            lambda: (
                total(scrape(port), "foodpipe_consumer_lag") == 0
                and len([k for k in scrape(port) if k[0] == "foodpipe_consumer_lag"]) == 3
            ),
            timeout=30,
            message="lag 0 on the 3 owned partitions",
        )
        samples = scrape(port)
    finally:
        assert stop_process(consumer) == 0, (log_dir / "consumer.log").read_text()[-3000:]

    assert pipeline.row_count() == len(orders)
    assert metric(samples, "foodpipe_messages_consumed_total") == len(records)
    assert metric(samples, "foodpipe_orders_written_total") == len(orders)
    assert metric(samples, "foodpipe_orders_duplicate_total") == len(resent)
    assert metric(samples, "foodpipe_orders_conflict_total") == 0
    for error_class in ("json_invalid", "business_rule"):
        expected = sum(1 for c in poison if c.error_class == error_class)
        dead = metric(samples, "foodpipe_orders_dead_lettered_total", error_class=error_class)
        assert dead == expected, error_class
    # Every message was in exactly one batch; every inserted order has one latency.
    assert metric(samples, "foodpipe_batch_size_sum") == len(records)
    batches = metric(samples, "foodpipe_batches_total")
    assert batches >= 1
    assert metric(samples, "foodpipe_batch_size_count") == batches
    assert metric(samples, "foodpipe_batch_latency_seconds_count") == batches
    assert metric(samples, "foodpipe_end_to_end_latency_seconds_count") == len(orders)
    assert metric(samples, "foodpipe_consumer_assigned_partitions") == 3
    assert metric(samples, "foodpipe_rebalances_total") >= 1
    assert metric(samples, "foodpipe_build_info", service="consumer", version="0.1.0") == 1


def test_readyz_is_false_without_partitions_and_true_once_assigned(
    make_pipeline: Callable[..., Pipeline], log_dir: Path
) -> None:
    # One partition, two consumers: exactly one of them owns it.
    pipe = make_pipeline(partitions=1)
    ports = [free_port(), free_port()]
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for i, port in enumerate(ports):
            env = {**pipe.env, "METRICS_PORT": str(port)}
            procs.append(spawn_foodpipe(["consume"], env, log_dir / f"consumer-{i}.log"))

        def one_ready_one_not() -> tuple[int, int] | None:
            states = [ready(port) for port in ports]
            codes = sorted(code for code, _doc in states)
            if codes != [200, 503]:
                return None
            owner = next(i for i, (code, _doc) in enumerate(states) if code == 200)
            # Wait until the idle member is connected too (not merely still starting):
            # alive, but with nothing to do.
            if states[1 - owner][1] != {
                "ready": False,
                "reason": "connected; no partition assigned to this member",
            }:
                return None
            return owner, 1 - owner

        owner, idle = wait_until(one_ready_one_not, timeout=90, message="one owner, one idle")
        assert get(f"http://127.0.0.1:{ports[idle]}/healthz")[0] == 200
        assert ready(ports[owner])[1] == {"ready": True, "reason": "connected; owns 1 partition"}
        assert metric(scrape(ports[idle]), "foodpipe_consumer_assigned_partitions") == 0

        # The owner leaves: the idle member is assigned the partition and becomes ready.
        assert stop_process(procs[owner]) == 0
        wait_until(
            lambda: ready(ports[idle])[0] == 200,
            timeout=90,
            message="the remaining member to become ready",
        )
        assert metric(scrape(ports[idle]), "foodpipe_consumer_assigned_partitions") == 1
    finally:
        for proc in procs:
            stop_process(proc)


def test_lag_grows_while_the_consumer_is_stuck_and_returns_to_0(
    make_pipeline: Callable[..., Pipeline], log_dir: Path
) -> None:
    pipe = make_pipeline(batch_timeout_ms=200)
    port = free_port()
    env = {**pipe.env, "METRICS_PORT": str(port)}
    consumer = spawn_foodpipe(["consume"], env, log_dir / "consumer.log")
    try:
        wait_until(lambda: ready(port)[0] == 200, timeout=60, message="/readyz 200")
        with pipe.admin_engine.connect() as conn, conn.begin():
            # Hold the table: the consumer's writes hit lock_timeout, so it retries with
            # its partitions paused and commits nothing.
            conn.execute(text("LOCK TABLE orders IN ACCESS EXCLUSIVE MODE"))
            produce_records(
                pipe.bootstrap, pipe.topic, [record(valid_order(n)) for n in range(1, 21)]
            )
            wait_until(
                lambda: total(scrape(port), "foodpipe_consumer_lag") == 20,
                timeout=30,
                message=lambda: f"lag 20 (got {total(scrape(port), 'foodpipe_consumer_lag')})",
            )
            wait_until(
                lambda: metric(scrape(port), "foodpipe_db_retries_total") >= 1,
                timeout=30,
                message="a retried write",
            )
        wait_until(
            lambda: total(scrape(port), "foodpipe_consumer_lag") == 0,
            timeout=60,
            message="lag back to 0",
        )
        assert metric(scrape(port), "foodpipe_orders_written_total") == 20
    finally:
        assert stop_process(consumer) == 0
    assert pipe.row_count() == 20


def test_producer_metrics_count_exactly_what_the_broker_confirmed(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    registry = CollectorRegistry()
    stats = ProducerStats()
    ProducerMetrics(registry, stats)
    producer = Producer(producer_config(pipeline.settings))
    service = OrderProducer(
        producer,
        pipeline.topic,
        OrderGenerator(7),
        OrderIdAllocator(tmp_path / "ids"),
        RateLimiter(0),
        count=300,
        stats=stats,
    )
    result = service.run()
    assert result.delivered == 300
    assert sum(end_offsets(pipeline.bootstrap, pipeline.topic).values()) == 300
    assert registry.get_sample_value("foodpipe_orders_produced_total") == 300
    assert registry.get_sample_value("foodpipe_orders_delivered_total") == 300
    assert registry.get_sample_value("foodpipe_orders_failed_total") == 0
    assert registry.get_sample_value("foodpipe_orders_in_flight") == 0


def test_producer_endpoints_while_producing(
    pipeline: Pipeline, tmp_path: Path, log_dir: Path
) -> None:
    port = free_port()
    env = {
        **pipeline.env,
        "METRICS_PORT": str(port),
        "PRODUCER_STATE_DIR": str(tmp_path / "ids"),
    }
    proc = spawn_foodpipe(["produce", "--rate", "200"], env, log_dir / "producer.log")
    try:
        wait_until(lambda: ready(port)[0] == 200, timeout=60, message="/readyz 200")
        assert ready(port)[1] == {"ready": True, "reason": "connected to Kafka"}
        first = metric(scrape(port), "foodpipe_orders_delivered_total")
        wait_until(
            lambda: metric(scrape(port), "foodpipe_orders_delivered_total") >= first + 50,
            timeout=30,
            message="the delivered counter to move",
        )
        samples = scrape(port)
        produced = metric(samples, "foodpipe_orders_produced_total")
        delivered = metric(samples, "foodpipe_orders_delivered_total")
        in_flight = metric(samples, "foodpipe_orders_in_flight")
        assert produced == delivered + in_flight
        assert metric(samples, "foodpipe_orders_failed_total") == 0
    finally:
        assert stop_process(proc) == 0
    # What the producer confirmed is what the topic holds.
    stopped = [
        json.loads(line)
        for line in (log_dir / "producer.log").read_text().splitlines()
        if '"producer stopped"' in line
    ]
    assert sum(end_offsets(pipeline.bootstrap, pipeline.topic).values()) == stopped[-1]["delivered"]
