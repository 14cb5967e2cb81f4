"""Bytes from Kafka -> a valid :class:`Order`, or a :class:`PoisonMessage` naming why not.

The fast path is one call: ``Order.model_validate_json`` parses and validates the raw
bytes in Rust, without building an intermediate ``dict``. Only when it fails do we spend
time finding out precisely *which* kind of garbage this is, so poison costs a little
more and valid orders cost nothing extra.

No Kafka here: the function takes the key and value bytes, so it is tested on its own.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import ValidationError
from pydantic_core import ErrorDetails

from foodpipe.consumer.classify import ErrorClass
from foodpipe.errors import PoisonMessage
from foodpipe.models import Order

#: The largest valid order is 50 items with 100-character names: about 25 KB even if
#: every character takes 4 UTF-8 bytes. Anything bigger cannot be an order, so it is
#: dead-lettered without being parsed: hostile input cannot make us build a huge object.
MAX_VALUE_BYTES = 64 * 1024

#: Readable reasons are capped: one header, one log line, not a novel.
MAX_REASON_CHARS = 500

# pydantic error types that mean "the value has the right shape but breaks a business
# rule": amounts and quantities out of range, or the model-level check that the total
# equals the sum of the items (a ``value_error``). Everything else is about the shape
# (missing field, wrong type, malformed id, unknown status) and is a schema violation.
_BUSINESS_RULE_TYPES = frozenset(
    {
        "greater_than",
        "greater_than_equal",
        "less_than",
        "less_than_equal",
        "decimal_max_digits",
        "decimal_max_places",
        "decimal_whole_digits",
        "value_error",
    }
)
# Value errors raised by a field validator are about the format of that field (the
# order id's date part), not about amounts.
_FORMAT_FIELDS = frozenset({"order_id", "customer_id", "created_at", "status", "name"})


def decode(key: bytes | None, value: bytes | None) -> Order:
    """Validate one message. Raises :class:`PoisonMessage` with an :class:`ErrorClass`."""
    if not value:
        raise PoisonMessage(
            ErrorClass.EMPTY_VALUE,
            "the message has no value (a tombstone or zero bytes); an order is a JSON object",
        )
    if len(value) > MAX_VALUE_BYTES:
        raise PoisonMessage(
            ErrorClass.OVERSIZE,
            f"the value is {len(value)} bytes; no valid order exceeds {MAX_VALUE_BYTES}",
        )
    try:
        order = Order.model_validate_json(value)
    except ValidationError as exc:
        raise _explain(value, exc) from None
    if key is None:
        raise PoisonMessage(
            ErrorClass.MISSING_KEY,
            f"order {order.order_id} has no key; orders are keyed by customer_id so that one"
            " customer's orders stay in order on one partition",
        )
    if key != order.customer_id.encode():
        raise PoisonMessage(
            ErrorClass.KEY_MISMATCH,
            f"order {order.order_id} has key {_shorten(key)!s} but customer_id"
            f" {order.customer_id}; the key must be the customer_id",
        )
    return order


def order_id_of(value: bytes | None) -> str | None:
    """The ``order_id`` of a message if it has a readable one (valid or not).

    For tools that look at messages the consumer refused (audit, ``foodpipe dlq``), so
    it must survive anything a producer can send.
    """
    if not value or len(value) > 1024 * 1024:
        return None
    try:
        document = json.loads(value)
    except (ValueError, UnicodeDecodeError, RecursionError):
        # RecursionError: deeply nested JSON (``{"a":{"a":...`` 10,000 levels in 60 KB)
        # is valid input to decode but exhausts the parser's stack; it is no order.
        return None
    order_id = document.get("order_id") if isinstance(document, dict) else None
    return order_id if isinstance(order_id, str) else None


def _explain(value: bytes, exc: ValidationError) -> PoisonMessage:
    """Turn pydantic's report into the precise class and a one-line reason."""
    errors = exc.errors(include_url=False, include_input=False)
    if any(error["type"] == "json_invalid" for error in errors):
        try:
            text = value.decode("utf-8")
        except UnicodeDecodeError as decode_error:
            return PoisonMessage(
                ErrorClass.NOT_UTF8,
                f"the value is not UTF-8 text: {decode_error.reason} at byte {decode_error.start}",
            )
        return PoisonMessage(ErrorClass.JSON_INVALID, _json_reason(text, errors))
    if len(errors) == 1 and errors[0]["type"] == "model_type" and not errors[0]["loc"]:
        kind = _json_kind(value)
        return PoisonMessage(ErrorClass.NOT_OBJECT, f"the value is a JSON {kind}, not an object")
    error_class = (
        ErrorClass.BUSINESS_RULE
        if all(_is_business_rule(error) for error in errors)
        else ErrorClass.SCHEMA_VIOLATION
    )
    reason = "; ".join(_describe(error) for error in errors)
    return PoisonMessage(error_class, _cap(reason))


def _is_business_rule(error: ErrorDetails) -> bool:
    if error["type"] not in _BUSINESS_RULE_TYPES:
        return False
    last = error["loc"][-1] if error["loc"] else None
    return not (error["type"] == "value_error" and last in _FORMAT_FIELDS)


def _describe(error: ErrorDetails) -> str:
    where = ".".join(str(part) for part in error["loc"]) or "order"
    message = str(error["msg"]).removeprefix("Value error, ")
    return f"{where}: {message}"


def _json_reason(text: str, errors: list[ErrorDetails]) -> str:
    for error in errors:
        if error["type"] == "json_invalid":
            return _cap(str(error["msg"]))
    return f"not valid JSON: {_shorten(text.encode())}"


def _json_kind(value: bytes) -> str:
    try:
        parsed: Any = json.loads(value)
    except (ValueError, RecursionError):
        return "value of an unexpected kind"
    names = {list: "array", str: "string", bool: "boolean", type(None): "null"}
    return names.get(type(parsed), "number")


def _cap(text: str) -> str:
    return text if len(text) <= MAX_REASON_CHARS else text[: MAX_REASON_CHARS - 1] + "…"


def _shorten(raw: bytes, limit: int = 40) -> str:
    text = raw[:limit].decode("utf-8", errors="replace")
    return repr(text + ("…" if len(raw) > limit else ""))
