"""PostgreSQL access: the ``orders`` table, the engine, and the schema files.

The table definition here must match ``src/database/init.sql`` column for column;
``tests/integration/test_schema.py`` reflects the real table and compares.
"""

from __future__ import annotations

import re
from pathlib import Path

from sqlalchemy import (
    CheckConstraint,
    Column,
    Engine,
    Index,
    MetaData,
    Numeric,
    String,
    Table,
    create_engine,
    func,
)
from sqlalchemy.dialects.postgresql import JSONB, TIMESTAMP
from sqlalchemy.engine import URL

from foodpipe.settings import Settings

metadata = MetaData()

orders = Table(
    "orders",
    metadata,
    Column("order_id", String(32), primary_key=True),
    Column("customer_id", String(16), nullable=False),
    Column("items", JSONB, nullable=False),
    Column("total_amount", Numeric(10, 2), nullable=False),
    Column("status", String(16), nullable=False),
    Column("created_at", TIMESTAMP(timezone=True), nullable=False),
    Column("processed_at", TIMESTAMP(timezone=True), nullable=False, server_default=func.now()),
    CheckConstraint("total_amount > 0", name="orders_total_amount_positive"),
    Index("idx_orders_created_at", "created_at"),
    Index("idx_orders_customer_id", "customer_id"),
)

#: src/database, found relative to this file in a source checkout and in the image.
SCHEMA_DIR = Path(__file__).resolve().parents[1] / "database"


def init_sql() -> str:
    return (SCHEMA_DIR / "init.sql").read_text()


def migration_sections(path: Path) -> tuple[str, str]:
    """Split a migration file into its ``-- migrate:up`` and ``-- migrate:down`` SQL."""
    # The markers are whole lines; the file's header comment may mention them in prose.
    parts = re.split(r"^-- migrate:(up|down)[ \t]*$", path.read_text(), flags=re.MULTILINE)
    sections = dict(zip(parts[1::2], parts[2::2], strict=True))
    up, down = sections.get("up", "").strip(), sections.get("down", "").strip()
    if not up or not down:
        raise ValueError(f"{path} needs '-- migrate:up' and '-- migrate:down' sections")
    return up, down


def make_engine(settings: Settings, url: URL | None = None) -> Engine:
    """The service engine.

    The consumer writes from a single thread, so it holds at most one connection at a
    time; ``DB_POOL_SIZE`` (default 2) leaves one spare for a reconnect, and keeps
    ``replicas x pool`` well under the small server's ``max_connections``.
    ``pool_pre_ping`` turns a connection killed by a database restart into a fresh one
    instead of an error on the next batch.
    """
    return create_engine(
        url if url is not None else settings.sqlalchemy_url(),
        pool_size=settings.db_pool_size,
        max_overflow=0,
        pool_pre_ping=True,
        pool_timeout=10,
        connect_args={"connect_timeout": 5, "application_name": "foodpipe"},
    )
