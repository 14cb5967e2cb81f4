"""The pipeline under load: real ``foodpipe produce`` and ``foodpipe consume`` processes.

- :func:`preload`: ``produce --rate 0 --count N`` fills a topic as fast as the producer
  can get confirmations; its own summary gives the max confirmed rate.
- :func:`drain`: K consumers in a fresh group drain that topic into a fresh table. The
  clock runs from the moment the processes are started to the moment every offset is
  committed (lag 0) *and* every row is in the table, start-up and group join included.
- :func:`fixed_rate`: a consumer, then a producer at ``--rate R``; the achieved rate is
  the growth of the topic's end offsets over a fixed window after a warm-up, and the
  end-to-end latency is ``processed_at - created_at`` of the orders created in that
  window, read from the table (``processed_at`` is the writing transaction's start).

Each function checks what it measured: the expected number of rows, lag 0, exit code 0
of every process. A benchmark of a pipeline that loses orders would be worthless.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec  # type: ignore[attr-defined]
from sqlalchemy.engine import URL

from foodpipe.bench.procs import FoodpipeProcess, child_env
from foodpipe.bench.scratch import connect
from foodpipe.settings import Settings

#: How often the bench checks the group's progress while a drain runs. Each check is
#: two small admin requests; 0.1 s keeps the timing error of a 10 s drain near 1%.
PROGRESS_INTERVAL_S = 0.1


class BenchError(Exception):
    """A scenario did not do what it must (lost rows, a crashed process); one line."""


def wait_for(
    predicate: Callable[[], Any], timeout_s: float, what: str, interval_s: float = 0.1
) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise BenchError(f"timed out after {timeout_s:g}s waiting for {what}")
        time.sleep(interval_s)  # poll interval of a deadline loop


class KafkaProbe:
    """End offsets, committed offsets and group membership, through one admin client."""

    def __init__(self, admin: AdminClient, partitions: int) -> None:
        self.admin = admin
        self.partitions = partitions

    def end_total(self, topic: str) -> int:
        latest = OffsetSpec.latest()  # type: ignore[no-untyped-call]
        request = {TopicPartition(topic, p): latest for p in range(self.partitions)}
        futures = self.admin.list_offsets(request, request_timeout=10)
        return sum(max(future.result().offset, 0) for future in futures.values())

    def committed_total(self, group: str, topic: str) -> int:
        request = [
            ConsumerGroupTopicPartitions(
                group, [TopicPartition(topic, p) for p in range(self.partitions)]
            )
        ]
        futures = self.admin.list_consumer_group_offsets(request, request_timeout=10)
        result = futures[group].result()
        return sum(max(tp.offset, 0) for tp in result.topic_partitions)

    def assigned(self, group: str) -> int:
        """Partitions assigned to the group's members right now."""
        description = self.admin.describe_consumer_groups([group], request_timeout=10)[
            group
        ].result()
        return sum(len(m.assignment.topic_partitions) for m in description.members)


def _row_stats(admin_url: URL) -> tuple[int, float, int]:
    """``(rows, seconds from first to last batch start, rows of the last batch)``."""
    with closing(connect(admin_url)) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT count(*), EXTRACT(EPOCH FROM max(processed_at) - min(processed_at)),"
            " count(*) FILTER (WHERE processed_at = (SELECT max(processed_at) FROM orders))"
            " FROM orders"
        )
        rows, span, last = cur.fetchone()
        return int(rows), float(span or 0.0), int(last)


def _count_rows(admin_url: URL) -> int:
    with closing(connect(admin_url)) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM orders")
        return int(cur.fetchone()[0])


def _check_exit(proc: FoodpipeProcess, code: int, what: str) -> None:
    if code != 0:
        raise BenchError(f"{what} exited with {code}: {proc.tail()}")


def _check_alive(procs: list[FoodpipeProcess], what: str) -> None:
    for proc in procs:
        code = proc.proc.poll()
        if code is not None:
            raise BenchError(f"{what} exited early with {code}: {proc.tail()}")


# ------------------------------------------------------------------------------ preload


@dataclass(frozen=True)
class PreloadResult:
    delivered: int
    #: Confirmed orders/s from the producer's own summary (its run loop, start to flush).
    rate: float
    #: Seconds from spawning the process to its exit (imports and broker checks included).
    wall_s: float
    rss_mib: float


def preload(
    settings: Settings,
    probe: KafkaProbe,
    topic: str,
    count: int,
    seed: int,
    work_dir: Path,
    log_path: Path,
) -> PreloadResult:
    env = child_env(
        settings, KAFKA_TOPIC=topic, PRODUCER_STATE_DIR=str(work_dir / "producer-state")
    )
    args = ["produce", "--rate", "0", "--count", str(count), "--seed", str(seed), "--no-progress"]
    proc = FoodpipeProcess(args, env, log_path)
    code = proc.wait(timeout_s=120 + count / 1000)
    wall = time.monotonic() - proc.started
    _check_exit(proc, code, "foodpipe produce --rate 0")
    summary = next((e for e in proc.log_events() if e.get("event") == "producer stopped"), None)
    if summary is None:
        raise BenchError(f"foodpipe produce logged no 'producer stopped' summary: {proc.tail()}")
    delivered = int(summary["delivered"])
    on_topic = probe.end_total(topic)
    if delivered != count or on_topic != count:
        raise BenchError(
            f"pre-load confirmed {delivered} orders and the topic holds {on_topic};"
            f" expected {count}"
        )
    return PreloadResult(delivered, float(summary["rate"]), wall, proc.rss.peak_mib)


# -------------------------------------------------------------------------------- drain


@dataclass(frozen=True)
class DrainResult:
    consumers: int
    rows: int
    #: Seconds from starting the consumers to lag 0 with every row committed.
    elapsed_s: float
    #: Seconds from the first batch's transaction start to the last one's.
    steady_s: float
    #: Rows written between those two instants (all but the last batch).
    steady_rows: int
    #: Largest peak RSS among the consumers.
    rss_mib: float

    @property
    def rate(self) -> float:
        return self.rows / self.elapsed_s

    @property
    def steady_rate(self) -> float:
        return self.steady_rows / self.steady_s if self.steady_s > 0 else 0.0


def drain(
    settings: Settings,
    probe: KafkaProbe,
    *,
    topic: str,
    dlq_topic: str,
    group: str,
    consumers: int,
    expected: int,
    app_url: URL,
    admin_url: URL,
    log_dir: Path,
) -> DrainResult:
    env = child_env(
        settings,
        KAFKA_TOPIC=topic,
        KAFKA_DLQ_TOPIC=dlq_topic,
        KAFKA_CONSUMER_GROUP=group,
        DATABASE_URL=app_url.render_as_string(hide_password=False),
    )
    started = time.monotonic()
    procs = [
        FoodpipeProcess(["consume"], env, log_dir / f"{group}-consumer-{i + 1}.log")
        for i in range(consumers)
    ]
    what = f"drain of {expected} orders by {consumers} consumer(s)"
    try:

        def caught_up() -> bool:
            _check_alive(procs, "foodpipe consume")
            return probe.committed_total(group, topic) >= expected

        wait_for(caught_up, 300 + expected / 200, what, PROGRESS_INTERVAL_S)
        # Offsets are committed only after the rows' transaction: the rows must be there.
        rows = _count_rows(admin_url)
        elapsed = time.monotonic() - started
        if rows != expected:
            raise BenchError(f"{what}: lag is 0 but the table holds {rows} rows")
    finally:
        codes = [proc.stop() for proc in procs]
    for proc, code in zip(procs, codes, strict=True):
        _check_exit(proc, code, "foodpipe consume (SIGTERM)")
    _rows, span, last_batch = _row_stats(admin_url)
    return DrainResult(
        consumers=consumers,
        rows=rows,
        elapsed_s=elapsed,
        steady_s=span,
        steady_rows=rows - last_batch,
        rss_mib=max(proc.rss.peak_mib for proc in procs),
    )


# --------------------------------------------------------------------------- fixed rate


@dataclass(frozen=True)
class FixedRateResult:
    rate: float
    achieved: float
    window_s: float
    orders_in_window: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    rss_producer_mib: float
    rss_consumer_mib: float

    @property
    def error_pct(self) -> float:
        return (self.achieved / self.rate - 1.0) * 100.0


def _sample(probe: KafkaProbe, topic: str) -> tuple[float, datetime, int]:
    """``(monotonic, wall clock, end offsets)`` with the clocks at the request's midpoint."""
    before = time.monotonic()
    wall_before = datetime.now(UTC)
    total = probe.end_total(topic)
    after = time.monotonic()
    return (before + after) / 2, wall_before + (datetime.now(UTC) - wall_before) / 2, total


def _latency_ms(admin_url: URL, since: datetime, until: datetime) -> tuple[int, list[float]]:
    with closing(connect(admin_url)) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT count(*), percentile_cont(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP"
            " (ORDER BY EXTRACT(EPOCH FROM processed_at - created_at))"
            " FROM orders WHERE created_at >= %s AND created_at < %s",
            (since, until),
        )
        count, percentiles = cur.fetchone()
    return int(count), [float(p) * 1000.0 for p in (percentiles or [0.0, 0.0, 0.0])]


def fixed_rate(
    settings: Settings,
    probe: KafkaProbe,
    *,
    rate: float,
    window_s: float,
    warmup_s: float,
    seed: int,
    topic: str,
    dlq_topic: str,
    group: str,
    app_url: URL,
    admin_url: URL,
    work_dir: Path,
    log_dir: Path,
) -> FixedRateResult:
    tag = f"rate-{rate:g}"
    consumer_env = child_env(
        settings,
        KAFKA_TOPIC=topic,
        KAFKA_DLQ_TOPIC=dlq_topic,
        KAFKA_CONSUMER_GROUP=group,
        DATABASE_URL=app_url.render_as_string(hide_password=False),
    )
    producer_env = child_env(
        settings, KAFKA_TOPIC=topic, PRODUCER_STATE_DIR=str(work_dir / "producer-state")
    )
    consumer = FoodpipeProcess(["consume"], consumer_env, log_dir / f"{tag}-consumer.log")
    producer: FoodpipeProcess | None = None
    try:
        # The consumer owns every partition before the first order exists, so no order
        # waits for a group join.
        def owns_all() -> bool:
            _check_alive([consumer], "foodpipe consume")
            return probe.assigned(group) >= probe.partitions

        wait_for(owns_all, 60, f"the {tag} consumer to be assigned every partition", 0.2)
        producer = FoodpipeProcess(
            ["produce", "--rate", f"{rate:g}", "--seed", str(seed), "--no-progress"],
            producer_env,
            log_dir / f"{tag}-producer.log",
        )

        def flowing() -> bool:
            assert producer is not None
            _check_alive([producer], "foodpipe produce")
            return probe.end_total(topic) > 0

        wait_for(flowing, 60, f"the first order at {rate:g}/s", 0.05)
        time.sleep(warmup_s)  # let the rate limiter and the batches settle
        t0, wall0, offsets0 = _sample(probe, topic)
        time.sleep(max(0.0, t0 + window_s - time.monotonic()))
        t1, wall1, offsets1 = _sample(probe, topic)
        _check_alive([producer, consumer], f"the {tag} pipeline")
        code = producer.stop()
        _check_exit(producer, code, "foodpipe produce (SIGTERM)")
        produced = probe.end_total(topic)

        def caught_up() -> bool:
            _check_alive([consumer], "foodpipe consume")
            return probe.committed_total(group, topic) >= produced

        wait_for(caught_up, 60, f"the {tag} consumer to catch up", PROGRESS_INTERVAL_S)
    finally:
        if producer is not None and producer.running:
            producer.stop()
        code = consumer.stop()
    _check_exit(consumer, code, "foodpipe consume (SIGTERM)")
    rows = _count_rows(admin_url)
    if rows != produced:
        raise BenchError(f"{tag}: {produced} orders on the topic but {rows} rows in the table")
    in_window, (p50, p95, p99) = _latency_ms(admin_url, wall0, wall1)
    return FixedRateResult(
        rate=rate,
        achieved=(offsets1 - offsets0) / (t1 - t0),
        window_s=t1 - t0,
        orders_in_window=in_window,
        p50_ms=p50,
        p95_ms=p95,
        p99_ms=p99,
        rss_producer_mib=producer.rss.peak_mib,
        rss_consumer_mib=consumer.rss.peak_mib,
    )
