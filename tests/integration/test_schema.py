"""init.sql, the migration and the SQLAlchemy table describe the same `orders` table."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Engine, MetaData, Table, create_engine, inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.schema import CreateTable

from foodpipe.db import SCHEMA_DIR, init_sql, metadata, migration_sections, orders

from ..conftest import Stack

MIGRATION = SCHEMA_DIR / "migrations" / "001_create_orders_table.sql"


@pytest.fixture
def scratch_engine(stack: Stack, admin_engine: Engine) -> Iterator[Engine]:
    """An empty database of its own."""
    name = f"fp_schema_{uuid.uuid4().hex[:8]}"
    with admin_engine.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    engine = create_engine(make_url(stack.admin_url).set(database=name))
    yield engine
    engine.dispose()
    with admin_engine.connect() as conn:
        conn.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))


def describe(engine: Engine) -> dict[str, Any]:
    """Everything about `orders` that matters: columns, key, indexes, checks."""
    insp = inspect(engine)
    columns = {
        c["name"]: (str(c["type"]), c["nullable"], str(c.get("default") or ""))
        for c in insp.get_columns("orders")
    }
    return {
        "columns": columns,
        "pk": insp.get_pk_constraint("orders")["constrained_columns"],
        "indexes": sorted(
            (i["name"], tuple(i["column_names"])) for i in insp.get_indexes("orders")
        ),
        "checks": sorted(
            (c["name"], c["sqltext"].replace("(", "").replace(")", ""))
            for c in insp.get_check_constraints("orders")
        ),
    }


def apply(engine: Engine, sql: str) -> None:
    with engine.begin() as conn:
        conn.exec_driver_sql(sql)


def test_init_sql_migration_and_model_agree(
    scratch_engine: Engine, admin_engine: Engine, stack: Stack
) -> None:
    apply(scratch_engine, init_sql())
    from_init = describe(scratch_engine)

    up, down = migration_sections(MIGRATION)
    apply(scratch_engine, down)
    assert not inspect(scratch_engine).has_table("orders"), "rollback must drop the table"
    apply(scratch_engine, up)
    from_migration = describe(scratch_engine)
    assert from_migration == from_init

    # The SQLAlchemy table, created by SQLAlchemy itself, reflects identically.
    apply(scratch_engine, down)
    metadata.create_all(scratch_engine)
    from_model = describe(scratch_engine)
    assert from_model == from_init, str(CreateTable(orders).compile(scratch_engine))

    # And the reflected table has exactly the model's columns in the model's order.
    reflected = Table("orders", MetaData(), autoload_with=scratch_engine)
    assert [c.name for c in reflected.columns] == [c.name for c in orders.columns]


def test_init_sql_is_idempotent(scratch_engine: Engine) -> None:
    apply(scratch_engine, init_sql())
    apply(scratch_engine, init_sql())
    assert describe(scratch_engine)["pk"] == ["order_id"]


def test_total_amount_check_is_enforced(scratch_engine: Engine) -> None:
    apply(scratch_engine, init_sql())
    with (
        pytest.raises(Exception, match="orders_total_amount_positive"),
        scratch_engine.begin() as conn,
    ):
        conn.execute(
            text(
                "INSERT INTO orders"
                " (order_id, customer_id, items, total_amount, status, created_at)"
                " VALUES ('ORD-20261122-00001', 'CUST-00001', '[]', 0, 'pending', now())"
            )
        )
