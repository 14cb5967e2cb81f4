"""``foodpipe consume``: read orders from Kafka into PostgreSQL until SIGTERM/SIGINT.

A thin entrypoint: it installs the signal handlers and hands over to
:class:`foodpipe.consumer.app.ConsumerApp`. The delivery contract is documented in
:mod:`foodpipe.consumer.service`.
"""

from __future__ import annotations

import argparse
import signal
from types import FrameType

from foodpipe.consumer.app import ConsumerApp
from foodpipe.settings import Settings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--wait",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="how long to wait at start for the broker, the topics and PostgreSQL (default 30)",
    )


def run(args: argparse.Namespace, settings: Settings) -> int:
    app = ConsumerApp(settings, wait_s=args.wait)

    def stop(_signum: int, _frame: FrameType | None) -> None:
        # Only sets a flag: the loop finishes its batch, commits and closes cleanly.
        app.request_stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    return app.run()
