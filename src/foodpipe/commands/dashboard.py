"""``foodpipe dashboard``: the pipeline and the business, live in a browser.

Serves http://HOST:PORT/ (default 127.0.0.1:8050; ``--host 0.0.0.0`` listens on every
interface, for a container). The page is read-only except its audit button; what each
number means, and where it comes from, is on the page itself and in
:mod:`foodpipe.dashboard`. Kafka or PostgreSQL being down is shown on the page, not
fatal: the dashboard keeps trying every ``--interval`` seconds.

Exit codes: 0 after SIGINT/SIGTERM; 2 bad usage or configuration (or the port is taken).
"""

from __future__ import annotations

import argparse
import ipaddress
import signal
import sys
from collections.abc import Sequence

import uvicorn
from confluent_kafka.admin import AdminClient

from foodpipe.commands.argtypes import host, number, whole
from foodpipe.dashboard.app import create_app
from foodpipe.dashboard.collector import Collector
from foodpipe.db import make_engine
from foodpipe.kafka import admin_config
from foodpipe.log import configure_logging, get_logger
from foodpipe.offsets import KafkaView
from foodpipe.settings import Settings

#: Connections: one for the pipeline reading, one for the business view, one for an
#: audit; more would only queue behind the same three readers.
POOL_SIZE = 3


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--host",
        type=host,
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1: this machine only)",
    )
    parser.add_argument(
        "--port", type=whole(1, 65535), default=8050, help="port to listen on (default 8050)"
    )
    parser.add_argument(
        "--allow-host",
        type=allowed_name,
        action="append",
        default=[],
        metavar="NAME",
        help="a name the page may be opened by (the browser's Host header) besides"
        " 127.0.0.1, localhost and --host; repeatable; '*' allows any (only behind a proxy"
        " that checks names)",
    )
    parser.add_argument(
        "--interval",
        type=number(above=0),
        default=2.0,
        metavar="SECONDS",
        help="how often the pipeline view is read and pushed (default 2)",
    )
    parser.add_argument(
        "--business-interval",
        type=number(above=0),
        default=10.0,
        metavar="SECONDS",
        help="how often the business view is queried (default 10)",
    )
    parser.add_argument(
        "--timeout",
        type=number(above=0),
        default=5.0,
        metavar="SECONDS",
        help="deadline of each request to Kafka (default 5)",
    )


def allowed_name(text: str) -> str:
    """``--allow-host``: a host name, an IP address, or ``*``."""
    return text if text == "*" else host(text)


def allowed_hosts(listen: str, extra: Sequence[str] = ()) -> list[str]:
    """Host headers to answer: the loopback names, ``listen`` and ``extra``.

    Refusing other names stops DNS rebinding: a web page whose name resolves to
    127.0.0.1 cannot read the dashboard through the visitor's browser. That holds for a
    listener on every interface too (``0.0.0.0`` in a container, whose port Compose
    publishes on the host's 127.0.0.1): the address one listens on says nothing about
    the names one is reached by, so those are ``extra`` (``--allow-host``).
    """
    if "*" in extra:
        return ["*"]
    names = {"127.0.0.1", "localhost", "[::1]", *extra}
    try:
        if not ipaddress.ip_address(listen).is_unspecified:
            names.add(listen)
    except ValueError:
        names.add(listen)
    return sorted(names)


def run(args: argparse.Namespace, settings: Settings) -> int:
    configure_logging(settings.log_level, settings.log_format, stream=sys.stderr)
    admin = AdminClient(admin_config(settings))
    engine = make_engine(settings.model_copy(update={"db_pool_size": POOL_SIZE}))
    collector = Collector(settings, KafkaView(admin, args.timeout), engine)
    app = create_app(
        collector,
        interval_s=args.interval,
        business_interval_s=args.business_interval,
        allowed_hosts=allowed_hosts(args.host, args.allow_host),
    )
    get_logger("dashboard").info(
        "dashboard_listening", url=f"http://{args.host}:{args.port}/", topic=settings.kafka_topic
    )
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=args.host,
            port=args.port,
            log_config=None,  # uvicorn's records go through foodpipe's logging setup
            access_log=False,
            timeout_graceful_shutdown=2,  # open event streams would otherwise hold exit
        )
    )
    # uvicorn stops gracefully on SIGTERM, then raises the signal again for the handler
    # that was there before it: make that one a no-op, so a stop is exit 0, not -15.
    signal.signal(signal.SIGTERM, lambda *_: None)
    try:
        server.run()
    except SystemExit:
        # uvicorn exits (with its own code 3) when it cannot listen, after logging why;
        # here that is bad usage (the port is taken or the address is not ours): 2.
        sys.stderr.write(f"foodpipe: cannot listen on {args.host}:{args.port}\n")
        return 2
    finally:
        engine.dispose()
    return 0
