"""The ``foodpipe`` command: a thin dispatcher over subcommand modules.

Each subcommand lives in its own module exposing ``add_arguments(parser)`` and
``run(args, settings) -> int``. Modules are imported only when their command runs, so
``foodpipe --help`` stays fast and a command's heavy imports do not slow the others.

Exit codes: 0 success; 1 the command ran and found a problem (lost data, failed check);
2 bad usage or configuration; 3 a dependency (Kafka, PostgreSQL) is unreachable or
refused us.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from typing import Protocol

from confluent_kafka import KafkaException

from foodpipe import __version__
from foodpipe.errors import FoodpipeError
from foodpipe.kafka import BrokerUnreachable
from foodpipe.log import configure_logging, scrub
from foodpipe.settings import ConfigError, Settings, load_settings

#: command name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "topics": ("foodpipe.commands.topics", "create the orders and dead-letter topics"),
    "config": ("foodpipe.commands.config", "show the effective settings (secrets masked)"),
    "health": ("foodpipe.commands.health", "check Kafka, the topics, PostgreSQL and consumer lag"),
    "produce": ("foodpipe.commands.produce", "publish mock food orders to Kafka at a steady rate"),
    "consume": ("foodpipe.commands.consume", "write orders from Kafka into PostgreSQL"),
    "status": ("foodpipe.commands.status", "partitions, offsets, lag, owners, rows, DLQ size"),
    "audit": ("foodpipe.commands.audit", "compare Kafka with PostgreSQL; exit 1 on any loss"),
    "dlq": ("foodpipe.commands.dlq", "list dead-lettered messages, or replay them into PostgreSQL"),
    "bench": ("foodpipe.commands.bench", "measure the pipeline against its ceilings, side by side"),
    "dashboard": ("foodpipe.commands.dashboard", "serve the live pipeline and business views"),
}


class CommandModule(Protocol):
    def add_arguments(self, parser: argparse.ArgumentParser) -> None: ...

    def run(self, args: argparse.Namespace, settings: Settings) -> int: ...


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="foodpipe",
        description="Kafka food-order pipeline: produce orders, consume them into PostgreSQL.",
    )
    parser.add_argument("--version", action="version", version=f"foodpipe {__version__}")
    parser.add_argument("--env-file", default=".env", help="dotenv file to read (default .env)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module_name, help_text) in COMMANDS.items():
        command_parser = sub.add_parser(name, help=help_text, description=help_text)
        _load(module_name).add_arguments(command_parser)
    return parser


def _load(module_name: str) -> CommandModule:
    module: CommandModule = importlib.import_module(module_name)
    return module


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = load_settings(_env_file=args.env_file)
    except ConfigError as exc:
        print(f"foodpipe: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_format)
    module = _load(COMMANDS[args.command][0])
    try:
        return module.run(args, settings)
    except ConfigError as exc:
        print(f"foodpipe: {exc}", file=sys.stderr)
        return 2
    except BrokerUnreachable as exc:
        print(f"foodpipe: {exc}", file=sys.stderr)
        return 3
    except FoodpipeError as exc:
        print(f"foodpipe: {scrub(str(exc))}", file=sys.stderr)
        return exc.exit_code
    except KafkaException as exc:
        error = exc.args[0] if exc.args else exc
        print(f"foodpipe: Kafka refused the request: {error}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        return 130
