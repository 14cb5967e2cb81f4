"""``foodpipe topics``: create the orders topic and its dead-letter topic (idempotent)."""

from __future__ import annotations

import argparse

from confluent_kafka.admin import AdminClient

from foodpipe.commands.argtypes import number, whole
from foodpipe.kafka import admin_config, ensure_topics, topic_specs, wait_for_broker
from foodpipe.log import get_logger
from foodpipe.settings import Settings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--wait",
        type=number(above=0),
        default=30.0,
        metavar="SECONDS",
        help="how long to wait for a broker to answer (default 30)",
    )
    parser.add_argument(
        "--min-brokers",
        type=whole(1, 1000),
        default=1,
        metavar="N",
        help="wait until N brokers are registered (for replicated topics)",
    )


def run(args: argparse.Namespace, settings: Settings) -> int:
    log = get_logger("topics")
    admin = AdminClient(admin_config(settings))
    wait_for_broker(admin, settings, args.wait, args.min_brokers)
    specs = topic_specs(settings)
    outcome = ensure_topics(admin, specs)
    ok = True
    for spec in specs:
        state = outcome[spec.name]
        ok = ok and state in ("created", "exists")
        log.info(
            "topic",
            topic=spec.name,
            state=state,
            partitions=spec.partitions,
            replication_factor=spec.replication_factor,
            **dict(spec.config),
        )
    return 0 if ok else 1
