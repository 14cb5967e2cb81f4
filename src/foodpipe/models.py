"""The ``Order`` contract: the one schema the producer writes and the consumer reads.

Money is ``Decimal`` end to end. On the wire (JSON) amounts are strings such as
``"12.50"`` so no float rounding can creep in between services; on input both strings
and JSON numbers are accepted. The business rules (total equals the sum of the items to
the cent, quantities >= 1, known status, id formats) live here, so an invalid order
cannot even be constructed by the producer, and the consumer validates with the very
same code.

Unknown extra fields are ignored rather than rejected: a newer producer may add fields
without sending every message of an older consumer to the dead-letter topic.
"""

from __future__ import annotations

import re
from datetime import date
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Any

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)

#: Bumped when the contract changes incompatibly; sent in the ``schema-version`` header.
SCHEMA_VERSION = "1"
CONTENT_TYPE = "application/json"
HEADER_SCHEMA_VERSION = "schema-version"
HEADER_CONTENT_TYPE = "content-type"

ORDER_ID_PATTERN = r"^ORD-(\d{8})-(\d{5,9})$"
CUSTOMER_ID_PATTERN = r"^CUST-\d{5}$"
_ORDER_ID = re.compile(ORDER_ID_PATTERN)

CENT = Decimal("0.01")

#: Date parts of order ids already found to be calendar dates (see ``Order._real_date``).
_REAL_DAYS: set[str] = set()
_REAL_DAYS_MAX = 4096

Money = Annotated[Decimal, Field(gt=0, max_digits=10, decimal_places=2)]


class OrderStatus(StrEnum):
    PENDING = "pending"
    CONFIRMED = "confirmed"
    PREPARING = "preparing"
    DELIVERED = "delivered"
    CANCELLED = "cancelled"


class OrderItem(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    name: Annotated[str, StringConstraints(min_length=1, max_length=100)]
    # strict: a quantity sent as "2" or true is a wrong type, not something to coerce.
    quantity: int = Field(ge=1, le=1000, strict=True)
    unit_price: Money

    @property
    def line_total(self) -> Decimal:
        return self.quantity * self.unit_price


class Order(BaseModel):
    """A food order as published to Kafka and stored in PostgreSQL."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    order_id: Annotated[str, StringConstraints(pattern=ORDER_ID_PATTERN)]
    customer_id: Annotated[str, StringConstraints(pattern=CUSTOMER_ID_PATTERN)]
    items: list[OrderItem] = Field(min_length=1, max_length=50)
    total_amount: Money
    status: OrderStatus = OrderStatus.PENDING
    created_at: AwareDatetime

    @field_validator("order_id")
    @classmethod
    def _real_date(cls, value: str) -> str:
        # The pattern constraint already ran: "ORD-" then the eight date digits.
        digits = value[4:12]
        if digits in _REAL_DAYS:  # a consumer sees the same few days over and over
            return value
        try:
            _parse_day(digits)
        except ValueError:
            raise ValueError(f"order_id date part {digits} is not a calendar date") from None
        if len(_REAL_DAYS) < _REAL_DAYS_MAX:  # bounded: odd ids cannot make it grow for ever
            _REAL_DAYS.add(digits)
        return value

    @model_validator(mode="after")
    def _total_matches_items(self) -> Order:
        # Runs for every consumed message, so kept lean: a list comprehension over the
        # fields (no property call per item), and Decimal equality compares values
        # exactly (27.0 == 27.00), so no quantize unless there is an error to report.
        expected = sum([item.quantity * item.unit_price for item in self.items], Decimal(0))
        if self.total_amount != expected:
            raise ValueError(
                f"total_amount {self.total_amount} != sum of items {expected.quantize(CENT)}"
            )
        return self

    def to_json(self) -> bytes:
        return self.model_dump_json().encode()

    def to_row(self) -> dict[str, Any]:
        """The column values of the ``orders`` table (``processed_at`` is the DB's)."""
        return {
            "order_id": self.order_id,
            "customer_id": self.customer_id,
            "items": [item.model_dump(mode="json") for item in self.items],
            "total_amount": self.total_amount,
            "status": self.status.value,
            "created_at": self.created_at,
        }


def _parse_day(digits: str) -> date:
    # date() on the three int slices is ~10x cheaper than strptime, and this runs once
    # per consumed message; the pattern already guarantees eight digits.
    return date(int(digits[:4]), int(digits[4:6]), int(digits[6:]))


def order_day(order_id: str) -> date:
    """The calendar day encoded in an order id."""
    match = _ORDER_ID.match(order_id)
    if match is None:
        raise ValueError(f"not an order id: {order_id!r}")
    return _parse_day(match.group(1))


def kafka_headers() -> list[tuple[str, bytes]]:
    """Headers every order message carries."""
    return [
        (HEADER_SCHEMA_VERSION, SCHEMA_VERSION.encode()),
        (HEADER_CONTENT_TYPE, CONTENT_TYPE.encode()),
    ]
