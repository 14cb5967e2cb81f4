"""Composition root of the consumer: build the real clients, check them, run the loop.

Clients are built here at start-up, never at import time. Before consuming anything the
dependencies are checked with a bounded wait, so a missing broker, topic or database
gives one clear line and exit code 3 instead of a consumer that sits in its group doing
nothing useful.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient
from prometheus_client import CollectorRegistry

from foodpipe.consumer.dlq import DeadLetterQueue
from foodpipe.consumer.faults import after_db_commit_hook
from foodpipe.consumer.service import ConsumerService, LoopConfig
from foodpipe.consumer.stats import ConsumerStats
from foodpipe.db import OrderWriter, consumer_session, make_engine, wait_for_database
from foodpipe.errors import FatalError
from foodpipe.kafka import (
    admin_config,
    apply_group_timeouts,
    consumer_config,
    producer_config,
    wait_for_broker,
)
from foodpipe.log import get_logger
from foodpipe.membership import claim_instance_id
from foodpipe.observability import ConsumerMetrics, ConsumerReadiness, serve
from foodpipe.offsets import KafkaView
from foodpipe.settings import Settings


class TopicMissing(FatalError):
    """A topic the consumer needs does not exist; ``str()`` is one line."""


def wait_for_topics(admin: AdminClient, topics: list[str], timeout_s: float) -> None:
    """Wait until every topic exists (created by ``foodpipe topics`` or an init job)."""
    deadline = time.monotonic() + timeout_s
    while True:
        existing = admin.list_topics(timeout=10).topics
        missing = [t for t in topics if t not in existing]
        if not missing:
            return
        if time.monotonic() >= deadline:
            raise TopicMissing(
                f"topic {', '.join(missing)} does not exist after {timeout_s:g}s; create the"
                " topics with `foodpipe topics` (or check KAFKA_TOPIC / KAFKA_DLQ_TOPIC)"
            )
        time.sleep(0.5)  # start-up poll interval, bounded by the deadline


class ConsumerApp:
    """The consumer service wired to real Kafka and PostgreSQL clients."""

    def __init__(self, settings: Settings, wait_s: float = 30.0) -> None:
        self.settings = settings
        self.wait_s = wait_s
        self._service: ConsumerService | None = None
        self._stop_requested = False
        self._log = get_logger("consumer", topic=settings.kafka_topic)
        # Metrics and readiness, served on METRICS_PORT (0, the default, turns them off).
        self.stats = ConsumerStats()
        self.registry = CollectorRegistry()
        self.metrics = ConsumerMetrics(self.registry, self.stats, lag_reader=self._read_lag)
        self.readiness = ConsumerReadiness(self.metrics)
        self._view: KafkaView | None = None

    def _on_commit(self, error: Any, partitions: Any) -> None:
        # The consumer is built before the service, so librdkafka's callback is forwarded.
        if self._service is not None:
            self._service.on_commit(error, partitions)

    def request_stop(self) -> None:
        """Stop after the current batch (callable before the loop has started, too)."""
        self._stop_requested = True
        if self._service is not None:
            self._service.request_stop()

    @property
    def service(self) -> ConsumerService | None:
        return self._service

    def _read_lag(self, owned: list[tuple[str, int]]) -> dict[tuple[str, int], int]:
        """Lag of the owned partitions, from the broker, at scrape time (HTTP thread)."""
        if self._view is None:
            return {}
        return self._view.lag(self.settings.kafka_consumer_group, owned)

    def run(self, on_ready: Callable[[ConsumerService], None] | None = None) -> int:
        # /healthz answers from the start; /readyz once connected with partitions.
        with serve(self.settings, self.registry, self.readiness):
            return self._run(on_ready)

    def _run(self, on_ready: Callable[[ConsumerService], None] | None) -> int:
        settings = self.settings
        self._log.info(
            "starting consumer",
            group=settings.kafka_consumer_group,
            dlq_topic=settings.kafka_dlq_topic,
            bootstrap=settings.kafka_bootstrap_servers,
            database=settings.redacted_database_url(),
            batch_size=settings.batch_size,
            batch_timeout_ms=settings.batch_timeout_ms,
            batch_linger_ms=settings.batch_linger_ms,
        )
        admin = AdminClient(admin_config(settings))
        wait_for_broker(admin, settings, self.wait_s)
        self._view = KafkaView(admin, timeout_s=2.0)
        wait_for_topics(admin, [settings.kafka_topic, settings.kafka_dlq_topic], self.wait_s)
        # Before joining: in the consumer protocol the group's session timeout is a
        # broker-side setting, and a member joining first would get the broker's default.
        apply_group_timeouts(admin, settings, self.wait_s)
        instance = claim_instance_id(settings)
        try:
            return self._run_member(instance.value, on_ready)
        finally:
            instance.release()

    def _run_member(
        self, instance_id: str | None, on_ready: Callable[[ConsumerService], None] | None
    ) -> int:
        settings = self.settings
        self._log.info(
            "joining the group",
            group=settings.kafka_consumer_group,
            group_protocol=settings.kafka_group_protocol,
            group_instance_id=instance_id or "(dynamic membership)",
            session_timeout_ms=settings.kafka_session_timeout_ms,
        )
        static = {"group.instance.id": instance_id} if instance_id else {}
        engine = make_engine(
            settings, session=consumer_session(settings.kafka_max_poll_interval_ms)
        )
        try:
            wait_for_database(engine, self.wait_s)
            self.readiness.connected()
            producer = Producer(producer_config(settings, **{"client.id": "foodpipe-dlq"}))
            consumer = Consumer(
                consumer_config(
                    settings,
                    **{"client.id": "foodpipe-consumer", "on_commit": self._on_commit},
                    **static,
                )
            )
            dlq = DeadLetterQueue(producer, settings.kafka_dlq_topic, settings.kafka_consumer_group)
            self._service = ConsumerService(
                consumer,
                OrderWriter(engine),
                dlq,
                settings.kafka_topic,
                LoopConfig(
                    batch_size=settings.batch_size,
                    batch_timeout_s=settings.batch_timeout_ms / 1000,
                    batch_linger_s=settings.batch_linger_ms / 1000,
                    # Rejoining normally takes a session timeout or two.
                    rejoin_timeout_s=max(60.0, 3 * settings.kafka_session_timeout_ms / 1000),
                ),
                stats=self.stats,
                after_db_commit=after_db_commit_hook(),
                observer=self.metrics,
            )
            if self._stop_requested:
                self._service.request_stop()
            if on_ready is not None:
                on_ready(self._service)
            try:
                self._service.run()
            finally:
                producer.flush(10)
        finally:
            engine.dispose()
        self._log.info("consumer stopped")
        return 0
