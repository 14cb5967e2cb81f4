"""``foodpipe consume``: read orders from Kafka into PostgreSQL until SIGTERM/SIGINT.

A thin entrypoint: it installs the signal handlers and hands over to
:class:`foodpipe.consumer.app.ConsumerApp`. The delivery contract is documented in
:mod:`foodpipe.consumer.service`.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from types import FrameType

from foodpipe.commands.argtypes import number
from foodpipe.consumer.app import ConsumerApp
from foodpipe.errors import MembershipLost
from foodpipe.log import scrub
from foodpipe.runtime import tune_for_throughput
from foodpipe.settings import Settings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--wait",
        type=number(above=0),
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
    # Everything imported and configured by now: freeze it (see foodpipe.runtime).
    tune_for_throughput()
    try:
        return app.run()
    except MembershipLost as exc:
        # A normal exit would finalise the wedged Kafka client, and its destructor
        # blocks on the coordinator like close() does: leave at once, after the one
        # line the CLI prints for every fatal error. Writes and dead letters of past
        # batches are committed; the supervisor starts a fresh process.
        sys.stderr.write(f"foodpipe: {scrub(str(exc))}\n")
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(exc.exit_code)
