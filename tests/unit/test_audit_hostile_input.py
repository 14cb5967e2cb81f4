"""``foodpipe audit`` reads every message, hostile ones included, without crashing.

Found by the security test's hostile input: ``{"a":`` nested 20,000 levels (120 KB, under
the audit's 1 MB reading bound) raised RecursionError out of ``json.loads`` and the
whole audit failed with a traceback.
"""

from __future__ import annotations

import pytest

from foodpipe.consumer.decode import order_id_of


@pytest.mark.parametrize(
    "value",
    [
        b'{"a":' * 20_000 + b"1" + b"}" * 20_000,
        b"[" * 50_000 + b"]" * 50_000,
        b"\xff\xfe\x00",
        b"",
        None,
        b'"just a string"',
    ],
)
def test_unreadable_messages_have_no_order_id(value: bytes | None) -> None:
    assert order_id_of(value) is None


def test_a_readable_message_gives_its_order_id() -> None:
    assert order_id_of(b'{"order_id": "ORD-20250110-00001", "x": [[[1]]]}') == (
        "ORD-20250110-00001"
    )
