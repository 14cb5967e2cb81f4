"""``foodpipe produce`` as a real process against the real broker."""

from __future__ import annotations

import json
import signal
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException, Message

from foodpipe.models import Order, kafka_headers
from foodpipe.producer.generator import OrderGenerator
from foodpipe.producer.measure import (
    CONTAINER_LIMIT_KIB,
    json_lines,
    measure_max_rate,
    measure_rate_accuracy,
    read_status_kib,
    summary_of,
)
from foodpipe.settings import load_settings

from ..conftest import Pipeline, Stack
from ..support import (
    consume_all,
    end_offsets,
    run_foodpipe,
    spawn_foodpipe,
    stop_process,
    wait_until,
)


def _env(pipeline: Pipeline, state_dir: Path, **extra: str) -> dict[str, str]:
    return {**pipeline.env, "PRODUCER_STATE_DIR": str(state_dir), **extra}


def _in_topic(pipeline: Pipeline) -> int:
    """Messages in the topic (sum of log-end offsets); 0 while leaders are being elected."""
    try:
        return sum(end_offsets(pipeline.bootstrap, pipeline.topic).values())
    except KafkaException as exc:
        # A topic created a moment ago may not have a partition leader yet.
        if exc.args[0].code() in (
            KafkaError.NOT_LEADER_FOR_PARTITION,
            KafkaError.LEADER_NOT_AVAILABLE,
            KafkaError.UNKNOWN_TOPIC_OR_PART,
        ):
            return 0
        raise


def _parse(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


def _order(msg: Message) -> Order:
    value = msg.value()
    assert value is not None
    return Order.model_validate_json(value)


def _number(order_id: str) -> int:
    return int(order_id.rsplit("-", 1)[1])


def test_count_delivers_every_order_keyed_valid_and_with_headers(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    result = run_foodpipe(
        ["produce", "--count", "1000", "--rate", "0", "--seed", "11"],
        _env(pipeline, tmp_path / "state"),
        timeout=120,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr
    summary = summary_of(_parse(result.stdout))
    assert summary is not None
    assert (summary["delivered"], summary["failed"], summary["in_flight"]) == (1000, 0, 0)
    assert summary["reason"] == "count reached"

    messages = consume_all(pipeline.bootstrap, pipeline.topic, 1000)
    assert _in_topic(pipeline) == 1000, "exactly the confirmed orders, no extras"
    partitions: dict[str, set[int]] = defaultdict(set)
    orders = []
    for msg in messages:
        order = _order(msg)  # every value is a valid Order
        assert msg.key() == order.customer_id.encode()
        assert dict(msg.headers() or []) == dict(kafka_headers())
        partition = msg.partition()
        assert partition is not None
        partitions[order.customer_id].add(partition)
        orders.append(order)
    assert len({o.order_id for o in orders}) == 1000
    # One customer, one partition: the key keeps each customer's orders in order.
    assert all(len(p) == 1 for p in partitions.values()), partitions
    assert set().union(*partitions.values()) == {0, 1, 2}

    # The contents are the seed's stream: ids are handed out in generation order.
    orders.sort(key=lambda o: _number(o.order_id))
    generator = OrderGenerator(11)
    for order in orders:
        expected = generator.to_order(generator.next_content(), order.order_id, order.created_at)
        assert order == expected


def test_sigterm_mid_run_confirms_everything_it_sent_and_exits_0(
    pipeline: Pipeline, tmp_path: Path, log_dir: Path
) -> None:
    log_path = log_dir / "producer.log"
    proc = spawn_foodpipe(
        ["produce", "--rate", "2000"],
        _env(pipeline, tmp_path / "state", LOG_LEVEL="DEBUG"),
        log_path,
    )
    try:
        wait_until(
            lambda: _in_topic(pipeline) >= 2000,
            timeout=60,
            interval=0.3,
            message="2,000 orders in the topic",
        )
        peak_kib = read_status_kib(proc.pid)
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=30)
    finally:
        stop_process(proc)
    lines = json_lines(log_path)
    assert code == 0, log_path.read_text()[-3000:]
    summary = summary_of(lines)
    assert summary is not None
    assert summary["reason"] == "signal"
    assert (summary["failed"], summary["in_flight"], summary["lost"]) == (0, 0, False)
    delivered = summary["delivered"]
    reported = {ln["order_id"] for ln in lines if ln.get("event") == "order delivered"}
    assert len(reported) == delivered >= 2000

    messages = consume_all(pipeline.bootstrap, pipeline.topic, delivered)
    assert _in_topic(pipeline) == delivered
    assert {_order(m).order_id for m in messages} == reported
    assert peak_kib is not None
    assert peak_kib < CONTAINER_LIMIT_KIB


def test_concurrent_and_restarted_producers_never_repeat_an_id(
    pipeline: Pipeline, tmp_path: Path, log_dir: Path
) -> None:
    env = _env(pipeline, tmp_path / "shared-state")
    procs = [
        spawn_foodpipe(["produce", "--count", "3000", "--rate", "0"], env, log_dir / f"p{n}.log")
        for n in range(2)
    ]
    try:
        codes = [proc.wait(timeout=120) for proc in procs]
    finally:
        for proc in procs:
            stop_process(proc)
    assert codes == [0, 0]
    restarted = run_foodpipe(["produce", "--count", "500", "--rate", "0"], env, timeout=120)
    assert restarted.returncode == 0, restarted.stderr
    messages = consume_all(pipeline.bootstrap, pipeline.topic, 6500)
    ids = [_order(m).order_id for m in messages]
    assert len(ids) == len(set(ids)) == 6500
    assert _in_topic(pipeline) == 6500


def test_an_unreachable_broker_is_one_line_and_exit_3(tmp_path: Path) -> None:
    started = time.monotonic()
    result = run_foodpipe(
        ["produce", "--count", "1", "--wait", "2"],
        {"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9", "PRODUCER_STATE_DIR": str(tmp_path)},
        timeout=60,
    )
    assert result.returncode == 3, result.stdout + result.stderr
    assert time.monotonic() - started < 20, "the wait is bounded"
    err = result.stderr.strip().splitlines()
    assert len(err) == 1, result.stderr
    assert err[0].startswith("foodpipe: cannot reach Kafka at 127.0.0.1:9")
    assert "KAFKA_BOOTSTRAP_SERVERS" in err[0]
    assert "Traceback" not in result.stdout + result.stderr


def test_an_unusable_state_directory_is_one_line(pipeline: Pipeline, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    result = run_foodpipe(
        ["produce", "--count", "1"], _env(pipeline, blocker / "state"), timeout=60
    )
    assert result.returncode == 3
    assert result.stderr.count("\n") == 1
    assert "PRODUCER_STATE_DIR" in result.stderr
    assert "Traceback" not in result.stderr


def test_bad_arguments_are_a_usage_error(tmp_path: Path) -> None:
    result = run_foodpipe(["produce", "--rate", "-5"], {"PRODUCER_STATE_DIR": str(tmp_path)})
    assert result.returncode == 2
    assert "--rate: '-5' must be a finite number >= 0" in result.stderr


def test_at_max_rate_memory_stays_under_the_container_limit(stack: Stack, tmp_path: Path) -> None:
    settings = load_settings(_env_file=None, kafka_bootstrap_servers=stack.bootstrap)
    result = measure_max_rate(settings, tmp_path, 30_000)
    assert result["exit_code"] == 0, (tmp_path / "max-rate.log").read_text()[-3000:]
    assert result["delivered"] == 30_000
    assert result["peak_rss_mib"] < CONTAINER_LIMIT_KIB / 1024


@pytest.mark.slow
def test_rate_is_within_2_percent_over_30_seconds_at_10_and_1000_per_second(
    stack: Stack, tmp_path: Path
) -> None:
    settings = load_settings(_env_file=None, kafka_bootstrap_servers=stack.bootstrap)
    results = measure_rate_accuracy(settings, tmp_path, [10.0, 1000.0], window_s=30.0)
    for result in results:
        rate = result["target_rate"]
        log = (tmp_path / f"rate-{rate:g}.log").read_text()[-3000:]
        assert result["exit_code"] == 0, log
        assert abs(result["error_pct"]) <= 2.0, result
        assert result["peak_rss_mib"] < CONTAINER_LIMIT_KIB / 1024, result
