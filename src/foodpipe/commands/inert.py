"""Text from outside (message contents, headers, client ids) made safe for a terminal.

Rich reads ``[...]`` in a plain ``str`` cell as markup: ``[/bold]`` in a poison message's
``order_id`` crashed ``foodpipe dlq list`` with ``MarkupError`` and ``[link=...]`` became a
link. A :class:`~rich.text.Text` is never parsed as markup, and the escapes and control
characters a producer can put in a message (ESC sequences that clear the screen or open
an OSC 8 hyperlink, bidi overrides that reverse what follows) are shown as ``\\xNN`` or
``\\uNNNN`` instead of reaching the terminal.
"""

from __future__ import annotations

import re

from rich.text import Text

#: C0 and C1 controls, DEL, and the Unicode bidi/invisible formatting characters.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff]")


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def visible(text: str) -> str:
    """``text`` with every control or formatting character written out as an escape."""
    return _CONTROL.sub(_escape, text)


def inert(text: str, style: str = "") -> Text:
    """``text`` as a Rich cell that is neither markup nor terminal control."""
    return Text(visible(text), style=style)
