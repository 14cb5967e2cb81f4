"""One bench: ``runs`` repetitions of every ceiling and every pipeline scenario.

Within a run the scenarios go one after another, never side by side (on two cores any
overlap would measure the overlap), each on a fresh table, a fresh topic or group, and
the same prepared data. Every run records how busy the machine was just before it
started; a run that began on a busy machine is flagged as disturbed.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from confluent_kafka.admin import AdminClient
from sqlalchemy.engine import URL

from foodpipe.bench import ceilings, peer, pipeline
from foodpipe.bench.ceilings import KafkaTools
from foodpipe.bench.conditions import CpuSample, busy_pct
from foodpipe.bench.data import Dataset, make_dataset
from foodpipe.bench.peer import PeerTools, PeerUnavailable
from foodpipe.bench.pipeline import KafkaProbe
from foodpipe.bench.scratch import ScratchDatabases, ScratchTopics, grant
from foodpipe.kafka import admin_config, producer_config
from foodpipe.settings import Settings

#: Fixed-rate scenarios: the seed's default rate and a hundred times it.
RATES: tuple[int, ...] = (10, 1000)
#: Consumer counts of the drain scenario (the orders topic has 3 partitions).
CONSUMERS: tuple[int, ...] = (1, 2, 3)
#: A run that starts with the machine busier than this was disturbed by someone else.
DISTURBED_BUSY_PCT = 25.0


@dataclass(frozen=True)
class BenchConfig:
    orders: int = 200_000
    runs: int = 3
    naive_rows: int = 10_000
    page_size: int = 500
    #: Records for ProducerPerformance; 0 means as many as ``orders``.
    kafka_records: int = 0
    window_s: float = 30.0
    warmup_s: float = 3.0
    seed: int = 42
    partitions: int = 3

    def describe(self, mean_value_bytes: float) -> dict[str, Any]:
        return {
            "orders": self.orders,
            "runs": self.runs,
            "naive_rows": min(self.naive_rows, self.orders),
            "db_batch_page_rows": self.page_size,
            "kafka_produce_records": self.kafka_records or self.orders,
            "rate_window_s": self.window_s,
            "rate_warmup_s": self.warmup_s,
            "rates": list(RATES),
            "consumers": list(CONSUMERS),
            "seed": self.seed,
            "partitions": self.partitions,
            "mean_order_bytes": round(mean_value_bytes, 1),
        }


@dataclass
class RunRecord:
    index: int
    started_at: str
    cpu_busy_before_pct: float
    loadavg_1m: float
    values: dict[str, float] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    cpu_busy_during_pct: float = 0.0

    @property
    def disturbed(self) -> bool:
        return self.cpu_busy_before_pct > DISTURBED_BUSY_PCT

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "started_at": self.started_at,
            "seconds": round(self.seconds, 1),
            "cpu_busy_before_pct": round(self.cpu_busy_before_pct, 1),
            "cpu_busy_during_pct": round(self.cpu_busy_during_pct, 1),
            "loadavg_1m": round(self.loadavg_1m, 2),
            "disturbed": self.disturbed,
            "values": {k: float(f"{v:.6g}") for k, v in self.values.items()},
            "details": self.details,
        }


Log = Callable[..., None]


class Bench:
    """Runs the scenarios; build it with resolved settings and call :meth:`run`."""

    def __init__(
        self,
        settings: Settings,
        config: BenchConfig,
        tools: KafkaTools,
        dbs: ScratchDatabases,
        work_dir: Path,
        log: Any,
        peer_tools: PeerTools | None = None,
        peer_note: str = "not asked for (--no-peer)",
    ) -> None:
        self.settings = settings
        self.config = config
        self.tools = tools
        self.dbs = dbs
        self.work_dir = work_dir
        self.log = log
        self.token = dbs.prefix.removeprefix("fpbench_")
        self.admin = AdminClient(admin_config(settings))
        self.probe = KafkaProbe(self.admin, config.partitions)
        self.data: Dataset | None = None
        #: The JDBC-sink peer's tools, or ``None`` when it does not run (``peer_note`` says
        #: why, in one line: it was not asked for, or it could not be had).
        self.peer_tools = peer_tools
        self.peer_note = peer_note if peer_tools is None else "measured"

    def prepare(self) -> Dataset:
        started = time.monotonic()
        self.data = make_dataset(self.config.orders, self.config.seed)
        payload = self.work_dir / "payload.txt"
        payload.write_bytes(b"\n".join(self.data.sample_values) + b"\n")
        self.log.info(
            "data prepared",
            orders=self.config.orders,
            mean_order_bytes=round(self.data.mean_value_bytes, 1),
            seconds=round(time.monotonic() - started, 1),
        )
        return self.data

    def run(self) -> list[RunRecord]:
        if self.data is None:
            self.prepare()
        return [self.run_once(index) for index in range(1, self.config.runs + 1)]

    def run_once(self, index: int) -> RunRecord:
        record = RunRecord(
            index=index,
            started_at=datetime.now(UTC).isoformat(timespec="seconds"),
            cpu_busy_before_pct=busy_pct(1.0),
            loadavg_1m=os.getloadavg()[0],
        )
        if record.disturbed:
            self.log.warning(
                "machine busy before the run; its figures may be disturbed",
                run=index,
                cpu_busy_pct=round(record.cpu_busy_before_pct, 1),
            )
        started, cpu_before = time.monotonic(), CpuSample.now()
        run_dir = self.work_dir / f"run{index}"
        run_dir.mkdir(parents=True, exist_ok=True)
        topics = ScratchTopics(self.admin, f"fpbench-{self.token}-r{index}", self.config.partitions)
        try:
            self._database_ceilings(record)
            self._kafka_produce(record, topics, run_dir)
            orders_topic, dlq_topic = self._preload(record, topics, run_dir)
            self._kafka_consume(record, orders_topic)
            for consumers in CONSUMERS:
                self._drain(record, orders_topic, dlq_topic, consumers, run_dir)
            if self.peer_tools is not None:
                self._peer(record, topics, orders_topic, run_dir)
            for rate in RATES:
                self._fixed_rate(record, topics, rate, run_dir)
        finally:
            topics.close()
        record.seconds = time.monotonic() - started
        record.cpu_busy_during_pct = CpuSample.now().busy_pct_since(cpu_before)
        self.log.info(
            "run finished",
            run=index,
            seconds=round(record.seconds, 1),
            cpu_busy_pct=round(record.cpu_busy_during_pct, 1),
        )
        return record

    # ------------------------------------------------------------------- scenarios

    def _measured(self, record: RunRecord, name: str, value: float, **extra: Any) -> None:
        record.values[name] = value
        self.log.info("measured", run=record.index, metric=name, value=round(value, 2), **extra)

    def _database_ceilings(self, record: RunRecord) -> None:
        assert self.data is not None
        data, config = self.data, self.config
        scenarios: list[tuple[str, Callable[[URL], float]]] = [
            ("db_copy", lambda url: ceilings.db_copy(url, data)),
            ("db_batch", lambda url: ceilings.db_batch(url, data, config.page_size)),
            ("db_naive", lambda url: ceilings.db_naive(url, data, config.naive_rows)),
        ]
        for name, measure in scenarios:
            url = self.dbs.create(f"r{record.index}_{name}")
            try:
                self._measured(record, name, measure(url))
            finally:
                self.dbs.drop(url)

    def _kafka_produce(self, record: RunRecord, topics: ScratchTopics, run_dir: Path) -> None:
        topic = topics.create("perf")
        result = ceilings.kafka_produce(
            self.tools,
            self.settings.kafka_bootstrap_servers,
            topic,
            self.config.kafka_records or self.config.orders,
            self.work_dir / "payload.txt",
            producer_config(self.settings),
            run_dir,
        )
        record.details["kafka_produce"] = {
            "records": result.records,
            "mb_per_s": result.mb_per_s,
            "avg_latency_ms": result.avg_latency_ms,
        }
        self._measured(record, "kafka_produce", result.rate)

    def _preload(self, record: RunRecord, topics: ScratchTopics, run_dir: Path) -> tuple[str, str]:
        orders_topic = topics.create("orders")
        dlq_topic = topics.create("orders-dlq")
        result = pipeline.preload(
            self.settings,
            self.probe,
            orders_topic,
            self.config.orders,
            self.config.seed,
            run_dir,
            run_dir / "preload-producer.log",
        )
        record.details["preload"] = {
            "delivered": result.delivered,
            "wall_s": round(result.wall_s, 2),
        }
        self._measured(record, "producer_max", result.rate)
        self._measured(record, "rss_producer_max_rate", result.rss_mib)
        return orders_topic, dlq_topic

    def _kafka_consume(self, record: RunRecord, topic: str) -> None:
        self._measured(
            record,
            "kafka_consume",
            ceilings.kafka_consume(self.settings, topic, self.config.orders),
        )

    def _drain(
        self, record: RunRecord, topic: str, dlq_topic: str, consumers: int, run_dir: Path
    ) -> None:
        url = self.dbs.create(f"r{record.index}_drain{consumers}")
        try:
            result = pipeline.drain(
                self.settings,
                self.probe,
                topic=topic,
                dlq_topic=dlq_topic,
                group=f"fpbench-{self.token}-r{record.index}-drain{consumers}",
                consumers=consumers,
                expected=self.config.orders,
                app_url=url,
                admin_url=self.dbs.admin_for(url),
                log_dir=run_dir,
            )
        finally:
            self.dbs.drop(url)
        record.details[f"drain_{consumers}"] = {
            "rows": result.rows,
            "elapsed_s": round(result.elapsed_s, 3),
            "steady_s": round(result.steady_s, 3),
        }
        self._measured(record, f"drain_{consumers}", result.rate)
        self._measured(record, f"drain_{consumers}_steady", result.steady_rate)
        self._measured(record, f"rss_consumer_drain_{consumers}", result.rss_mib)

    def _peer(
        self, record: RunRecord, topics: ScratchTopics, orders_topic: str, run_dir: Path
    ) -> None:
        """The JDBC-sink peer drains the same orders; if it cannot, one line and go on."""
        assert self.peer_tools is not None
        url = None
        try:
            topic = topics.create("peer")
            copied = peer.republish(
                self.settings, self.probe, orders_topic, topic, self.config.orders
            )
            url = self.dbs.create(f"r{record.index}_peer")
            # insert.mode=upsert is INSERT ... ON CONFLICT DO UPDATE: it needs UPDATE too.
            grant(self.dbs.admin_for(url), "UPDATE", self.dbs.app_url.username)
            result = peer.drain(
                self.settings,
                self.peer_tools,
                topic=topic,
                name=f"fpbench-{self.token}-r{record.index}-peer",
                expected=self.config.orders,
                last_ids=copied.last_ids,
                sink_url=url,
                admin_url=self.dbs.admin_for(url),
                work_dir=run_dir / "peer",
                log_dir=run_dir,
            )
        except PeerUnavailable as exc:
            self.peer_tools = None
            self.peer_note = f"could not be had in run {record.index}: {exc}"
            self.log.warning(f"JDBC-sink peer not measured: {exc}; the bench goes on")
            return
        finally:
            if url is not None:
                self.dbs.drop(url)
        record.details["peer_jdbc"] = {
            "rows": result.rows,
            "elapsed_s": round(result.elapsed_s, 3),
            "steady_s": round(result.steady_s, 3),
            "copy_s": round(copied.seconds, 2),
        }
        self._measured(record, "peer_jdbc", result.rate)
        self._measured(record, "peer_jdbc_steady", result.steady_rate)
        self._measured(record, "peer_jdbc_rss", result.rss_mib)

    def _fixed_rate(
        self, record: RunRecord, topics: ScratchTopics, rate: int, run_dir: Path
    ) -> None:
        topic = topics.create(f"rate{rate}")
        dlq_topic = topics.create(f"rate{rate}-dlq")
        url = self.dbs.create(f"r{record.index}_rate{rate}")
        try:
            result = pipeline.fixed_rate(
                self.settings,
                self.probe,
                rate=float(rate),
                window_s=self.config.window_s,
                warmup_s=self.config.warmup_s,
                seed=self.config.seed,
                topic=topic,
                dlq_topic=dlq_topic,
                group=f"fpbench-{self.token}-r{record.index}-rate{rate}",
                app_url=url,
                admin_url=self.dbs.admin_for(url),
                work_dir=run_dir,
                log_dir=run_dir,
            )
        finally:
            self.dbs.drop(url)
        record.details[f"rate_{rate}"] = {
            "window_s": round(result.window_s, 3),
            "orders_in_window": result.orders_in_window,
        }
        self._measured(record, f"rate_{rate}_achieved", result.achieved)
        self._measured(record, f"rate_{rate}_error", result.error_pct)
        self._measured(record, f"e2e_{rate}_p50", result.p50_ms)
        if rate == 1000:
            self._measured(record, f"e2e_{rate}_p95", result.p95_ms)
        self._measured(record, f"e2e_{rate}_p99", result.p99_ms)
        self._measured(record, f"rss_producer_{rate}", result.rss_producer_mib)
        self._measured(record, f"rss_consumer_{rate}", result.rss_consumer_mib)
