"""Numbers on the command line: one parser per kind, one wording of the errors.

argparse turns an ``ArgumentTypeError`` into ``foodpipe CMD: error: argument --flag:
<message>`` and exit 2, so a message only names the value and what is expected.
Floats must be finite: ``inf`` and ``nan`` parse as floats but are never a sensible
rate, interval or timeout.
"""

from __future__ import annotations

import argparse
import ipaddress
import math
import re
from collections.abc import Callable


def whole(low: int | None = None, high: int | None = None) -> Callable[[str], int]:
    """A whole number within ``[low, high]`` (either bound may be left open)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{text}' is not a whole number") from None
        if low is not None and high is not None and not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value} is not between {low} and {high}")
        if low is not None and value < low:
            raise argparse.ArgumentTypeError(f"{value} must be at least {low}")
        if high is not None and value > high:
            raise argparse.ArgumentTypeError(f"{value} must be at most {high}")
        return value

    return parse


def number(
    *,
    low: float | None = None,
    above: float | None = None,
    below: float | None = None,
) -> Callable[[str], float]:
    """A finite number, ``>= low`` and/or ``> above`` and/or ``< below``."""
    bounds = [
        f"{sign} {bound:g}"
        for sign, bound in ((">=", low), (">", above), ("<", below))
        if bound is not None
    ]
    expected = "a finite number" + (" " + " and ".join(bounds) if bounds else "")

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{text}' is not a number") from None
        if (
            not math.isfinite(value)
            or (low is not None and value < low)
            or (above is not None and value <= above)
            or (below is not None and value >= below)
        ):
            raise argparse.ArgumentTypeError(f"'{text}' must be {expected}")
        return value

    return parse


#: RFC 1123 host names: dot-separated labels of letters, digits and inner hyphens.
_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(\.{_LABEL})*$")


def host(text: str) -> str:
    """An IP address or a host name to listen on (``0.0.0.0`` / ``::`` mean every interface)."""
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        pass
    if not _HOSTNAME.match(text):
        raise argparse.ArgumentTypeError(f"'{text}' is not an IP address or a host name")
    return text
