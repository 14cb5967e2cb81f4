"""The consumer against real Kafka and PostgreSQL: exactly once in effect, nothing lost."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from sqlalchemy import text

from foodpipe.consumer.app import ConsumerApp
from foodpipe.consumer.service import ConsumerService
from tests.conftest import Pipeline
from tests.poison import produce_records, record, valid_order
from tests.support import group_lag, wait_until


@contextmanager
def running_consumer(pipe: Pipeline, **overrides: object) -> Iterator[ConsumerApp]:
    """Run the consumer in a background thread; stop it (and check it stopped) on exit."""
    settings = pipe.settings.model_copy(update=overrides) if overrides else pipe.settings
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
    try:
        yield app
    finally:
        app.request_stop()
        thread.join(timeout=30)
        assert not thread.is_alive(), "the consumer did not stop within 30s"
    assert not errors, errors


def service_of(app: ConsumerApp) -> ConsumerService:
    assert app.service is not None
    return app.service


def test_500_valid_orders_become_500_rows_and_lag_0_and_replay_changes_nothing(
    make_pipeline: Callable[..., Pipeline],
) -> None:
    pipe = make_pipeline()
    orders = [valid_order(n) for n in range(1, 501)]
    produce_records(pipe.bootstrap, pipe.topic, [record(o) for o in orders])

    with running_consumer(pipe) as app:
        wait_until(lambda: pipe.row_count() == 500, timeout=60, message="500 rows")
        wait_until(
            lambda: group_lag(pipe.bootstrap, pipe.group, pipe.topic) == 0,
            timeout=30,
            message="lag 0",
        )
        stats = service_of(app).stats
        assert stats.written == 500
        assert stats.dead_lettered == 0
    assert sorted(pipe.order_ids()) == sorted(o.order_id for o in orders)

    # Replay everything with a brand-new group: every message is a duplicate now.
    replay = pipe.settings.model_copy(update={"kafka_consumer_group": pipe.group + "-replay"})
    with running_consumer(pipe, kafka_consumer_group=replay.kafka_consumer_group) as app:
        wait_until(
            lambda: service_of(app).stats.duplicates == 500,
            timeout=60,
            message=lambda: f"500 duplicates (got {service_of(app).stats.duplicates})",
        )
        assert service_of(app).stats.written == 0
        assert service_of(app).stats.conflicts == 0
    assert pipe.row_count() == 500
    with pipe.admin_engine.connect() as conn:
        dupes = conn.execute(
            text("SELECT order_id FROM orders GROUP BY order_id HAVING count(*) > 1")
        ).all()
    assert dupes == []
