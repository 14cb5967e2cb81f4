"""``foodpipe config``: print the effective settings, secrets masked.

``foodpipe config --markdown`` prints the table of environment variables that the README
shows, generated from the :class:`~foodpipe.settings.Settings` fields and their
descriptions. ``tests/unit/test_readme_env_table.py`` fails when the README's copy
differs, so adding a setting without updating the README is caught by CI.
"""

from __future__ import annotations

import argparse
import json
import sys
from enum import Enum
from typing import Any

from pydantic import SecretStr

from foodpipe.settings import Settings, env_var_name


def add_arguments(parser: argparse.ArgumentParser) -> None:
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true", help="only validate; print nothing")
    mode.add_argument(
        "--markdown",
        action="store_true",
        help="print the table of every environment variable (the README's table)",
    )


def run(args: argparse.Namespace, settings: Settings) -> int:
    if args.markdown:
        sys.stdout.write(env_table_markdown())
    elif not args.check:
        json.dump(settings.public_view(), sys.stdout, indent=2, sort_keys=True)
        sys.stdout.write("\n")
    return 0


def env_table_markdown() -> str:
    """One Markdown table row per ``Settings`` field, in declaration order.

    It documents the code's defaults, not this machine's values, so the output is the
    same on every machine and can be compared with the README byte for byte.
    """
    lines = [
        "| Variable | Default | Description |",
        "| --- | --- | --- |",
    ]
    for name, field in Settings.model_fields.items():
        default = _render_default(field.default)
        description = _cell(field.description or "")
        lines.append(f"| `{env_var_name(name)}` | {default} | {description} |")
    return "\n".join(lines) + "\n"


def _render_default(value: Any) -> str:
    if isinstance(value, SecretStr):
        value = value.get_secret_value()
    if value is None:
        return "(unset)"
    if isinstance(value, Enum):
        value = value.value
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return f"`{_cell(str(value))}`"


def _cell(text: str) -> str:
    """Text safe inside a Markdown table cell."""
    return text.replace("|", "\\|").replace("\n", " ")
