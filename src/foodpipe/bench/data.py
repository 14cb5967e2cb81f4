"""The prepared orders every database ceiling writes.

They come from the producer's own :class:`~foodpipe.producer.generator.OrderGenerator`
with the bench's seed, so the ceilings write the same kind of rows (customers, 1-5
items of JSONB, totals) as the pipeline, whose producer runs with the same ``--seed``.
Ids and timestamps are the bench's own, as they are per run in the producer too.

"Prepared" means everything a driver needs is computed before the clock starts: the
ceilings measure the database, not Python's formatting.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from foodpipe.db import orders
from foodpipe.producer.generator import OrderGenerator

#: The columns written, in order (``processed_at`` is the database default, as in the
#: consumer's own insert).
COLUMNS: tuple[str, ...] = tuple(c.name for c in orders.columns if c.name != "processed_at")

Row = tuple[str, str, str, Decimal, str, datetime]


@dataclass(frozen=True)
class Dataset:
    #: One tuple per order in :data:`COLUMNS` order; ``items`` is JSON text.
    rows: list[Row]
    #: A sample of the serialised orders, as the producer sends them (for Kafka's tool).
    sample_values: list[bytes]
    #: Mean size of a serialised order, in bytes.
    mean_value_bytes: float

    def copy_buffer(self, count: int | None = None) -> io.StringIO:
        """The rows in ``COPY ... FROM STDIN`` text format (tab-separated)."""
        out = io.StringIO()
        rows = self.rows if count is None else self.rows[:count]
        for order_id, customer, items, total, status, created_at in rows:
            # Generated text never holds tabs, newlines or backslashes, so no escaping.
            out.write(f"{order_id}\t{customer}\t{items}\t{total}\t{status}\t")
            out.write(created_at.isoformat())
            out.write("\n")
        out.seek(0)
        return out


def make_dataset(count: int, seed: int, sample: int = 1000) -> Dataset:
    """``count`` orders drawn with ``seed``; ids ``ORD-<today>-0000001`` onwards."""
    generator = OrderGenerator(seed)
    start = datetime.now(UTC).replace(microsecond=0)
    day = start.strftime("%Y%m%d")
    rows: list[Row] = []
    values: list[bytes] = []
    total_bytes = 0
    for index in range(count):
        created_at = start + timedelta(microseconds=index * 1000)
        value = generator.render(generator.next_content(), f"ORD-{day}-{index + 1:07d}", created_at)
        total_bytes += len(value)
        if index < sample:
            values.append(value)
        order = json.loads(value)
        rows.append(
            (
                order["order_id"],
                order["customer_id"],
                json.dumps(order["items"], separators=(",", ":")),
                Decimal(order["total_amount"]),
                order["status"],
                created_at,
            )
        )
    return Dataset(rows, values, total_bytes / count if count else 0.0)
