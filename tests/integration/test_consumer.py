"""The consumer against real Kafka and PostgreSQL: exactly once in effect, nothing lost.

In-process runs (a thread with a stop flag) where only the data matters; real
``foodpipe consume`` subprocesses where process behaviour matters (signals, exit codes,
two members of one group, a database restart).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka.admin import AdminClient
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url

from foodpipe.consumer.app import ConsumerApp
from foodpipe.consumer.dlq import header_map
from foodpipe.consumer.service import ConsumerService
from foodpipe.log import configure_logging
from foodpipe.models import Order, OrderItem
from tests.conftest import Pipeline, Stack
from tests.poison import HOSTILE_VALID, POISON, produce_records, record, valid_order
from tests.support import (
    committed_offsets,
    consume_all,
    group_lag,
    run_foodpipe,
    spawn_foodpipe,
    stop_process,
    wait_until,
)


@contextmanager
def running_consumer(pipe: Pipeline, **overrides: Any) -> Iterator[ConsumerService]:
    """Run the consumer in a background thread; stop it (and check it stopped) on exit."""
    settings = pipe.settings.model_copy(update=overrides) if overrides else pipe.settings
    configure_logging("INFO", "json")  # as the service runs: no per-order DEBUG lines
    app = ConsumerApp(settings, wait_s=30)
    errors: list[BaseException] = []
    ready = threading.Event()

    def target() -> None:
        try:
            app.run(on_ready=lambda _service: ready.set())
        except BaseException as exc:
            errors.append(exc)
            ready.set()

    thread = threading.Thread(target=target, name="consumer", daemon=True)
    thread.start()
    wait_until(ready.is_set, timeout=60, message="the consumer to start")
    assert not errors, errors
    assert app.service is not None
    try:
        yield app.service
    finally:
        app.request_stop()
        thread.join(timeout=30)
        assert not thread.is_alive(), "the consumer did not stop within 30s"
    assert not errors, errors


def duplicate_rows(pipe: Pipeline) -> list[Any]:
    with pipe.admin_engine.connect() as conn:
        return list(
            conn.execute(text("SELECT order_id FROM orders GROUP BY order_id HAVING count(*) > 1"))
        )


def stored_orders(pipe: Pipeline) -> dict[str, dict[str, Any]]:
    with pipe.admin_engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT order_id, customer_id, items, total_amount, status, created_at,"
                " processed_at FROM orders"
            )
        ).mappings()
        return {row["order_id"]: dict(row) for row in rows}


def assert_stored_exactly(pipe: Pipeline, orders: list[Order]) -> None:
    """The table holds these orders, once each, with exactly their content."""
    stored = stored_orders(pipe)
    assert set(stored) == {o.order_id for o in orders}
    assert duplicate_rows(pipe) == []
    for order in orders:
        row = stored[order.order_id]
        assert row["customer_id"] == order.customer_id
        assert [OrderItem.model_validate(item) for item in row["items"]] == list(order.items)
        assert [item["name"] for item in row["items"]] == [item.name for item in order.items]
        assert row["total_amount"] == order.total_amount
        assert row["status"] == order.status.value
        assert row["created_at"] == order.created_at
        assert row["processed_at"] is not None


def wait_lag_zero(pipe: Pipeline, group: str | None = None, timeout: float = 30) -> None:
    wait_until(
        lambda: group_lag(pipe.bootstrap, group or pipe.group, pipe.topic) == 0,
        timeout=timeout,
        message="consumer group lag 0",
    )


def log_events(path: Path) -> list[dict[str, Any]]:
    events = []
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            try:
                events.append(json.loads(line))
            except ValueError:
                continue
    return events


# ----------------------------------------------------------------------------- happy path


def test_500_valid_orders_become_500_rows_and_lag_0_and_replay_changes_nothing(
    pipeline: Pipeline,
) -> None:
    orders = [valid_order(n) for n in range(1, 501)]
    produce_records(pipeline.bootstrap, pipeline.topic, [record(o) for o in orders])

    with running_consumer(pipeline) as service:
        wait_until(lambda: pipeline.row_count() == 500, timeout=60, message="500 rows")
        wait_lag_zero(pipeline)
        assert service.stats.written == 500
        assert service.stats.dead_lettered == 0
    assert_stored_exactly(pipeline, orders)

    # Replay everything with a brand-new group: every message is a duplicate now.
    replay_group = pipeline.group + "-replay"
    with running_consumer(pipeline, kafka_consumer_group=replay_group) as service:
        wait_until(
            lambda: service.stats.duplicates == 500,
            timeout=60,
            message=lambda: f"500 duplicates (got {service.stats.duplicates})",
        )
        wait_lag_zero(pipeline, replay_group)
        assert service.stats.written == 0
        assert service.stats.conflicts == 0
    assert pipeline.row_count() == 500
    assert duplicate_rows(pipeline) == []


# ----------------------------------------------------------------------------- poison


def test_poison_corpus_interleaved_with_valid_orders(pipeline: Pipeline) -> None:
    valid = [valid_order(n) for n in range(1, 201)] + HOSTILE_VALID
    records: list[tuple[bytes | None, bytes | None]] = []
    expected_poison: list[tuple[bytes | None, bytes | None, str]] = []
    for index, order in enumerate(valid):
        records.append(record(order))
        if index < len(POISON):
            case = POISON[index]
            records.append((case.key, case.value))
            expected_poison.append((case.key, case.value, case.error_class))
    positions = produce_records(pipeline.bootstrap, pipeline.topic, records)

    with running_consumer(pipeline) as service:
        wait_until(
            lambda: service.stats.dead_lettered == len(POISON),
            timeout=60,
            message=lambda: f"{len(POISON)} dead letters (got {service.stats.dead_lettered})",
        )
        wait_until(lambda: pipeline.row_count() == len(valid), timeout=30, message="valid rows")
        wait_lag_zero(pipeline)
        assert service.stats.written == len(valid)

    assert_stored_exactly(pipeline, valid)

    dead = consume_all(pipeline.bootstrap, pipeline.dlq_topic, len(POISON), timeout=60)
    assert len(dead) == len(POISON)
    by_offset = {
        (partition, offset): (key, value)
        for (key, value), (partition, offset) in zip(records, positions, strict=True)
    }
    seen_classes = []
    for message in dead:
        headers = header_map(message.headers())
        original = (int(headers["dlq-original-partition"]), int(headers["dlq-original-offset"]))
        assert headers["dlq-original-topic"] == pipeline.topic
        assert headers["dlq-consumer-group"] == pipeline.group
        assert headers["dlq-reason"], "every dead letter says why"
        key, value = by_offset[original]
        # byte for byte the original message, key and value
        assert message.key() == key
        assert (message.value() or b"") == (value or b"")
        assert dict(message.headers() or [])["schema-version"] == b"1"  # original headers kept
        seen_classes.append((key, value, headers["dlq-error-class"]))
    assert sorted(seen_classes, key=repr) == sorted(expected_poison, key=repr)


def test_a_row_the_database_refuses_is_dead_lettered_and_the_batch_written(
    pipeline: Pipeline,
) -> None:
    # A stricter rule than the contract, added to this test's own database only.
    with create_engine(pipeline.db_admin_url).begin() as conn:
        conn.execute(
            text(
                "ALTER TABLE orders ADD CONSTRAINT no_customer_13"
                " CHECK (customer_id <> 'CUST-00013')"
            )
        )
    orders = [valid_order(n) for n in range(1, 301)]  # n % 100 == 12 -> CUST-00013
    refused = [o for o in orders if o.customer_id == "CUST-00013"]
    assert len(refused) == 3
    produce_records(pipeline.bootstrap, pipeline.topic, [record(o) for o in orders])

    with running_consumer(pipeline) as service:
        wait_until(lambda: service.stats.dead_lettered == 3, timeout=60, message="3 refusals")
        wait_lag_zero(pipeline)
        assert service.stats.written == 297
        assert service.stats.dead_lettered_by_class == {"db_constraint": 3}

    assert_stored_exactly(pipeline, [o for o in orders if o not in refused])
    dead = consume_all(pipeline.bootstrap, pipeline.dlq_topic, 3)
    assert sorted(Order.model_validate_json(m.value() or b"").order_id for m in dead) == sorted(
        o.order_id for o in refused
    )
    for message in dead:
        headers = header_map(message.headers())
        assert headers["dlq-error-class"] == "db_constraint"
        assert "no_customer_13" in headers["dlq-reason"]


def test_same_order_id_with_another_payload_keeps_the_first_and_counts_a_conflict(
    pipeline: Pipeline, capsys: pytest.CaptureFixture[str]
) -> None:
    first = valid_order(7)
    changed = Order.model_validate({**first.model_dump(mode="json"), "status": "cancelled"})
    same_again = valid_order(7)
    produce_records(
        pipeline.bootstrap,
        pipeline.topic,
        [record(first), record(valid_order(8)), record(changed), record(same_again)],
    )
    with running_consumer(pipeline) as service:
        wait_until(lambda: service.stats.duplicates == 2, timeout=60, message="2 duplicates")
        wait_lag_zero(pipeline)
        assert service.stats.conflicts == 1
        assert service.stats.written == 2
    assert_stored_exactly(pipeline, [first, valid_order(8)])
    out = capsys.readouterr().out
    assert "conflict" in out
    assert first.order_id in out


# ----------------------------------------------------------------------------- transient DB trouble


def _database_name(pipe: Pipeline) -> str:
    name = make_url(pipe.db_admin_url).database
    assert name
    return name


def test_database_refusing_connections_pauses_then_catches_up_without_loss(
    pipeline: Pipeline, admin_engine: Engine
) -> None:
    """A per-test outage: this database stops accepting connections, then comes back."""
    db = _database_name(pipeline)
    first = [valid_order(n) for n in range(1, 301)]
    second = [valid_order(n) for n in range(301, 601)]
    produce_records(pipeline.bootstrap, pipeline.topic, [record(o) for o in first])
    with running_consumer(pipeline) as service:
        wait_until(lambda: pipeline.row_count() == 300, timeout=60, message="300 rows")
        wait_lag_zero(pipeline)
        with admin_engine.connect() as conn:
            conn.execute(text(f'ALTER DATABASE "{db}" ALLOW_CONNECTIONS false'))
            conn.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE datname = :db AND pid <> pg_backend_pid()"
                ),
                {"db": db},
            )
        try:
            produce_records(pipeline.bootstrap, pipeline.topic, [record(o) for o in second])
            wait_until(lambda: service.stats.db_retries >= 3, timeout=60, message="3 retries")
            # Nothing of the unwritten batch is committed while the database is away.
            committed = committed_offsets(pipeline.bootstrap, pipeline.group, pipeline.topic)
            assert sum(max(o, 0) for o in committed.values()) == 300
            assert service.stats.written == 300
        finally:
            with admin_engine.connect() as conn:
                conn.execute(text(f'ALTER DATABASE "{db}" ALLOW_CONNECTIONS true'))
        wait_until(lambda: service.stats.written == 600, timeout=90, message="600 written")
        wait_lag_zero(pipeline)
    pipeline.admin_engine.dispose()  # its pooled connections were terminated above
    assert_stored_exactly(pipeline, first + second)


def test_a_held_table_lock_times_out_and_is_retried(pipeline: Pipeline) -> None:
    orders = [valid_order(n) for n in range(1, 101)]
    locker = create_engine(pipeline.db_admin_url)
    with running_consumer(pipeline) as service, locker.connect() as conn:
        transaction = conn.begin()
        conn.execute(text("LOCK TABLE orders IN ACCESS EXCLUSIVE MODE"))
        try:
            produce_records(pipeline.bootstrap, pipeline.topic, [record(o) for o in orders])
            # lock_timeout (5 s) turns the wait into a retryable error instead of a hang
            wait_until(lambda: service.stats.db_retries >= 1, timeout=30, message="a retry")
            assert service.stats.written == 0
        finally:
            transaction.rollback()
        wait_until(lambda: service.stats.written == 100, timeout=60, message="100 written")
        wait_lag_zero(pipeline)
    locker.dispose()
    assert_stored_exactly(pipeline, orders)


@pytest.mark.fault
@pytest.mark.slow
def test_postgresql_stopped_mid_stream_and_restarted(
    stack: Stack, pipeline: Pipeline, log_dir: Path
) -> None:
    orders = [valid_order(n) for n in range(1, 4001)]
    log = log_dir / "consumer.log"
    proc = spawn_foodpipe(["consume"], pipeline.env, log)
    try:
        produce_records(pipeline.bootstrap, pipeline.topic, [record(o) for o in orders[:2000]])
        wait_until(lambda: pipeline.row_count() == 2000, timeout=60, message="2000 rows")
        stack.pg_stop()
        try:
            produce_records(pipeline.bootstrap, pipeline.topic, [record(o) for o in orders[2000:]])
            wait_until(
                lambda: (
                    sum(
                        e.get("event", "").startswith("database write failed")
                        for e in log_events(log)
                    )
                    >= 3
                ),
                timeout=60,
                message="the consumer to retry with backoff",
            )
            committed = committed_offsets(pipeline.bootstrap, pipeline.group, pipeline.topic)
            assert sum(max(o, 0) for o in committed.values()) == 2000, "no commit while down"
            assert proc.poll() is None, "the consumer must not exit while PostgreSQL is down"
        finally:
            stack.pg_start()
        pipeline.admin_engine.dispose()
        wait_until(lambda: pipeline.row_count() == 4000, timeout=120, message="4000 rows")
        wait_lag_zero(pipeline)
        assert proc.poll() is None, "the consumer must still be running"
    finally:
        code = stop_process(proc)
    assert code == 0, log.read_text()[-3000:]
    assert_stored_exactly(pipeline, orders)
    retries = [e for e in log_events(log) if e.get("event", "").startswith("database write")]
    delays = [e["retry_in_s"] for e in retries]
    assert delays[1] > delays[0], "backoff grows"
    assert max(delays) <= 30


# ----------------------------------------------------------------------------- processes


def group_assignment(bootstrap: str, group: str) -> dict[str, set[int]]:
    """member id -> partitions it owns, as the group coordinator reports it."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    description = admin.describe_consumer_groups([group])[group].result(timeout=10)
    return {
        member.member_id: {tp.partition for tp in member.assignment.topic_partitions}
        for member in description.members
    }


def test_two_consumer_processes_split_the_partitions_and_write_everything_once(
    pipeline: Pipeline, log_dir: Path
) -> None:
    logs = [log_dir / "c1.log", log_dir / "c2.log"]
    procs = [spawn_foodpipe(["consume"], pipeline.env, path) for path in logs]
    try:

        def split() -> dict[str, set[int]] | None:
            members = group_assignment(pipeline.bootstrap, pipeline.group)
            owned = [p for parts in members.values() for p in parts]
            stable = len(members) == 2 and sorted(owned) == [0, 1, 2]
            return members if stable and all(members.values()) else None

        members = wait_until(split, timeout=90, message="two members splitting 3 partitions")
        orders = [valid_order(n) for n in range(1, 3001)]
        produce_records(pipeline.bootstrap, pipeline.topic, [record(o) for o in orders])
        wait_until(lambda: pipeline.row_count() == 3000, timeout=90, message="3000 rows")
        wait_lag_zero(pipeline)
        assert group_assignment(pipeline.bootstrap, pipeline.group) == members
    finally:
        codes = [stop_process(p) for p in procs]
    assert codes == [0, 0], [path.read_text()[-2000:] for path in logs]
    assert_stored_exactly(pipeline, orders)

    # Each member logged the partitions it owned; together they wrote everything once.
    written = []
    for path in logs:
        events = log_events(path)
        owned = [e for e in events if e.get("event", "").startswith("partitions assigned")]
        assert owned, f"{path.name} logged no assignment"
        (closed,) = [e for e in events if e.get("event") == "consumer closed"]
        written.append(closed["written"])
    assert sum(written) == 3000
    assert all(count > 0 for count in written), written


def test_sigterm_mid_stream_exits_0_quickly_and_a_restart_finishes(
    pipeline: Pipeline, log_dir: Path
) -> None:
    orders = [valid_order(n) for n in range(1, 30001)]
    produce_records(pipeline.bootstrap, pipeline.topic, [record(o) for o in orders])
    env = {**pipeline.env, "BATCH_SIZE": "200"}
    log = log_dir / "first.log"
    proc = spawn_foodpipe(["consume"], env, log)
    try:
        wait_until(lambda: pipeline.row_count() >= 1000, timeout=60, message="1000 rows")
    finally:
        sent = time.monotonic()
        code = stop_process(proc, timeout=20)
        took = time.monotonic() - sent
    assert code == 0, log.read_text()[-3000:]
    assert took < 10, f"SIGTERM took {took:.1f}s"
    rows = pipeline.row_count()
    assert rows < 30000, "stopped mid-stream"
    # Every committed offset is backed by a row: committed <= written, nothing lost.
    committed = committed_offsets(pipeline.bootstrap, pipeline.group, pipeline.topic)
    assert 0 < sum(max(o, 0) for o in committed.values()) <= rows
    events = log_events(log)
    assert any(e.get("event") == "consumer closed" for e in events)

    restart_log = log_dir / "second.log"
    proc = spawn_foodpipe(["consume"], env, restart_log)
    try:
        wait_until(lambda: pipeline.row_count() == 30000, timeout=120, message="30000 rows")
        wait_lag_zero(pipeline)
    finally:
        assert stop_process(proc) == 0, restart_log.read_text()[-3000:]
    assert duplicate_rows(pipeline) == []
    assert set(pipeline.order_ids()) == {o.order_id for o in orders}


# ----------------------------------------------------------------------------- start-up errors


def test_unreachable_broker_exits_3_with_one_line(pipeline: Pipeline) -> None:
    env = {**pipeline.env, "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9"}
    started = time.monotonic()
    result = run_foodpipe(["consume", "--wait", "2"], env, timeout=60)
    assert result.returncode == 3
    assert time.monotonic() - started < 30
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "cannot reach Kafka at 127.0.0.1:9" in lines[0]
    assert "Traceback" not in result.stderr + result.stdout


def test_unreachable_database_exits_3_with_one_line(pipeline: Pipeline) -> None:
    url = make_url(pipeline.settings.sqlalchemy_url()).set(port=9)
    env = {**pipeline.env, "DATABASE_URL": url.render_as_string(hide_password=False)}
    result = run_foodpipe(["consume", "--wait", "2"], env, timeout=60)
    assert result.returncode == 3, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "cannot use PostgreSQL" in lines[0]
    assert "is PostgreSQL running?" in lines[0]
    assert str(url.password) not in result.stderr + result.stdout


def test_wrong_database_password_exits_3_at_once(pipeline: Pipeline) -> None:
    url = make_url(pipeline.settings.sqlalchemy_url()).set(password="wrong-password")
    env = {**pipeline.env, "DATABASE_URL": url.render_as_string(hide_password=False)}
    started = time.monotonic()
    result = run_foodpipe(["consume", "--wait", "20"], env, timeout=60)
    assert result.returncode == 3
    assert time.monotonic() - started < 15, "an authentication failure is not retried"
    assert "authentication refused" in result.stderr
    assert "wrong-password" not in result.stderr + result.stdout


def test_missing_topic_exits_3_naming_the_fix(pipeline: Pipeline) -> None:
    env = {**pipeline.env, "KAFKA_TOPIC": pipeline.topic + "-missing"}
    result = run_foodpipe(["consume", "--wait", "1"], env, timeout=60)
    assert result.returncode == 3
    assert "does not exist" in result.stderr
    assert "foodpipe topics" in result.stderr


def test_missing_table_exits_3_naming_the_fix(pipeline: Pipeline) -> None:
    with create_engine(pipeline.db_admin_url).begin() as conn:
        conn.execute(text("DROP TABLE orders"))
    result = run_foodpipe(["consume", "--wait", "1"], pipeline.env, timeout=60)
    assert result.returncode == 3
    assert "orders table is missing" in result.stderr


def test_exits_promptly_when_stopped_before_anything_arrives(
    pipeline: Pipeline, log_dir: Path
) -> None:
    log = log_dir / "idle.log"
    proc = spawn_foodpipe(["consume"], pipeline.env, log)
    try:
        wait_until(
            lambda: any(
                e.get("event", "").startswith("partitions assigned") for e in log_events(log)
            ),
            timeout=60,
            message="an assignment",
        )
    finally:
        started = time.monotonic()
        code = stop_process(proc)
    assert code == 0
    assert time.monotonic() - started < 5
