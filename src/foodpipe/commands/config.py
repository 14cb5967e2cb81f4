"""``foodpipe config``: print the effective settings, secrets masked."""

from __future__ import annotations

import argparse
import json
import sys

from foodpipe.settings import Settings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--check", action="store_true", help="only validate; print nothing")


def run(args: argparse.Namespace, settings: Settings) -> int:
    if not args.check:
        json.dump(settings.public_view(), sys.stdout, indent=2, sort_keys=True)
        sys.stdout.write("\n")
    return 0
