"""Fresh databases and topics for every measurement, and nothing left behind.

Every scenario writes into a database of its own, created from a template that holds
``src/database/init.sql`` (the very DDL production uses: the primary key, the CHECK and
both secondary indexes) and the least-privilege grants of the application role. So each
measurement starts from the same empty table, and the consumer runs with the rights it
has in production. The owner URL (``DATABASE_ADMIN_URL``) is used only to create and
drop these databases and to read results back.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Iterator
from contextlib import closing, contextmanager
from typing import Any, Literal

import psycopg2
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient
from psycopg2 import sql
from sqlalchemy.engine import URL

from foodpipe.db import init_sql
from foodpipe.kafka import TopicSpec, ensure_topics


def connect(url: URL, *, autocommit: bool = False) -> Any:
    """A plain psycopg2 connection (the ceilings measure the driver, not a pool).

    The URL's query (sslmode, sslrootcert, sslcert, sslkey: Settings puts the
    POSTGRES_SSL* settings there) goes to libpq as connection parameters.
    """
    libpq = {key: value for key, value in url.query.items() if isinstance(value, str)}
    conn = psycopg2.connect(
        host=url.host,
        port=url.port or 5432,
        user=url.username,
        password=url.password,
        dbname=url.database,
        connect_timeout=10,
        application_name="foodpipe-bench",
        **libpq,
    )
    conn.autocommit = autocommit
    return conn


class ScratchDatabases:
    """Creates ``<prefix>_<name>`` databases from one template; drops them all on close."""

    def __init__(self, admin_url: URL, app_url: URL, prefix: str | None = None) -> None:
        self.admin_url = admin_url
        self.app_url = app_url
        self.prefix = prefix or f"fpbench_{uuid.uuid4().hex[:8]}"
        self.template = f"{self.prefix}_template"
        self._created: list[str] = []

    def _admin(self) -> Any:
        return closing(connect(self.admin_url, autocommit=True))

    def setup(self) -> None:
        """Create the template: the schema and the application role's grants."""
        with self._admin() as conn, conn.cursor() as cur:
            cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(self.template)))
        self._created.append(self.template)
        with closing(connect(self.admin_url.set(database=self.template))) as conn:
            with conn.cursor() as cur:
                cur.execute(init_sql())
                if self.app_url.username and self.app_url.username != self.admin_url.username:
                    cur.execute(
                        sql.SQL("GRANT SELECT, INSERT ON orders TO {}").format(
                            sql.Identifier(self.app_url.username)
                        )
                    )
            conn.commit()

    def create(self, name: str) -> URL:
        """A fresh database with an empty ``orders`` table; returns its app-role URL."""
        database = f"{self.prefix}_{name}"
        with self._admin() as conn, conn.cursor() as cur:
            cur.execute(
                sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                    sql.Identifier(database), sql.Identifier(self.template)
                )
            )
        self._created.append(database)
        return self.app_url.set(database=database)

    def admin_for(self, app_url: URL) -> URL:
        return self.admin_url.set(database=app_url.database)

    def drop(self, url: URL) -> None:
        database = url.database
        if database not in self._created:
            return
        with self._admin() as conn, conn.cursor() as cur:
            cur.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(database))
            )
        self._created.remove(database)

    def close(self) -> None:
        """Drop every database this object created, the template last."""
        for database in [d for d in self._created if d != self.template] + [
            d for d in self._created if d == self.template
        ]:
            self.drop(self.admin_url.set(database=database))


def grant(admin_url: URL, privilege: Literal["UPDATE"], role: str | None) -> None:
    """``GRANT privilege ON orders TO role`` in ``admin_url``'s database (no-op for no role)."""
    if not role or role == admin_url.username:
        return
    with closing(connect(admin_url, autocommit=True)) as conn, conn.cursor() as cur:
        cur.execute(
            sql.SQL("GRANT {} ON orders TO {}").format(sql.SQL(privilege), sql.Identifier(role))
        )


@contextmanager
def scratch_databases(admin_url: URL, app_url: URL) -> Iterator[ScratchDatabases]:
    dbs = ScratchDatabases(admin_url, app_url)
    try:
        dbs.setup()
        yield dbs
    finally:
        dbs.close()


class ScratchTopics:
    """Creates uniquely named topics; deletes them all on close."""

    def __init__(self, admin: AdminClient, prefix: str, partitions: int) -> None:
        self.admin = admin
        self.prefix = prefix
        self.partitions = partitions
        self._created: list[str] = []

    def create(self, name: str) -> str:
        topic = f"{self.prefix}-{name}"
        # One hour of retention: a bench that is interrupted leaves nothing for long.
        spec = TopicSpec(topic, self.partitions, 1, {"retention.ms": str(3_600_000)})
        ensure_topics(self.admin, [spec])
        self._created.append(topic)
        self._wait_visible(topic)
        return topic

    def _wait_visible(self, topic: str, timeout_s: float = 30.0) -> None:
        """Wait until every partition has a leader, so the first produce does not stall."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            metadata = self.admin.list_topics(topic, timeout=10).topics.get(topic)
            if (
                metadata is not None
                and metadata.error is None
                and len(metadata.partitions) == self.partitions
                and all(p.leader >= 0 for p in metadata.partitions.values())
            ):
                return
            time.sleep(0.1)  # poll interval of a deadline loop
        raise TimeoutError(f"topic {topic} has no leader for every partition after {timeout_s}s")

    def close(self) -> None:
        if not self._created:
            return
        futures = self.admin.delete_topics(self._created, operation_timeout=30)
        for future in futures.values():
            with contextlib.suppress(KafkaException):  # already gone: nothing to clean up
                future.result(timeout=60)
        self._created.clear()
