"""The dashboard's reads of the ``orders`` table, in SQLAlchemy Core.

Every value is a bound parameter; the app role needs nothing beyond ``SELECT`` on
``orders``. Each function runs its statements on one connection and returns plain,
JSON-ready values (``Decimal`` money becomes a string, so no cent is lost on the way).

- :func:`latency`: end-to-end latency of the orders written in the last ``window_s``
  seconds, ``processed_at - created_at`` per row. ``created_at`` is the producer's
  clock when it made the order; ``processed_at`` is PostgreSQL's ``now()`` in the
  consumer's insert transaction (its start). So the figure covers the producer's queue,
  Kafka, the consumer's batching and the write, minus the commit itself, and assumes
  the two clocks agree (one machine, or NTP).
- :func:`business`: orders and revenue per minute, top dishes, top customers and the
  average order value of the orders *created* in the last ``minutes`` minutes (the
  ``created_at`` index serves the window).
"""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import Engine, Integer, Numeric, column, desc, func, select, true
from sqlalchemy.dialects.postgresql import JSONB

from foodpipe.db import orders

PERCENTILES = (0.5, 0.95, 0.99)


def latency(engine: Engine, window_s: int = 60) -> dict[str, Any]:
    """``{"window_s", "samples", "p50_ms", "p95_ms", "p99_ms"}``; ms are ``None`` if no row."""
    seconds = func.extract("epoch", orders.c.processed_at - orders.c.created_at)
    columns = [func.count()] + [func.percentile_cont(q).within_group(seconds) for q in PERCENTILES]
    statement = select(*columns).where(
        orders.c.processed_at > func.now() - timedelta(seconds=window_s)
    )
    with engine.connect() as conn:
        row = conn.execute(statement).one()
    document: dict[str, Any] = {"window_s": window_s, "samples": int(row[0])}
    for q, value in zip(PERCENTILES, row[1:], strict=True):
        document[f"p{round(q * 100)}_ms"] = None if value is None else round(float(value) * 1000)
    return document


def business(engine: Engine, minutes: int = 60, top: int = 5) -> dict[str, Any]:
    """The business view of the last ``minutes`` minutes; see the module docstring."""
    since = func.now() - timedelta(minutes=minutes)
    recent = orders.c.created_at >= since
    minute = func.date_trunc("minute", orders.c.created_at).label("minute")
    per_minute = (
        select(minute, func.count().label("orders"), func.sum(orders.c.total_amount))
        .where(recent)
        .group_by(minute)
        .order_by(minute)
    )
    item = (
        func.jsonb_array_elements(orders.c["items"])
        .table_valued(column("value", JSONB))
        .lateral("item")
    )
    quantity = func.sum(item.c["value"]["quantity"].astext.cast(Integer))
    revenue = func.sum(
        item.c["value"]["quantity"].astext.cast(Integer)
        * item.c["value"]["unit_price"].astext.cast(Numeric(10, 2))
    )
    dish = item.c["value"]["name"].astext.label("dish")
    dishes = (
        select(dish, quantity.label("quantity"), revenue.label("revenue"))
        .select_from(orders.join(item, true()))
        .where(recent)
        .group_by(dish)
        .order_by(desc("quantity"), dish)
        .limit(top)
    )
    spent = func.sum(orders.c.total_amount).label("spent")
    customers = (
        select(orders.c.customer_id, func.count().label("orders"), spent)
        .where(recent)
        .group_by(orders.c.customer_id)
        .order_by(desc("spent"), orders.c.customer_id)
        .limit(top)
    )
    totals = select(
        func.count(), func.sum(orders.c.total_amount), func.avg(orders.c.total_amount)
    ).where(recent)
    with engine.connect() as conn:
        minutes_rows = conn.execute(per_minute).all()
        dish_rows = conn.execute(dishes).all()
        customer_rows = conn.execute(customers).all()
        count, total, average = conn.execute(totals).one()
    return {
        "minutes": minutes,
        "per_minute": [
            {"minute": m.isoformat(), "orders": int(n), "revenue": _money(r)}
            for m, n, r in minutes_rows
        ],
        "top_dishes": [
            {"dish": d, "quantity": int(q), "revenue": _money(r)} for d, q, r in dish_rows
        ],
        "top_customers": [
            {"customer_id": c, "orders": int(n), "spent": _money(s)} for c, n, s in customer_rows
        ],
        "orders": int(count),
        "revenue": _money(total),
        "average_order_value": _money(average),
    }


def _money(value: Decimal | None) -> str | None:
    return None if value is None else str(Decimal(value).quantize(Decimal("0.01")))
