"""``foodpipe bench``: measure the pipeline against the machine's ceilings, in one run.

It uses the Kafka and PostgreSQL named by the settings, or starts the local stack
(``scripts/local_stack.sh start``) when no broker answers. It needs the owner URL
(``DATABASE_ADMIN_URL``) to create its scratch databases; with the local stack running
it takes it from ``scripts/local_stack.sh env --admin``. What it measures and why is in
:mod:`foodpipe.bench`; the results go to ``<out>/<date>.json``, ``.md`` and ``.png``.

Exit 0 when the bench ran (with ``--check-targets``: and every required target was
met), 1 when a scenario failed (a crashed process, lost rows) or a target was missed,
2 on bad usage, 3 when Kafka or PostgreSQL cannot be reached.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg2
from confluent_kafka.admin import AdminClient

from foodpipe.bench.ceilings import KafkaTools
from foodpipe.bench.conditions import collect
from foodpipe.bench.peer import PeerTools, PeerUnavailable, peer_conditions
from foodpipe.bench.pipeline import BenchError
from foodpipe.bench.report import (
    ChartUnavailable,
    build_document,
    require_matplotlib,
    write_results,
)
from foodpipe.bench.runner import Bench, BenchConfig
from foodpipe.bench.scratch import scratch_databases
from foodpipe.commands.argtypes import number, whole
from foodpipe.errors import FatalError
from foodpipe.kafka import admin_config, wait_for_broker
from foodpipe.log import configure_logging, get_logger
from foodpipe.settings import ConfigError, Settings, load_settings

#: A source checkout: the local stack's script and its Kafka jar cache live here.
REPO = Path(__file__).resolve().parents[3]
STACK_SCRIPT = REPO / "scripts" / "local_stack.sh"


class StackUnavailable(FatalError):
    """Kafka or PostgreSQL cannot be used; ``str()`` is one line."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = BenchConfig()
    parser.add_argument(
        "--orders",
        type=whole(low=100),
        default=defaults.orders,
        metavar="N",
        help=f"orders to pre-load and drain; rows per DB ceiling (default {defaults.orders:,})",
    )
    parser.add_argument(
        "--runs",
        type=whole(low=1),
        default=defaults.runs,
        metavar="R",
        help=f"repetitions of every measurement (default {defaults.runs})",
    )
    parser.add_argument(
        "--naive-rows",
        type=whole(low=1),
        default=defaults.naive_rows,
        metavar="N",
        help=f"rows of the one-commit-per-row ceiling (default {defaults.naive_rows:,})",
    )
    parser.add_argument(
        "--page-size",
        type=whole(low=1),
        default=defaults.page_size,
        metavar="N",
        help=f"rows per DB-BATCH statement (default {defaults.page_size})",
    )
    parser.add_argument(
        "--kafka-records",
        type=whole(low=1),
        default=None,
        metavar="N",
        help="records for Kafka's ProducerPerformance (default: --orders)",
    )
    parser.add_argument(
        "--window",
        type=number(above=0, below=3600),
        default=defaults.window_s,
        metavar="SECONDS",
        help=f"measurement window of the fixed-rate runs (default {defaults.window_s:g})",
    )
    parser.add_argument(
        "--warmup",
        type=number(above=0, below=3600),
        default=defaults.warmup_s,
        metavar="SECONDS",
        help=f"warm-up before each window (default {defaults.warmup_s:g})",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=defaults.seed,
        metavar="S",
        help=f"seed of the order contents (default {defaults.seed})",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("bench/results"),
        metavar="DIR",
        help="where <date>.json, .md and .png go (default bench/results)",
    )
    parser.add_argument(
        "--chart",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="draw the PNG chart (needs matplotlib; default on)",
    )
    parser.add_argument(
        "--peer",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also time the JDBC-sink peer (Kafka Connect + Debezium JDBC sink) on the same"
        " orders; its jars are resolved through Maven on first use. If it cannot run, the"
        " bench says so in one line and goes on (default on)",
    )
    parser.add_argument(
        "--check-targets", action="store_true", help="exit 1 when a required target is missed"
    )
    parser.add_argument(
        "--keep-logs", action="store_true", help="keep the scratch folder with every subprocess log"
    )


def run(args: argparse.Namespace, settings: Settings) -> int:
    # The table owns stdout; progress lines go to stderr.
    configure_logging(settings.log_level, settings.log_format, stream=sys.stderr)
    log = get_logger("bench")
    if args.chart:
        try:
            require_matplotlib()
        except ChartUnavailable as exc:
            raise ConfigError(str(exc)) from None
    settings = ensure_stack(settings, args.env_file, log)
    tools = find_kafka_tools()
    peer_tools, peer_note = find_peer(tools, log) if args.peer else (None, "skipped (--no-peer)")
    config = BenchConfig(
        orders=args.orders,
        runs=args.runs,
        naive_rows=args.naive_rows,
        page_size=args.page_size,
        kafka_records=args.kafka_records or 0,
        window_s=args.window,
        warmup_s=args.warmup,
        seed=args.seed,
        partitions=settings.kafka_topic_partitions,
    )
    if config.partitions < 3:
        raise ConfigError("KAFKA_TOPIC_PARTITIONS must be at least 3 for the 3-consumer drain")
    admin_url = settings.admin_sqlalchemy_url()
    assert admin_url is not None  # ensure_stack guarantees it
    app_url = settings.sqlalchemy_url()
    started_at = datetime.now(UTC)
    work_dir = Path(tempfile.mkdtemp(prefix="foodpipe-bench-"))
    log.info("bench started", orders=config.orders, runs=config.runs, scratch=str(work_dir))
    try:
        with scratch_databases(admin_url, app_url) as dbs:
            bench = Bench(settings, config, tools, dbs, work_dir, log, peer_tools, peer_note)
            data = bench.prepare()
            described = {**config.describe(data.mean_value_bytes), "scratch_prefix": dbs.prefix}
            conditions = collect(settings, tools, admin_url, described)
            runs = bench.run()
            conditions["peer"] = peer_conditions(peer_tools, bench.peer_note)
    except BenchError as exc:
        log.error("bench failed", error=str(exc), logs=str(work_dir))
        args.keep_logs = True
        raise FatalError(f"bench failed: {exc} (subprocess logs kept in {work_dir})") from None
    except psycopg2.OperationalError as exc:
        first = str(exc).strip().splitlines()[0]
        raise StackUnavailable(f"PostgreSQL refused the bench: {first}") from None
    finally:
        if not args.keep_logs:
            shutil.rmtree(work_dir, ignore_errors=True)
    finished_at = datetime.now(UTC)
    document = build_document(
        date=started_at.strftime("%Y-%m-%d"),
        started_at=started_at.isoformat(timespec="seconds"),
        finished_at=finished_at.isoformat(timespec="seconds"),
        command=" ".join(["foodpipe", "bench", *map(shlex.quote, sys.argv[2:])])
        if sys.argv[1:2] == ["bench"]
        else "foodpipe bench",
        conditions=conditions,
        runs=runs,
    )
    paths = write_results(document, args.out, chart=args.chart)
    log.info("bench finished", **{kind: str(path) for kind, path in paths.items()})
    sys.stdout.write(paths["markdown"].read_text(encoding="utf-8"))
    sys.stdout.flush()
    missed = [t for t in document["targets"] if t["required"] and t["met"] is False]
    return 1 if args.check_targets and missed else 0


# ------------------------------------------------------------------------------ stack


def _broker_answers(settings: Settings, timeout_s: float) -> bool:
    try:
        wait_for_broker(AdminClient(admin_config(settings)), settings, timeout_s)
    except Exception:  # BrokerUnreachable or a client error: either way, no broker
        return False
    return True


def _stack_env(*command: str) -> dict[str, str]:
    """``scripts/local_stack.sh COMMAND``'s ``KEY=VALUE`` lines."""
    if not STACK_SCRIPT.is_file():
        raise StackUnavailable(
            f"no broker answers and {STACK_SCRIPT} is missing (not a source checkout);"
            " start Kafka and PostgreSQL and set KAFKA_BOOTSTRAP_SERVERS / DATABASE_URL"
        )
    result = subprocess.run(
        [str(STACK_SCRIPT), *command], capture_output=True, text=True, timeout=900, check=False
    )
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise StackUnavailable(f"scripts/local_stack.sh {' '.join(command)} failed: {last}")
    return dict(
        line.split("=", 1) for line in result.stdout.splitlines() if re.match(r"^[A-Z_]+=", line)
    )


def ensure_stack(settings: Settings, env_file: str, log: Any) -> Settings:
    """The settings of a reachable stack with an owner URL; starts the local stack if needed."""
    overrides: dict[str, str] = {}
    if not _broker_answers(settings, 5.0):
        log.info("no broker answers; starting the local stack")
        started = time.monotonic()
        _stack_env("start")  # prints no password: the URLs come from env --admin
        stack = _stack_env("env", "--admin")
        log.info("local stack up", seconds=round(time.monotonic() - started, 1))
        overrides = {
            "kafka_bootstrap_servers": stack["KAFKA_BOOTSTRAP_SERVERS"],
            "database_url": stack["DATABASE_URL"],
            "database_admin_url": stack["DATABASE_ADMIN_URL"],
        }
    elif settings.database_admin_url is None and STACK_SCRIPT.is_file():
        # The local stack knows its own owner URL; use it when the broker is the stack's.
        stack = _stack_env("env", "--admin")
        if stack.get("KAFKA_BOOTSTRAP_SERVERS") == settings.kafka_bootstrap_servers:
            overrides["database_admin_url"] = stack.get("DATABASE_ADMIN_URL", "")
            if settings.database_url is None and "DATABASE_URL" in stack:
                overrides["database_url"] = stack["DATABASE_URL"]
    if overrides:
        settings = load_settings(_env_file=env_file, **overrides)
    if settings.database_admin_url is None:
        raise ConfigError(
            "DATABASE_ADMIN_URL is not set: the bench creates scratch databases as the owner;"
            " set it to the owner's URL (scripts/local_stack.sh env --admin prints it)"
        )
    if not _broker_answers(settings, 30.0):
        raise StackUnavailable(
            f"cannot reach Kafka at {settings.kafka_bootstrap_servers}; check"
            " KAFKA_BOOTSTRAP_SERVERS or run scripts/local_stack.sh start"
        )
    return settings


def find_kafka_tools() -> KafkaTools:
    """Kafka's jars from the local stack's cache (``FOODPIPE_CACHE_DIR`` moves it)."""
    cache = Path(os.environ.get("FOODPIPE_CACHE_DIR", REPO / ".stack" / "cache"))
    candidates = sorted(cache.glob("kafka-*/libs"), reverse=True)
    libs = next((c for c in candidates if any(c.glob("kafka-tools-*.jar"))), None)
    java = shutil.which("java")
    if libs is None or java is None:
        missing = "java" if java is None else f"Kafka's jars under {cache}"
        raise StackUnavailable(
            f"{missing} not found; KAFKA-PRODUCE runs Kafka's own ProducerPerformance:"
            " run scripts/local_stack.sh start once (it fetches the jars) or set FOODPIPE_CACHE_DIR"
        )
    return KafkaTools(
        libs=libs, log4j_config=REPO / "scripts" / "kafka" / "log4j2.properties", java=java
    )


def find_peer(tools: KafkaTools, log: Any) -> tuple[PeerTools | None, str]:
    """The JDBC-sink peer's tools, or ``None`` and one line (also logged) saying why not.

    ``scripts/local_stack.sh connect-plugin`` resolves the sink's plugin archive through
    Maven into the stack's cache, next to the Kafka jars (Connect's runtime among them).
    """
    try:
        if not STACK_SCRIPT.is_file():
            raise PeerUnavailable(f"{STACK_SCRIPT} is missing (not a source checkout)")
        try:
            found = _stack_env("connect-plugin")
        except StackUnavailable as exc:
            raise PeerUnavailable(str(exc)) from None
        peer = PeerTools(
            java=tools.java,
            libs=Path(found["CONNECT_LIBS"]),
            plugin_path=Path(found["CONNECT_PLUGIN_PATH"]),
            log4j_config=tools.log4j_config,
        )
        if not any(peer.libs.glob("connect-runtime-*.jar")):
            raise PeerUnavailable(f"no connect-runtime jar in {peer.libs}")
    except PeerUnavailable as exc:
        log.warning(f"JDBC-sink peer not measured: {exc}; the bench goes on")
        return None, f"could not be had: {exc}"
    return peer, "measured"
