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
from typing import NamedTuple

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


class OrderContent(NamedTuple):
    """What one order contains; everything but its id and timestamp.

    A NamedTuple rather than a frozen dataclass: it is built once per order, and a
    tuple is several times cheaper to create.
    """

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
    if created_at.tzinfo is UTC:  # the producer's own clock: the cheap path
        return created_at.isoformat()[:-6] + "Z"  # "+00:00" -> "Z"
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
        # Every possible item line, pre-rendered: '{"name":"Pad Thai","quantity":2,
        # "unit_price":"12.95"}' for each dish and quantity (at most 20 x 1000 short
        # strings). json.dumps escapes any name safely; UTF-8 is kept as is, like
        # pydantic, so the bytes match the contract's own serialisation.
        self._lines = {
            (index, quantity): (
                f'{{"name":{json.dumps(item.name, ensure_ascii=False)},'
                f'"quantity":{quantity},"unit_price":"{_cents_text(item.cents)}"}}'
            )
            for index, item in enumerate(menu)
            for quantity in range(1, max_quantity + 1)
        }
        # Scratch list for the shuffle. Its order carries over between draws, which is
        # fine: it is part of the seeded state, so streams stay reproducible.
        self._pool = list(range(len(menu)))

    def next_content(self) -> OrderContent:
        # Draws use rng.random() and integer arithmetic instead of randint()/sample(),
        # which cost about twice as much; the bias of int(random() * n) is ~n / 2**53.
        draw = self._rng.random
        customer = self._customers[int(draw() * len(self._customers))]
        count = 1 + int(draw() * self._max_items)
        # A partial Fisher-Yates shuffle picks `count` distinct dishes.
        pool = self._pool
        size = len(pool)
        max_quantity = self._max_quantity
        lines = []
        total = 0
        for j in range(count):
            m = j + int(draw() * (size - j))
            pool[j], pool[m] = pool[m], pool[j]
            index = pool[j]
            quantity = 1 + int(draw() * max_quantity)
            lines.append((index, quantity))
            total += self._cents[index] * quantity
        return OrderContent(customer, tuple(lines), total)

    def render(self, content: OrderContent, order_id: str, created_at: datetime) -> bytes:
        """The order as JSON bytes, byte-identical to ``Order.to_json()``.

        ``content`` must come from this generator (its lines are looked up in the
        pre-rendered table).
        """
        items = ",".join(map(self._lines.__getitem__, content.lines))
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
