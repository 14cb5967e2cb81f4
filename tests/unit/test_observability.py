"""Metrics definitions and the /healthz, /readyz, /metrics server, without services."""

from __future__ import annotations

import json
import socket
import struct
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from prometheus_client import CollectorRegistry

from foodpipe.commands.produce import GroupLag
from foodpipe.consumer.classify import ErrorClass
from foodpipe.consumer.stats import ConsumerStats
from foodpipe.observability import (
    MAX_CONNECTIONS,
    ConsumerMetrics,
    HealthServer,
    ProducerMetrics,
    Readiness,
    serve,
    start_http,
)
from foodpipe.producer.stats import ProducerStats
from foodpipe.settings import ConfigError, load_settings
from tests.support import wait_until


def value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


def get(url: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - http://127.0.0.1
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read().decode()


# ------------------------------------------------------------------------ producer


def test_producer_counters_are_read_from_the_stats_at_scrape_time() -> None:
    registry = CollectorRegistry()
    stats = ProducerStats()
    ProducerMetrics(registry, stats)
    assert value(registry, "foodpipe_orders_produced_total") == 0
    stats.sent, stats.delivered, stats.failed, stats.retried, stats.buffer_full = 10, 7, 1, 3, 2
    assert value(registry, "foodpipe_orders_produced_total") == 10
    assert value(registry, "foodpipe_orders_delivered_total") == 7
    assert value(registry, "foodpipe_orders_failed_total") == 1
    assert value(registry, "foodpipe_orders_in_flight") == 2
    assert value(registry, "foodpipe_producer_retries_total") == 3
    assert value(registry, "foodpipe_producer_buffer_full_total") == 2
    assert value(registry, "foodpipe_build_info", service="producer", version="0.1.0") == 1


def test_registries_are_per_service_and_names_are_defined_once() -> None:
    first, second = CollectorRegistry(), CollectorRegistry()
    stats_a, stats_b = ProducerStats(delivered=1), ProducerStats(delivered=5)
    ProducerMetrics(first, stats_a)
    ProducerMetrics(second, stats_b)
    assert value(first, "foodpipe_orders_delivered_total") == 1
    assert value(second, "foodpipe_orders_delivered_total") == 5
    # The same metrics twice on one registry would export every series twice: refused.
    with pytest.raises(ValueError, match="Duplicated"):
        ProducerMetrics(first, stats_b)


# ------------------------------------------------------------------------ consumer


def test_consumer_counters_histograms_and_dead_letters_by_class() -> None:
    registry = CollectorRegistry()
    stats = ConsumerStats()
    metrics = ConsumerMetrics(registry, stats)
    stats.consumed, stats.written, stats.duplicates, stats.conflicts = 12, 8, 2, 1
    stats.record_dead_letter("json_invalid")
    stats.record_dead_letter("json_invalid")
    stats.record_dead_letter("db_constraint")
    stats.batches, stats.db_retries, stats.commit_failures, stats.rebalances = 3, 4, 5, 6
    assert value(registry, "foodpipe_messages_consumed_total") == 12
    assert value(registry, "foodpipe_orders_written_total") == 8
    assert value(registry, "foodpipe_orders_duplicate_total") == 2
    assert value(registry, "foodpipe_orders_conflict_total") == 1
    dead = "foodpipe_orders_dead_lettered_total"
    assert value(registry, dead, error_class="json_invalid") == 2
    assert value(registry, dead, error_class="db_constraint") == 1
    assert value(registry, "foodpipe_batches_total") == 3
    assert value(registry, "foodpipe_db_retries_total") == 4
    assert value(registry, "foodpipe_offset_commit_failures_total") == 5
    assert value(registry, "foodpipe_rebalances_total") == 6

    metrics.observe_batch(500, 0.02)
    metrics.observe_batch(3, 0.2)
    assert value(registry, "foodpipe_batch_size_count") == 2
    assert value(registry, "foodpipe_batch_size_sum") == 503
    assert value(registry, "foodpipe_batch_size_bucket", le="5.0") == 1
    assert value(registry, "foodpipe_batch_latency_seconds_bucket", le="0.025") == 1
    assert value(registry, "foodpipe_batch_latency_seconds_sum") == pytest.approx(0.22)


def test_every_known_dead_letter_class_is_exported_from_the_start_at_0() -> None:
    # So that rate()/increase() count the first dead letters of a class too: a series
    # that appears at 5 looks like "no increase" to Prometheus.
    registry = CollectorRegistry()
    stats = ConsumerStats()
    ConsumerMetrics(registry, stats)
    dead = "foodpipe_orders_dead_lettered_total"
    for error_class in ErrorClass:
        assert value(registry, dead, error_class=str(error_class)) == 0, error_class
    stats.record_dead_letter(ErrorClass.JSON_INVALID)
    stats.record_dead_letter("a_class_added_later")
    assert value(registry, dead, error_class="json_invalid") == 1
    assert value(registry, dead, error_class="a_class_added_later") == 1
    assert value(registry, dead, error_class="not_utf8") == 0


def test_end_to_end_latency_is_commit_time_minus_created_at_never_negative() -> None:
    registry = CollectorRegistry()
    metrics = ConsumerMetrics(registry, ConsumerStats())
    now = datetime(2025, 1, 10, 12, 0, 0, tzinfo=UTC)
    created = [now - timedelta(milliseconds=40), now - timedelta(seconds=3), now + timedelta(1)]
    metrics.observe_end_to_end(created, now=now)
    name = "foodpipe_end_to_end_latency_seconds"
    assert value(registry, f"{name}_count") == 3
    assert value(registry, f"{name}_sum") == pytest.approx(3.04)
    # A producer clock slightly ahead of ours counts as 0, not as a negative latency.
    assert value(registry, f"{name}_bucket", le="0.01") == 1
    assert value(registry, f"{name}_bucket", le="0.05") == 2


def test_lag_is_read_at_scrape_time_for_owned_partitions_only() -> None:
    registry = CollectorRegistry()
    calls: list[list[tuple[str, int]]] = []

    def reader(owned: list[tuple[str, int]]) -> dict[tuple[str, int], int]:
        calls.append(owned)
        # The broker may know of more partitions than this member owns: ignored.
        return {("orders", 0): 7, ("orders", 2): 0, ("orders", 1): 99}

    metrics = ConsumerMetrics(registry, ConsumerStats(), lag_reader=reader)
    assert value(registry, "foodpipe_consumer_lag", topic="orders", partition="0") is None
    assert calls == []  # nothing owned: no request at all
    metrics.set_assignment([("orders", 0), ("orders", 2)])
    assert metrics.owned == {("orders", 0), ("orders", 2)}
    assert value(registry, "foodpipe_consumer_assigned_partitions") == 2
    assert value(registry, "foodpipe_consumer_lag", topic="orders", partition="0") == 7
    assert value(registry, "foodpipe_consumer_lag", topic="orders", partition="2") == 0
    assert value(registry, "foodpipe_consumer_lag", topic="orders", partition="1") is None
    assert calls[-1] == [("orders", 0), ("orders", 2)]
    metrics.set_assignment([])
    assert value(registry, "foodpipe_consumer_lag", topic="orders", partition="0") is None
    assert value(registry, "foodpipe_consumer_assigned_partitions") == 0


def test_a_failing_lag_reader_does_not_break_the_scrape() -> None:
    registry = CollectorRegistry()

    def reader(_owned: list[tuple[str, int]]) -> dict[tuple[str, int], int]:
        raise RuntimeError("broker down")

    metrics = ConsumerMetrics(registry, ConsumerStats(written=3), lag_reader=reader)
    metrics.set_assignment([("orders", 0)])
    assert value(registry, "foodpipe_orders_written_total") == 3
    assert value(registry, "foodpipe_consumer_lag", topic="orders", partition="0") is None


def test_the_producer_exports_the_groups_lag_on_every_partition_at_scrape_time() -> None:
    registry = CollectorRegistry()
    calls: list[None] = []

    def reader() -> dict[tuple[str, int], int]:
        calls.append(None)
        return {("orders", 1): 40, ("orders", 0): 2, ("orders", 2): -1}

    ProducerMetrics(registry, ProducerStats(), group="processors", group_lag=reader)
    assert calls == []  # registering asks the broker nothing
    lag = "foodpipe_group_lag"
    assert value(registry, lag, group="processors", topic="orders", partition="0") == 2
    assert value(registry, lag, group="processors", topic="orders", partition="1") == 40
    # A committed offset ahead of a just-read log end is lag 0, never negative.
    assert value(registry, lag, group="processors", topic="orders", partition="2") == 0
    assert len(calls) == 3  # one broker read per scrape


def test_a_failing_group_lag_reader_does_not_break_the_producers_scrape() -> None:
    registry = CollectorRegistry()

    def reader() -> dict[tuple[str, int], int]:
        raise RuntimeError("broker down")

    ProducerMetrics(registry, ProducerStats(delivered=5), group="g", group_lag=reader)
    assert value(registry, "foodpipe_orders_delivered_total") == 5
    families = {family.name: family for family in registry.collect()}
    assert families["foodpipe_group_lag"].samples == []


def test_group_lag_reads_nothing_before_the_broker_answered() -> None:
    assert GroupLag("orders", "g")() == {}


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="process metrics need /proc")
def test_both_services_export_their_start_time_so_alerts_see_restarts() -> None:
    producer, consumer = CollectorRegistry(), CollectorRegistry()
    ProducerMetrics(producer, ProducerStats())
    ConsumerMetrics(consumer, ConsumerStats())
    now = datetime.now(UTC).timestamp()
    for registry in (producer, consumer):
        started = value(registry, "process_start_time_seconds")
        assert started is not None
        assert now - 24 * 3600 < started <= now + 1
        assert value(registry, "process_resident_memory_bytes")


# ------------------------------------------------------------------------ HTTP


@pytest.fixture
def server() -> Iterator[tuple[HealthServer, Readiness, ProducerStats]]:
    registry = CollectorRegistry()
    stats = ProducerStats(sent=4, delivered=3)
    ProducerMetrics(registry, stats)
    ready = Readiness("waiting for the broker")
    with start_http("127.0.0.1", 0, registry, ready) as running:
        yield running, ready, stats


def test_healthz_readyz_and_metrics(server: tuple[HealthServer, Readiness, ProducerStats]) -> None:
    running, ready, stats = server
    assert running.enabled
    assert running.url == f"http://127.0.0.1:{running.port}"
    status, ctype, body = get(f"{running.url}/healthz")
    assert (status, ctype) == (200, "application/json")
    assert json.loads(body) == {"status": "alive"}

    status, _, body = get(f"{running.url}/readyz")
    assert status == 503
    assert json.loads(body) == {"ready": False, "reason": "waiting for the broker"}
    ready.set(True, "connected")
    status, _, body = get(f"{running.url}/readyz")
    assert status == 200
    assert json.loads(body) == {"ready": True, "reason": "connected"}

    status, ctype, body = get(f"{running.url}/metrics")
    assert status == 200
    assert ctype.startswith("text/plain")
    assert "foodpipe_orders_delivered_total 3.0" in body
    stats.delivered = 4
    assert "foodpipe_orders_delivered_total 4.0" in get(f"{running.url}/metrics")[2]

    assert get(f"{running.url}/nope")[0] == 404
    assert get(f"{running.url}/readyz?verbose=1")[0] == 200
    request = urllib.request.Request(f"{running.url}/healthz", method="HEAD")  # noqa: S310
    with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310
        assert response.status == 200
        assert response.read() == b""


def test_readyz_answers_503_when_the_readiness_check_raises() -> None:
    def broken() -> bool:
        raise RuntimeError("boom")

    with start_http("127.0.0.1", 0, CollectorRegistry(), broken) as running:
        status, _, body = get(f"{running.url}/readyz")
    assert status == 503
    assert json.loads(body)["reason"] == "readiness check failed: RuntimeError: boom"


def test_a_plain_callable_gets_a_default_reason() -> None:
    with start_http("127.0.0.1", 0, CollectorRegistry(), lambda: True) as running:
        assert json.loads(get(f"{running.url}/readyz")[2]) == {"ready": True, "reason": "ready"}


def test_port_0_in_settings_turns_the_endpoints_off() -> None:
    settings = load_settings(_env_file=None, metrics_port=0)
    disabled = serve(settings, CollectorRegistry(), lambda: True)
    assert not disabled.enabled
    assert disabled.port is None
    assert disabled.url is None
    disabled.close()  # nothing to close, no error


def test_serve_binds_the_configured_port_and_close_frees_it() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings = load_settings(_env_file=None, metrics_port=port, metrics_host="127.0.0.1")
    running = serve(settings, CollectorRegistry(), lambda: True)
    assert running.port == port
    assert get(f"http://127.0.0.1:{port}/healthz")[0] == 200
    running.close()
    running.close()  # idempotent
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2)


def test_a_busy_port_is_one_line_naming_the_setting() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        settings = load_settings(_env_file=None, metrics_port=port, metrics_host="127.0.0.1")
        with pytest.raises(ConfigError) as caught:
            serve(settings, CollectorRegistry(), lambda: True)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"METRICS_PORT: cannot listen on 127.0.0.1:{port}")


# ------------------------------------------------------------ hostile or broken clients


def _wait_closed_by_server(sock: socket.socket, deadline_s: float) -> bool:
    """True when the server closes ``sock`` (EOF or reset) within ``deadline_s``."""
    sock.settimeout(deadline_s)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def _answers(url: str) -> bool:
    try:
        return get(url)[0] == 200
    except (urllib.error.URLError, ConnectionError):
        return False


def test_an_idle_client_is_dropped_after_the_socket_timeout() -> None:
    with start_http("127.0.0.1", 0, CollectorRegistry(), lambda: True, timeout_s=0.5) as running:
        assert running.port is not None
        with socket.create_connection(("127.0.0.1", running.port)) as idle:
            idle.sendall(b"GET /metr")  # a request that never ends
            assert _wait_closed_by_server(idle, 10.0), "the server kept an idle client"
        assert get(f"{running.url}/healthz")[0] == 200


def test_slow_clients_hold_at_most_the_thread_cap() -> None:
    with start_http("127.0.0.1", 0, CollectorRegistry(), lambda: True, timeout_s=30) as running:
        assert running.port is not None
        before = threading.active_count()
        slow = [socket.create_connection(("127.0.0.1", running.port)) for _ in range(50)]
        try:
            # Over the cap, the server refuses at once instead of starting a thread.
            dropped = sum(_wait_closed_by_server(s, 0.2) for s in slow)
            assert dropped >= 50 - MAX_CONNECTIONS
            assert threading.active_count() - before <= MAX_CONNECTIONS
        finally:
            for s in slow:
                s.close()
        wait_until(lambda: _answers(f"{running.url}/healthz"), timeout=10, message="a free slot")


def test_clients_that_disconnect_early_leave_no_traceback(
    capfd: pytest.CaptureFixture[str],
) -> None:
    with start_http("127.0.0.1", 0, CollectorRegistry(), lambda: True) as running:
        assert running.port is not None
        for partial in (b"", b"GET /metrics HTTP/1.1\r\n", b"GET /metrics HTTP/1.1\r\n\r\n"):
            for _ in range(10):
                client = socket.create_connection(("127.0.0.1", running.port))
                client.sendall(partial)
                # SO_LINGER 0: close with a reset, like a client that crashed.
                client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                client.close()
        assert get(f"{running.url}/healthz")[0] == 200
    err = capfd.readouterr().err
    assert "Traceback" not in err
    assert "Exception occurred during processing" not in err
