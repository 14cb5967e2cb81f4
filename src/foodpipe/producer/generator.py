"""Mock order data: 100 customers, 20 menu items, and a seeded stream of orders.

The pools are built once, at import, so generating an order costs a handful of random
draws and one string join:

- ``CUSTOMERS``: ``CUST-00001`` ... ``CUST-00100``.
- ``MENU``: 20 dishes, each priced between $2.00 and $15.00 as an exact ``Decimal``.

An order is drawn in two steps, kept apart on purpose:

1. :meth:`OrderGenerator.next_content` draws *what* is ordered (customer, 1..N distinct
   dishes, quantities 1..Q, total) from a ``random.Random`` seeded with ``seed``. Only
   this step consumes randomness, so the same seed gives the same sequence of contents,
   whatever the rate, the clock or the order ids.
2. :meth:`OrderGenerator.render` stamps an ``order_id`` and ``created_at`` on it and
   serialises it. Those two are per run: ids must be unique across runs (see
   :mod:`foodpipe.producer.ids`), and the time is the time.

Money is exact. Prices are kept as integer cents next to their ``Decimal``; the total is
the integer sum of ``quantity * cents``, which equals the ``Decimal`` sum to the cent
by construction. The JSON is assembled from pre-rendered fragments rather than through
a pydantic model per order (the model round trip is several times the cost of the
rest of the producer's work); the unit tests prove that the bytes are exactly what
``Order.to_json()`` would produce, so the one contract still holds.
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

from foodpipe.models import Order, OrderItem, OrderStatus

CUSTOMER_COUNT = 100
MIN_PRICE = Decimal("2.00")
MAX_PRICE = Decimal("15.00")


@dataclass(frozen=True, slots=True)
class MenuItem:
    name: str
    price: Decimal

    @property
    def cents(self) -> int:
        return int(self.price * 100)


#: 20 dishes spanning the whole $2-$15 range (both ends included on purpose, so the
#: boundary prices are exercised by every long run).
MENU: tuple[MenuItem, ...] = tuple(
    MenuItem(name, Decimal(price))
    for name, price in (
        ("Margherita Pizza", "12.50"),
        ("Pepperoni Pizza", "13.75"),
        ("Cheeseburger", "9.99"),
        ("Veggie Burger", "10.49"),
        ("Chicken Caesar Salad", "11.25"),
        ("Pad Thai", "12.95"),
        ("Chicken Tikka Masala", "15.00"),
        ("Beef Tacos", "8.75"),
        ("Salmon Sushi Roll", "13.20"),
        ("Tonkotsu Ramen", "12.00"),
        ("Fish and Chips", "11.80"),
        ("Falafel Wrap", "8.40"),
        ("Greek Salad", "9.25"),
        ("French Fries", "3.50"),
        ("Onion Rings", "4.25"),
        ("Garlic Bread", "3.95"),
        ("Chocolate Brownie", "4.75"),
        ("New York Cheesecake", "5.95"),
        ("Lemonade", "2.95"),
        ("Bottled Water", "2.00"),
    )
)

CUSTOMERS: tuple[str, ...] = tuple(f"CUST-{n:05d}" for n in range(1, CUSTOMER_COUNT + 1))


@dataclass(frozen=True, slots=True)
class OrderContent:
    """What one order contains; everything but its id and timestamp."""

    customer_id: str
    #: ``(index into the menu, quantity)`` per line; dishes are distinct within an order.
    lines: tuple[tuple[int, int], ...]
    total_cents: int

    @property
    def total(self) -> Decimal:
        return Decimal(self.total_cents).scaleb(-2)


def format_created_at(created_at: datetime) -> str:
    """``created_at`` as the contract serialises it: ISO 8601, UTC, with a ``Z``.

    ``isoformat()`` omits the fraction when microseconds are zero and writes six digits
    otherwise, which is what pydantic does, so the bytes match ``Order.to_json()``.
    """
    if created_at.utcoffset() is None:
        raise ValueError("created_at must be timezone-aware")
    return created_at.astimezone(UTC).replace(tzinfo=None).isoformat() + "Z"


def _cents_text(cents: int) -> str:
    return f"{cents // 100}.{cents % 100:02d}"


class OrderGenerator:
    """A reproducible stream of order contents, and their serialisation.

    ``seed=None`` draws a seed from the OS; :attr:`seed` holds the one in use either
    way, so any run can be replayed with ``--seed``.
    """

    def __init__(
        self,
        seed: int | None = None,
        *,
        max_items: int = 5,
        max_quantity: int = 3,
        menu: tuple[MenuItem, ...] = MENU,
        customers: tuple[str, ...] = CUSTOMERS,
    ) -> None:
        if not 1 <= max_items <= len(menu):
            raise ValueError(f"max_items must be 1..{len(menu)}, got {max_items}")
        if not 1 <= max_quantity <= 1000:
            raise ValueError(f"max_quantity must be 1..1000, got {max_quantity}")
        self.seed: int = seed if seed is not None else int.from_bytes(os.urandom(6), "big")
        self._rng = random.Random(self.seed)
        self._max_items = max_items
        self._max_quantity = max_quantity
        self._menu = menu
        self._customers = customers
        self._cents = tuple(item.cents for item in menu)
        # Pre-rendered JSON around each line's quantity: '{"name":...,"quantity":' + q +
        # ',"unit_price":"12.50"}'. json.dumps escapes any name safely; UTF-8 as is,
        # like pydantic, so the bytes match the contract's own serialisation.
        self._line_head = tuple(
            f'{{"name":{json.dumps(item.name, ensure_ascii=False)},"quantity":' for item in menu
        )
        self._line_tail = tuple(f',"unit_price":"{_cents_text(c)}"}}' for c in self._cents)
        self._indices = range(len(menu))

    def next_content(self) -> OrderContent:
        rng = self._rng
        customer = self._customers[rng.randrange(len(self._customers))]
        picked = rng.sample(self._indices, rng.randint(1, self._max_items))
        lines = tuple((index, rng.randint(1, self._max_quantity)) for index in picked)
        total = sum(self._cents[index] * quantity for index, quantity in lines)
        return OrderContent(customer, lines, total)

    def render(self, content: OrderContent, order_id: str, created_at: datetime) -> bytes:
        """The order as JSON bytes, byte-identical to ``Order.to_json()``."""
        head, tail = self._line_head, self._line_tail
        items = ",".join(f"{head[i]}{q}{tail[i]}" for i, q in content.lines)
        return (
            f'{{"order_id":"{order_id}","customer_id":"{content.customer_id}",'
            f'"items":[{items}],"total_amount":"{_cents_text(content.total_cents)}",'
            f'"status":"pending","created_at":"{format_created_at(created_at)}"}}'
        ).encode()

    def to_order(self, content: OrderContent, order_id: str, created_at: datetime) -> Order:
        """The same order as a validated model (for tests and tools; not the hot path)."""
        return Order(
            order_id=order_id,
            customer_id=content.customer_id,
            items=[
                OrderItem(name=self._menu[i].name, quantity=q, unit_price=self._menu[i].price)
                for i, q in content.lines
            ],
            total_amount=content.total,
            status=OrderStatus.PENDING,
            created_at=created_at,
        )
