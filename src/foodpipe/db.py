"""PostgreSQL access: the ``orders`` table, the engine, and the schema files.

The table definition here must match ``src/database/init.sql`` column for column;
``tests/integration/test_schema.py`` reflects the real table and compares.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg2
from pydantic import TypeAdapter
from sqlalchemy import (
    CheckConstraint,
    Column,
    Connection,
    Engine,
    Index,
    MetaData,
    Numeric,
    String,
    Table,
    bindparam,
    create_engine,
    func,
    select,
)
from sqlalchemy.dialects.postgresql import JSONB, TIMESTAMP
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError

from foodpipe.errors import FatalError
from foodpipe.models import Order, OrderItem
from foodpipe.settings import Settings, redact_url

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


#: libpq's own TCP liveness checks. Across a network partition (not a database
#: restart, which closes the socket) nothing tells the client that its connection is
#: dead: a write waits for TCP's retransmissions, whose gaps double up to minutes, so
#: after a 30 s cut to PostgreSQL the consumer was seen to sit ~27 s more on a link that
#: was already back (tests/fault/network, case 2). ``tcp_user_timeout`` fails a
#: connection whose sent data stays unacknowledged for 10 s, which the consumer
#: classifies as transient (retry with backoff, on a new connection); the keepalives do
#: the same for an idle pooled connection, so ``pool_pre_ping`` does not hang on one.
TCP_LIVENESS: dict[str, int] = {
    "tcp_user_timeout": 10_000,
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 5,
    "keepalives_count": 3,
}


def make_engine(
    settings: Settings, url: URL | None = None, session: Mapping[str, str] | None = None
) -> Engine:
    """The service engine.

    The consumer writes from a single thread, so it holds at most one connection at a
    time; ``DB_POOL_SIZE`` (default 2) leaves one spare for a reconnect, and keeps
    ``replicas x pool`` well under the small server's ``max_connections``.
    ``pool_pre_ping`` turns a connection killed by a database restart into a fresh one
    instead of an error on the next batch.

    ``session`` sets PostgreSQL parameters on every new connection (for example the
    consumer's :data:`CONSUMER_SESSION` timeouts), at connect time, so they cost no
    round trip per transaction.
    """
    connect_args: dict[str, Any] = {
        "connect_timeout": 5,
        "application_name": "foodpipe",
        **TCP_LIVENESS,
    }
    if session:
        connect_args["options"] = " ".join(f"-c {name}={value}" for name, value in session.items())
    settings.check_database_password()
    return create_engine(
        url if url is not None else settings.sqlalchemy_url(),
        pool_size=settings.db_pool_size,
        max_overflow=0,
        pool_pre_ping=True,
        pool_timeout=10,
        connect_args=connect_args,
    )


# --------------------------------------------------------------------------- the consumer's write

#: Session parameters of the consumer's connections. A table lock held by someone else,
#: or a statement stuck behind one, must surface as an error the consumer classifies as
#: transient (SQLSTATE 55P03 / 57014) and retries with backoff, not as a poll loop that
#: hangs forever and is thrown out of its group. A normal batch takes milliseconds.
CONSUMER_SESSION: dict[str, str] = {
    "lock_timeout": "5s",
    "statement_timeout": "30s",
    "idle_in_transaction_session_timeout": "60s",
}


def consumer_session(max_poll_interval_ms: int) -> dict[str, str]:
    """:data:`CONSUMER_SESSION`, with every wait bounded by a third of the poll interval.

    While a statement runs the poll loop does not poll; if it ran longer than
    ``max.poll.interval.ms`` the group would evict the member, and with a database that
    stays slow every member would be evicted in turn (a rebalance storm). Keeping each
    statement (and each lock wait) under a third of the interval leaves room for the
    retry wait and the poll that follow it. With the default interval (300 s) these are
    the plain :data:`CONSUMER_SESSION` values.
    """
    bound_ms = max_poll_interval_ms // 3
    session = dict(CONSUMER_SESSION)
    for name, default_ms in (("lock_timeout", 5_000), ("statement_timeout", 30_000)):
        if bound_ms < default_ms:
            session[name] = f"{bound_ms}ms"
    return session


#: The columns the consumer writes; ``processed_at`` is left to the database default.
WRITE_COLUMNS: tuple[str, ...] = tuple(c.name for c in orders.columns if c.name != "processed_at")
#: How ``jsonb_to_recordset`` reads each column out of the batch's JSON objects. A JSON
#: string goes through the column type's own input function ("61.20" -> numeric).
_RECORD_TYPES: dict[str, str] = {
    "order_id": "text",
    "customer_id": "text",
    "items": "jsonb",
    "total_amount": "numeric",
    "status": "text",
    "created_at": "timestamptz",
}
if tuple(_RECORD_TYPES) != WRITE_COLUMNS:  # pragma: no cover - a guard against schema drift
    raise RuntimeError(f"_RECORD_TYPES must be updated for the columns {WRITE_COLUMNS}")
# One statement with ONE parameter per batch: the orders travel as a single JSON array
# that PostgreSQL unpacks in C. Built from the table's own constants, never from input.
_INSERT_SQL = (
    f"INSERT INTO {orders.name} ({', '.join(WRITE_COLUMNS)})"  # noqa: S608
    f" SELECT {', '.join('o.' + name for name in WRITE_COLUMNS)}"
    " FROM jsonb_to_recordset(%s::jsonb)"
    f" AS o({', '.join(f'{name} {kind}' for name, kind in _RECORD_TYPES.items())})"
    " ON CONFLICT (order_id) DO NOTHING RETURNING order_id"
)
_SELECT_STORED = select(*(orders.c[name] for name in WRITE_COLUMNS)).where(
    orders.c.order_id.in_(bindparam("ids", expanding=True))
)
_BATCH_JSON: TypeAdapter[list[Order]] = TypeAdapter(list[Order])


def batch_json(batch: Sequence[Order]) -> str:
    """The orders as one JSON array of the ``orders`` columns: the insert's only parameter.

    Serialised by the contract itself (pydantic's Rust serialiser: amounts as strings,
    times in ISO 8601), so a row holds exactly what was validated; measured ~4 us per
    order against ~13 us for building one tuple per row and ~16 us more for
    ``execute_values`` to render them into SQL. The text is kept ASCII (non-ASCII is
    escaped), so it survives a connection whatever its client encoding; PostgreSQL
    decodes the escapes into JSONB.
    """
    data = _BATCH_JSON.dump_json(list(batch))
    if data.isascii():
        return data.decode("ascii")
    return json.dumps(json.loads(data), separators=(",", ":"))


class _IsolationNeeded(Exception):
    """A row of the batch was refused: write it again with savepoints, bisecting."""


@dataclass(frozen=True)
class Conflict:
    """An order_id seen again with a different payload. The stored row wins."""

    index: int
    order_id: str
    fields: tuple[str, ...]


@dataclass
class WriteResult:
    """What happened to each order of a batch, by its index in the input."""

    inserted: list[int] = field(default_factory=list)
    duplicates: list[int] = field(default_factory=list)
    conflicts: list[Conflict] = field(default_factory=list)
    rejected: dict[int, str] = field(default_factory=dict)


def dedupe(order_ids: Sequence[str]) -> tuple[list[int], list[int]]:
    """Indexes of first occurrences, and of repeats, of each order_id, in input order.

    The first occurrence wins: it is the one Kafka delivered first, so the one a
    consumer processing one message at a time would have stored.
    """
    seen: set[str] = set()
    firsts: list[int] = []
    repeats: list[int] = []
    for index, order_id in enumerate(order_ids):
        if order_id in seen:
            repeats.append(index)
        else:
            seen.add(order_id)
            firsts.append(index)
    return firsts, repeats


def differing_fields(order: Order, stored: Mapping[str, Any]) -> tuple[str, ...]:
    """The columns in which ``order`` differs from a stored row, compared by value.

    Amounts are compared as decimals and times as instants, so ``"12.5"`` equals
    ``"12.50"`` and ``+00:00`` equals ``Z``: only a real change counts as a conflict.
    """
    mine = order.to_row()
    diff = []
    for name in WRITE_COLUMNS:
        if name == "order_id":
            continue
        if name == "items":
            try:
                theirs = [OrderItem.model_validate(item) for item in stored["items"]]
            except ValueError:
                diff.append(name)
                continue
            if theirs != list(order.items):
                diff.append(name)
        elif mine[name] != stored[name]:
            diff.append(name)
    return tuple(diff)


class OrderWriter:
    """Writes a batch of orders idempotently, in one transaction.

    1. Repeats of an order_id inside the batch are removed (the first one wins).
    2. One ``INSERT ... SELECT ... FROM jsonb_to_recordset(<the batch as one JSON
       array>) ON CONFLICT (order_id) DO NOTHING RETURNING order_id``: one statement,
       one parameter, whatever the batch size.
    3. If PostgreSQL refuses a row (a constraint or data error, SQLSTATE class 22/23),
       that transaction is rolled back and the batch is written again in a new one,
       bisected inside savepoints until the refused rows are isolated; they are
       reported in ``rejected`` and the rest is written.
    4. Orders not inserted and not rejected were already stored: duplicates. Their
       stored rows are read back in the same transaction and compared; a different
       payload is a conflict (the stored row is kept).

    Any other error propagates (the transaction rolls back, nothing is written) for the
    caller to classify as transient or fatal.
    """

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    @staticmethod
    def prepare(batch: Sequence[Order]) -> str:
        """``batch`` as the insert's parameter (:func:`batch_json`), for :meth:`write`.

        The consumer calls it on its own thread while the previous batch is written, so
        the writer thread does not serialise while holding the GIL the loop needs.
        """
        return batch_json(batch)

    def write(self, batch: Sequence[Order], prepared: str | None = None) -> WriteResult:
        """Write ``batch``; ``prepared`` is :meth:`prepare` of exactly this batch, if made."""
        if not batch:
            return WriteResult()
        # Almost every batch is accepted whole, so the first attempt runs without the
        # SAVEPOINT/RELEASE round trips that isolating needs; a refused row aborts that
        # transaction (rolled back, nothing written) and the batch is written again with
        # savepoints, bisecting around the refused rows.
        try:
            return self._write(batch, isolate=False, prepared=prepared)
        except _IsolationNeeded:
            return self._write(batch, isolate=True)

    def _write(
        self, batch: Sequence[Order], *, isolate: bool, prepared: str | None = None
    ) -> WriteResult:
        result = WriteResult()
        with self._engine.begin() as conn:
            todo = list(range(len(batch)))
            while todo:
                first_pos, repeat_pos = dedupe([batch[i].order_id for i in todo])
                firsts = [todo[p] for p in first_pos]
                repeats = [todo[p] for p in repeat_pos]
                # The prepared text holds the whole batch: usable only when that is what
                # goes in (no repeat taken out; a later pass holds repeats only, fewer).
                whole = prepared if len(firsts) == len(batch) else None
                if isolate:
                    inserted, rejected = self._insert_isolating(conn, batch, firsts)
                else:
                    inserted, rejected = self._insert_or_give_up(conn, batch, firsts, whole), {}
                result.inserted.extend(inserted)
                result.rejected.update(rejected)
                written = set(inserted)
                result.duplicates.extend(
                    i for i in firsts if i not in written and i not in rejected
                )
                # A repeat of a refused row may itself be acceptable (a corrected resend):
                # give it its own turn instead of calling it a duplicate of nothing.
                refused_ids = {batch[i].order_id for i in rejected}
                result.duplicates.extend(i for i in repeats if batch[i].order_id not in refused_ids)
                todo = [i for i in repeats if batch[i].order_id in refused_ids]
            if result.duplicates:
                result.conflicts = self._conflicts(conn, batch, result.duplicates)
        result.inserted.sort()
        result.duplicates.sort()
        return result

    def _insert_or_give_up(
        self, conn: Connection, batch: Sequence[Order], indexes: list[int], payload: str | None
    ) -> list[int]:
        try:
            return self._insert(conn, batch, indexes, payload)
        except DBAPIError as exc:
            if _is_row_error(exc):
                raise _IsolationNeeded from exc
            raise

    def _insert_isolating(
        self, conn: Connection, batch: Sequence[Order], indexes: list[int]
    ) -> tuple[list[int], dict[int, str]]:
        """Insert ``indexes``; bisect on a row-level refusal. Returns (inserted, rejected)."""
        if not indexes:
            return [], {}
        try:
            with conn.begin_nested():
                return self._insert(conn, batch, indexes), {}
        except DBAPIError as exc:
            if not _is_row_error(exc):
                raise
            if len(indexes) == 1:
                return [], {indexes[0]: _row_error_reason(exc)}
        middle = len(indexes) // 2
        left_in, left_out = self._insert_isolating(conn, batch, indexes[:middle])
        right_in, right_out = self._insert_isolating(conn, batch, indexes[middle:])
        return left_in + right_in, {**left_out, **right_out}

    @staticmethod
    def _insert(
        conn: Connection, batch: Sequence[Order], indexes: list[int], payload: str | None = None
    ) -> list[int]:
        # On the transaction's own DBAPI connection: one round trip, no SQLAlchemy
        # statement compilation on the hot path.
        dbapi_connection = conn.connection.dbapi_connection
        assert dbapi_connection is not None
        if payload is None:
            payload = batch_json([batch[i] for i in indexes])
        with _as_sqlalchemy_errors(conn), closing(dbapi_connection.cursor()) as cursor:
            cursor.execute(_INSERT_SQL, (payload,))
            new_ids = {row[0] for row in cursor.fetchall()}
        return [i for i in indexes if batch[i].order_id in new_ids]

    @staticmethod
    def _conflicts(
        conn: Connection, batch: Sequence[Order], duplicates: list[int]
    ) -> list[Conflict]:
        ids = sorted({batch[i].order_id for i in duplicates})
        stored = {
            row["order_id"]: row for row in conn.execute(_SELECT_STORED, {"ids": ids}).mappings()
        }
        conflicts = []
        for index in duplicates:
            order = batch[index]
            row = stored.get(order.order_id)
            if row is None:  # stored by a transaction we cannot see yet; nothing to compare
                continue
            fields = differing_fields(order, dict(row))
            if fields:
                conflicts.append(Conflict(index, order.order_id, fields))
        return conflicts


@contextmanager
def _as_sqlalchemy_errors(conn: Connection) -> Iterator[None]:
    """Give a raw-cursor error the treatment SQLAlchemy gives its own statements.

    The error becomes the matching ``sqlalchemy.exc`` class (so one decision table
    covers every statement), and a broken connection is invalidated so the pool never
    hands it out again.
    """
    try:
        yield
    except psycopg2.Error as exc:
        disconnect = conn.dialect.is_disconnect(exc, conn.connection.dbapi_connection, None)
        if disconnect:
            conn.invalidate(exc)
        raise DBAPIError.instance(
            _INSERT_SQL,
            None,
            exc,
            psycopg2.Error,
            hide_parameters=True,
            connection_invalidated=disconnect,
            dialect=conn.dialect,
        ) from exc


def _is_row_error(error: DBAPIError) -> bool:
    """A refusal of the row's *content* (SQLSTATE class 22 data, 23 integrity)."""
    code = getattr(error.orig, "pgcode", None)
    return isinstance(code, str) and code[:2] in ("22", "23")


def _row_error_reason(error: DBAPIError) -> str:
    original = error.orig
    diag = getattr(original, "diag", None)
    primary = getattr(diag, "message_primary", None) or str(original).strip().splitlines()[0]
    constraint = getattr(diag, "constraint_name", None)
    code = getattr(original, "pgcode", None)
    where = f" (constraint {constraint})" if constraint else ""
    return f"PostgreSQL refused the row: {primary}{where} [SQLSTATE {code}]"


def wait_for_database(engine: Engine, timeout_s: float) -> None:
    """Check that the orders table is reachable and readable, retrying until the deadline.

    Raises :class:`DatabaseUnavailable` (exit code 3) with one line naming the cause:
    unreachable, authentication refused, or the table missing.
    """
    deadline = time.monotonic() + timeout_s
    delay = 0.25
    url = redact_url(engine.url)
    while True:
        try:
            with engine.connect() as conn:
                conn.execute(select(orders.c.order_id).limit(0))
            return
        except DBAPIError as exc:
            code = getattr(exc.orig, "pgcode", None)
            first_line = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
            refused = _AUTH_REFUSED.search(str(exc.orig))
            tls_failed = _TLS_FAILED.search(str(exc.orig))
            if refused or tls_failed or time.monotonic() + delay > deadline:
                if code == "42P01":
                    hint = "the orders table is missing; apply src/database/migrations"
                elif code == "42501":
                    hint = "the role may not read orders; apply src/database/app_role.sql"
                elif tls_failed:
                    hint = (
                        "the TLS connection failed; check POSTGRES_SSLMODE and"
                        " POSTGRES_SSLROOTCERT (the CA that signed the server's certificate)"
                    )
                elif "no encryption" in str(exc.orig):
                    hint = "the server accepts TLS connections only; set POSTGRES_SSLMODE"
                elif refused:
                    hint = (
                        "authentication refused; check the user and password"
                        " (DATABASE_URL, or POSTGRES_USER and POSTGRES_PASSWORD)"
                    )
                else:
                    hint = "is PostgreSQL running? check DATABASE_URL / POSTGRES_HOST"
                raise DatabaseUnavailable(
                    f"cannot use PostgreSQL at {url} ({first_line}); {hint}"
                ) from None
        time.sleep(delay)  # start-up retry backoff, bounded by the deadline
        delay = min(delay * 2, 5.0)


_AUTH_REFUSED = re.compile(
    r"password authentication failed|no pg_hba\.conf entry|role \".*\" does not exist"
    r"|database \".*\" does not exist",
    re.IGNORECASE,
)


#: libpq's words for a TLS failure that waiting cannot cure (a refused certificate, a
#: server that does not speak TLS while sslmode requires it, an unreadable key).
_TLS_FAILED = re.compile(
    r"SSL error|certificate verify failed|server does not support SSL|root certificate file"
    r"|server certificate for .* does not match|private key file|certificate file",
    re.IGNORECASE,
)


class DatabaseUnavailable(FatalError):
    """PostgreSQL could not be used at start-up; ``str()`` is one line."""
