"""What the bench measures: metric names, units, the ratios between them, the targets.

One run produces a flat ``{metric: value}`` dict. Ratios are computed *within* each run
(the pipeline and its ceiling saw the same machine at the same moment) and only then
summarised over the runs, which is what makes them stable on a shared machine.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

#: The container memory limit each Python service must fit (PRD: 128 MB each).
RSS_LIMIT_MIB = 128.0


@dataclass(frozen=True)
class MetricInfo:
    label: str
    unit: str
    group: Literal["ceiling", "pipeline", "peer", "accuracy", "latency", "memory"]
    higher_is_better: bool = True


METRICS: dict[str, MetricInfo] = {
    # Ceilings: what the database and the broker can do on their own.
    "db_copy": MetricInfo("DB-COPY (COPY of prepared rows)", "rows/s", "ceiling"),
    "db_batch": MetricInfo("DB-BATCH (execute_values pages, commit per page)", "rows/s", "ceiling"),
    "db_naive": MetricInfo("DB-NAIVE (one INSERT + COMMIT per row)", "rows/s", "ceiling"),
    "kafka_produce": MetricInfo(
        "KAFKA-PRODUCE (ProducerPerformance, acks=all)", "msg/s", "ceiling"
    ),
    "kafka_consume": MetricInfo("KAFKA-CONSUME (bare confluent-kafka drain)", "msg/s", "ceiling"),
    # The pipeline.
    "producer_max": MetricInfo("producer max rate (confirmed)", "orders/s", "pipeline"),
    "drain_1": MetricInfo("drain, 1 consumer (start to lag 0)", "orders/s", "pipeline"),
    "drain_2": MetricInfo("drain, 2 consumers (start to lag 0)", "orders/s", "pipeline"),
    "drain_3": MetricInfo("drain, 3 consumers (start to lag 0)", "orders/s", "pipeline"),
    "drain_1_steady": MetricInfo("drain, 1 consumer (first to last row)", "orders/s", "pipeline"),
    "drain_2_steady": MetricInfo("drain, 2 consumers (first to last row)", "orders/s", "pipeline"),
    "drain_3_steady": MetricInfo("drain, 3 consumers (first to last row)", "orders/s", "pipeline"),
    # The peer an engineer would pick instead (Kafka Connect + the Debezium JDBC sink),
    # draining the same orders; optional (``--no-peer``, or no Java / jars / connector).
    "peer_jdbc": MetricInfo("JDBC-sink peer (start to last row)", "orders/s", "peer"),
    "peer_jdbc_steady": MetricInfo("JDBC-sink peer (first to last row)", "orders/s", "peer"),
    # Not an ``rss_`` metric: the 128 MiB limit is for foodpipe's own services.
    "peer_jdbc_rss": MetricInfo("JDBC-sink peer peak RSS (its JVM)", "MiB", "peer", False),
    # Rate accuracy: achieved rate over a fixed window, and its error.
    "rate_10_achieved": MetricInfo("achieved rate at --rate 10", "orders/s", "accuracy"),
    "rate_10_error": MetricInfo("rate error at --rate 10", "%", "accuracy", False),
    "rate_1000_achieved": MetricInfo("achieved rate at --rate 1000", "orders/s", "accuracy"),
    "rate_1000_error": MetricInfo("rate error at --rate 1000", "%", "accuracy", False),
    # End-to-end latency, processed_at - created_at, over the window.
    "e2e_1000_p50": MetricInfo("end-to-end p50 at 1000/s", "ms", "latency", False),
    "e2e_1000_p95": MetricInfo("end-to-end p95 at 1000/s", "ms", "latency", False),
    "e2e_1000_p99": MetricInfo("end-to-end p99 at 1000/s", "ms", "latency", False),
    "e2e_10_p50": MetricInfo("end-to-end p50 at 10/s", "ms", "latency", False),
    "e2e_10_p99": MetricInfo("end-to-end p99 at 10/s", "ms", "latency", False),
    # Peak RSS (VmHWM) of each Python service, per scenario; for N consumers, the largest.
    "rss_producer_max_rate": MetricInfo("RSS producer, max rate", "MiB", "memory", False),
    "rss_producer_10": MetricInfo("RSS producer, 10/s", "MiB", "memory", False),
    "rss_producer_1000": MetricInfo("RSS producer, 1000/s", "MiB", "memory", False),
    "rss_consumer_drain_1": MetricInfo("RSS consumer, draining alone", "MiB", "memory", False),
    "rss_consumer_drain_2": MetricInfo("RSS consumer, draining 1 of 2", "MiB", "memory", False),
    "rss_consumer_drain_3": MetricInfo("RSS consumer, draining 1 of 3", "MiB", "memory", False),
    "rss_consumer_10": MetricInfo("RSS consumer, 10/s", "MiB", "memory", False),
    "rss_consumer_1000": MetricInfo("RSS consumer, 1000/s", "MiB", "memory", False),
}


@dataclass(frozen=True)
class Ratio:
    numerator: str
    denominator: str
    title: str = ""

    @property
    def label(self) -> str:
        return self.title or f"{self.numerator} / {self.denominator}"


RATIOS: dict[str, Ratio] = {
    **{
        f"drain_{n}_vs_{ceiling}": Ratio(f"drain_{n}", ceiling)
        for n in (1, 2, 3)
        for ceiling in ("db_copy", "db_batch", "db_naive")
    },
    "drain_1_vs_kafka_consume": Ratio("drain_1", "kafka_consume"),
    "producer_vs_kafka_produce": Ratio("producer_max", "kafka_produce"),
    "drain_1_steady_vs_peer_jdbc_steady": Ratio(
        "drain_1_steady",
        "peer_jdbc_steady",
        "drain, 1 consumer vs the JDBC-sink peer, first row → last row",
    ),
    "drain_1_vs_peer_jdbc": Ratio(
        "drain_1", "peer_jdbc", "drain, 1 consumer vs the JDBC-sink peer, start → last row"
    ),
}

#: Metrics and ratios a bench may lack when the peer could not run (it says so instead).
OPTIONAL: frozenset[str] = frozenset(
    [name for name, info in METRICS.items() if info.group == "peer"]
    + [
        name
        for name, ratio in RATIOS.items()
        if METRICS[ratio.denominator].group == "peer" or METRICS[ratio.numerator].group == "peer"
    ]
)


@dataclass(frozen=True)
class Target:
    """A goal from the issue. ``metric`` names a metric or a ratio."""

    description: str
    metric: str
    op: Literal[">=", "<="]
    threshold: float
    #: ``median`` for throughput and latency; ``worst`` where one bad run is already a
    #: failure (memory: one OOM kill; rate accuracy: every run must be within bounds).
    basis: Literal["median", "worst"] = "median"
    #: ``False`` for aims beyond the issue: reported, not counted as missed targets.
    required: bool = True
    #: Compare the absolute value (a rate error of -3% misses a +-2% bound).
    absolute: bool = False

    def met(self, value: float) -> bool:
        value = abs(value) if self.absolute else value
        return value >= self.threshold if self.op == ">=" else value <= self.threshold


TARGETS: tuple[Target, ...] = (
    Target("drain with 1 consumer >= 0.25 x DB-COPY", "drain_1_vs_db_copy", ">=", 0.25),
    Target("drain with 1 consumer >= 10 x DB-NAIVE", "drain_1_vs_db_naive", ">=", 10.0),
    Target("aim: drain with 1 consumer >= 0.5 x DB-COPY", "drain_1_vs_db_copy", ">=", 0.5,
           required=False),
    Target("drain with 1 consumer >= 1.0 x the JDBC-sink peer, first row → last row",
           "drain_1_steady_vs_peer_jdbc_steady", ">=", 1.0),
    Target("aim: drain with 1 consumer >= 1.5 x the JDBC-sink peer, first row → last row",
           "drain_1_steady_vs_peer_jdbc_steady", ">=", 1.5, required=False),
    Target("aim: drain with 1 consumer >= 20 x DB-NAIVE", "drain_1_vs_db_naive", ">=", 20.0,
           required=False),
    # Issue 13's floors for a consumer group and for the consumer's memory.
    Target("drain with 3 consumers >= 0.4 x DB-COPY", "drain_3_vs_db_copy", ">=", 0.4),
    Target("aim: drain with 3 consumers >= 0.6 x DB-COPY", "drain_3_vs_db_copy", ">=", 0.6,
           required=False),
    Target("consumer peak RSS while draining alone <= 110 MiB", "rss_consumer_drain_1", "<=",
           110.0, "worst"),
    Target("aim: consumer peak RSS while draining alone <= 80 MiB", "rss_consumer_drain_1",
           "<=", 80.0, "worst", required=False),
    Target("producer >= 20,000 confirmed orders/s", "producer_max", ">=", 20_000.0),
    Target("end-to-end p99 <= 100 ms at 1000/s", "e2e_1000_p99", "<=", 100.0),
    Target("end-to-end p99 <= 65 ms at 1000/s (no regression)", "e2e_1000_p99", "<=", 65.0),
    Target("aim: end-to-end p99 <= 50 ms at 1000/s", "e2e_1000_p99", "<=", 50.0,
           required=False),
    Target("rate accuracy at 10/s within +-2%", "rate_10_error", "<=", 2.0, "worst",
           absolute=True),
    Target("rate accuracy at 1000/s within +-2%", "rate_1000_error", "<=", 2.0, "worst",
           absolute=True),
    *(
        Target(f"peak RSS <= 128 MiB: {METRICS[name].label.removeprefix('RSS ')}", name, "<=",
               RSS_LIMIT_MIB, "worst")
        for name in METRICS
        if name.startswith("rss_")
    ),
)  # fmt: skip
