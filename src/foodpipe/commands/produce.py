"""``foodpipe produce``: publish mock food orders to Kafka at a steady rate.

A thin entrypoint: it checks the broker, builds the parts (id allocator, generator,
rate limiter, Kafka producer, reporters) and hands them to
:class:`foodpipe.producer.service.OrderProducer`, whose docstring is the delivery
contract. Exit 0 when every order it sent was confirmed, 1 when any failed or was
still in flight at shutdown, 3 when the broker is unreachable at start.
"""

from __future__ import annotations

import argparse
import sys

from confluent_kafka import KafkaError, KafkaException, Producer
from confluent_kafka.admin import AdminClient
from prometheus_client import CollectorRegistry

from foodpipe.commands.argtypes import number, whole
from foodpipe.errors import FatalError
from foodpipe.kafka import (
    admin_config,
    ensure_topics,
    producer_config,
    topic_specs,
    wait_for_broker,
)
from foodpipe.log import get_logger
from foodpipe.observability import ProducerMetrics, ProducerReadiness, serve
from foodpipe.offsets import KafkaView
from foodpipe.producer.generator import MENU, OrderGenerator
from foodpipe.producer.ids import OrderIdAllocator
from foodpipe.producer.ratelimit import RateLimiter
from foodpipe.producer.report import LogReporter, ProgressReporter
from foodpipe.producer.service import OrderProducer, Reporter, stop_on_signals
from foodpipe.producer.stats import ProducerStats
from foodpipe.settings import Settings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--rate",
        type=number(low=0),
        default=None,
        metavar="R",
        help="orders per second (default: ORDER_RATE, 10); 0 means as fast as possible",
    )
    parser.add_argument(
        "--count",
        type=whole(1, 10**12),
        default=None,
        metavar="N",
        help="stop once N orders have been sent and confirmed (default: run until SIGTERM)",
    )
    parser.add_argument(
        "--seed",
        type=whole(0, 2**63 - 1),
        default=None,
        metavar="S",
        help="seed of the order contents: the same seed gives the same customers, items,"
        " quantities and totals in the same sequence (ids and timestamps are per run)",
    )
    parser.add_argument(
        "--max-items",
        type=whole(1, len(MENU)),
        default=5,
        metavar="N",
        help="most distinct dishes per order (default 5)",
    )
    parser.add_argument(
        "--max-quantity",
        type=whole(1, 1000),
        default=3,
        metavar="Q",
        help="largest quantity of one dish (default 3)",
    )
    parser.add_argument(
        "--wait",
        type=number(low=0),
        default=30.0,
        metavar="SECONDS",
        help="how long to wait for a broker at start (default 30)",
    )
    parser.add_argument(
        "--flush-timeout",
        type=number(low=0),
        default=8.0,
        metavar="SECONDS",
        # Docker sends SIGKILL 10 s after SIGTERM by default; 8 s leaves time to log
        # the summary.
        help="on SIGTERM/SIGINT, how long to wait for outstanding confirmations (default 8)",
    )
    parser.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bar on stderr (default: with --count on a terminal)",
    )


def run(args: argparse.Namespace, settings: Settings) -> int:
    # /healthz answers from the start, /readyz once the broker has answered
    # (METRICS_PORT=0, the default, turns the endpoints off).
    stats = ProducerStats()
    registry = CollectorRegistry()
    group_lag = GroupLag(settings.kafka_topic, settings.kafka_consumer_group)
    ProducerMetrics(registry, stats, settings.kafka_consumer_group, group_lag)
    readiness = ProducerReadiness(stats)
    with serve(settings, registry, readiness):
        return _run(args, settings, stats, readiness, group_lag)


class GroupLag:
    """The consumer group's lag on the orders topic, read at scrape time (HTTP thread).

    Exported by the producer as ``foodpipe_group_lag`` so that lag stays visible while
    no consumer is alive to report its own. Reads nothing until the broker answered.
    """

    def __init__(self, topic: str, group: str) -> None:
        self.topic = topic
        self.group = group
        self.view: KafkaView | None = None

    def __call__(self) -> dict[tuple[str, int], int]:
        if self.view is None:
            return {}
        partitions = self.view.partitions(self.topic)
        return self.view.lag(self.group, [(self.topic, p) for p in partitions])


def _run(
    args: argparse.Namespace,
    settings: Settings,
    stats: ProducerStats,
    readiness: ProducerReadiness,
    group_lag: GroupLag,
) -> int:
    admin = AdminClient(admin_config(settings))
    wait_for_broker(admin, settings, args.wait)
    _ensure_topic(admin, settings)
    readiness.connected()
    group_lag.view = KafkaView(admin, timeout_s=2.0)

    ids = OrderIdAllocator(settings.producer_state_dir)
    generator = OrderGenerator(args.seed, max_items=args.max_items, max_quantity=args.max_quantity)
    rate = args.rate if args.rate is not None else settings.order_rate
    show_progress = args.progress
    if show_progress is None:
        show_progress = args.count is not None and sys.stderr.isatty()
    reporters: list[Reporter] = (
        [ProgressReporter(args.count)]
        if show_progress and args.count
        else [LogReporter(logger=get_logger("producer", topic=settings.kafka_topic))]
    )

    service: OrderProducer | None = None

    def on_error(err: KafkaError) -> None:
        if err.code() == KafkaError._ALL_BROKERS_DOWN:
            readiness.brokers_down(err.str())
        if service is not None:
            service.on_client_error(err)

    producer = Producer(producer_config(settings, error_cb=on_error))
    service = OrderProducer(
        producer,
        settings.kafka_topic,
        generator,
        ids,
        RateLimiter(rate),
        count=args.count,
        reporters=reporters,
        flush_timeout_s=args.flush_timeout,
        stats=stats,
    )
    with stop_on_signals(service):
        result = service.run()
    return result.exit_code


def _ensure_topic(admin: AdminClient, settings: Settings) -> None:
    """Create the orders topic (as ``foodpipe topics`` would) when it is missing."""
    specs = [spec for spec in topic_specs(settings) if spec.name == settings.kafka_topic]
    try:
        outcome = ensure_topics(admin, specs)
    except KafkaException as exc:
        raise FatalError(
            f"topic {settings.kafka_topic} is missing and could not be created "
            f"({exc.args[0].str() if exc.args else exc}); run `foodpipe topics` with "
            "rights to create it"
        ) from None
    if outcome[settings.kafka_topic] == "created":
        get_logger("produce").info("topic created", topic=settings.kafka_topic)
