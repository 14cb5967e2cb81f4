"""A network-fault case: the fault suite's :class:`~tests.fault.harness.Fault`, with the
producer and the consumers running as the product's containers.

Ground truth and the final check are the fault suite's own: the acknowledged set from
the producer's ``order delivered`` lines (its container's log at DEBUG), the poison it
was sent, the committed offsets sampled every 0.25 s, then ``check_invariants`` and
``foodpipe audit``. The test's own clients reach Kafka and PostgreSQL through the
published ports, which no fault touches.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from confluent_kafka.admin import AdminClient
from sqlalchemy import create_engine, text

from foodpipe.kafka import admin_config, ensure_topics, topic_specs, wait_for_broker
from foodpipe.settings import load_settings
from tests.conftest import Pipeline, Stack
from tests.docker.harness import inspect, run
from tests.fault.harness import CaseResult, Fault, Proc
from tests.fault.network.topology import Topology
from tests.poison import POISON, record, valid_order
from tests.support import wait_until


@dataclass
class ContainerService:
    """A ``foodpipe`` service container, seen the way the fault harness sees a process.

    Its JSON log lines are read from the engine's log file, incrementally: the
    producer's DEBUG lines (one per acknowledged order) are read once, not per poll.
    """

    role: str
    cid: str
    _log_file: Path | None = None
    _offset: int = 0
    _events: list[dict[str, Any]] = field(default_factory=list)
    _lines: list[str] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return int(inspect(self.cid)["State"]["Pid"])

    @property
    def name(self) -> str:
        return str(inspect(self.cid)["Name"]).lstrip("/")

    def state(self) -> dict[str, Any]:
        return dict(inspect(self.cid)["State"])

    def restarts(self) -> int:
        return int(inspect(self.cid)["RestartCount"])

    def alive(self) -> bool:
        return bool(self.state()["Running"])

    def _read(self) -> None:
        if self._log_file is None:
            self._log_file = Path(inspect(self.cid)["LogPath"])
        try:
            with self._log_file.open("rb") as handle:
                handle.seek(self._offset)
                chunk = handle.read()
        except FileNotFoundError:
            return
        complete = chunk[: chunk.rfind(b"\n") + 1]
        self._offset += len(complete)
        for raw in complete.splitlines():
            try:
                line = str(json.loads(raw)["log"]).rstrip("\n")
            except (ValueError, KeyError):
                continue
            self._lines.append(line)
            if line.startswith("{"):
                try:
                    self._events.append(json.loads(line))
                except ValueError:
                    continue

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        self._read()
        return (
            list(self._events)
            if name is None
            else [e for e in self._events if e.get("event") == name]
        )

    def events_starting(self, prefix: str | tuple[str, ...]) -> list[dict[str, Any]]:
        return [e for e in self.events() if str(e.get("event", "")).startswith(prefix)]

    def tail(self, lines: int = 15) -> str:
        self._read()
        return "\n".join(self._lines[-lines:]) or "(no log)"

    def terminate(self, timeout: float = 30.0) -> tuple[int, float]:
        """``docker stop``: SIGTERM through tini, SIGKILL after ``timeout``."""
        started = time.monotonic()
        run(["docker", "stop", "-t", str(int(timeout)), self.cid], timeout=timeout + 60)
        elapsed = time.monotonic() - started
        code = int(self.state()["ExitCode"])
        assert elapsed < timeout, f"{self.role} did not stop within {timeout}s:\n{self.tail()}"
        return code, elapsed

    def wait(self, timeout: float) -> int:
        wait_until(
            lambda: not self.alive(),
            timeout=timeout,
            interval=0.5,
            message=lambda: f"{self.role} to exit:\n{self.tail()}",
        )
        return int(self.state()["ExitCode"])

    def stacks(self) -> str:
        return ""

    def cleanup(self) -> None:
        if self.alive():
            run(["docker", "kill", self.cid], check=False)


def owned(consumer: Proc) -> set[int]:
    """The partitions ``consumer`` owns now, from its own assignment log lines."""
    events = consumer.events_starting(
        ("partitions assigned", "partitions revoked", "partitions lost")
    )
    if not events:
        return set()
    return {int(name.rsplit("[", 1)[1].rstrip("]")) for name in events[-1].get("owned", [])}


#: One row per case of the report's table, in the order the cases ran.
ROWS: list[dict[str, Any]] = []


class NetworkCase(Fault):
    """One case on the shared topology: its own topic, DLQ topic, group and table state."""

    def __init__(
        self,
        topology: Topology,
        *,
        case: str,
        title: str,
        test: str,
        log_dir: Path,
        results: list[CaseResult],
    ) -> None:
        self.topology = topology
        self.test = test
        suffix = uuid.uuid4().hex[:6]
        values: dict[str, Any] = {
            "kafka_bootstrap_servers": topology.host_bootstrap,
            "kafka_topic": f"net-{case}-{suffix}",
            "kafka_dlq_topic": f"net-{case}-{suffix}.dlq",
            "kafka_consumer_group": f"net-{case}-{suffix}",
            "kafka_replication_factor": 3,
            "database_url": topology.admin_url,
            "log_format": "json",
        }
        settings = load_settings(_env_file=None, **values)
        admin = AdminClient(admin_config(settings))
        wait_for_broker(admin, settings, 60)
        ensure_topics(admin, topic_specs(settings))
        admin_engine = create_engine(topology.admin_url, pool_pre_ping=True)
        with admin_engine.begin() as conn:
            # One database for every case (the containers' own): the table and the
            # write log the redeliveries are counted from start empty for each.
            conn.execute(text("TRUNCATE orders"))
            conn.execute(text("DROP TABLE IF EXISTS fault_write_log"))
        pipeline = Pipeline(
            settings=settings,
            env={},
            db_admin_url=topology.admin_url,
            engine=admin_engine,
            admin_engine=admin_engine,
        )
        stack = Stack(topology.host_bootstrap, topology.admin_url, "docker")
        super().__init__(
            case=case,
            title=title,
            pipeline=pipeline,
            stack=stack,
            log_dir=log_dir,
            results=results,
            fast_session=False,
        )
        self._assignments_before = 0
        self.rebalances_seen = 0

    # ------------------------------------------------------------------ services
    def start_services(self, rate: float, consumers: int = 2) -> None:
        """The product's producer and ``consumers`` consumer replicas, on this case's
        topic and group (recreated: the previous case's containers are replaced)."""
        pipe = self.pipeline
        self.topology.checkout.compose(
            "up",
            "-d",
            "--no-deps",
            "--force-recreate",
            "--scale",
            f"consumer={consumers}",
            "producer",
            "consumer",
            KAFKA_TOPIC=pipe.topic,
            KAFKA_DLQ_TOPIC=pipe.dlq_topic,
            KAFKA_CONSUMER_GROUP=pipe.group,
            ORDER_RATE=str(rate),
        )
        self.producers.append(ContainerService("producer", self.topology.container("producer")))
        for index in range(1, consumers + 1):
            self.consumers.append(
                ContainerService(f"consumer_{index}", self.topology.container("consumer", index))
            )
        # Settled: every replica owns partitions and together they own all of them (a
        # cooperative rebalance first hands everything to one member, then moves some).
        partitions = set(range(self.pipeline.settings.kafka_topic_partitions))
        wait_until(
            lambda: (
                all(owned(c) for c in self.consumers)
                and set().union(*(owned(c) for c in self.consumers)) == partitions
            ),
            timeout=120,
            interval=0.5,
            message=lambda: (
                "every consumer to own partitions:\n" + "\n".join(c.tail(3) for c in self.consumers)
            ),
        )

    def begin(self, first_poison: int, rate: float = 200) -> None:
        """Every case's start: the services at ``rate``, a few poison messages among
        valid orders, and 400 acknowledged orders before any fault."""
        self.start_services(rate=rate)
        self.inject_poison(first=first_poison)
        self.wait_acked(400)

    def consumer(self, index: int) -> ContainerService:
        service = self.consumers[index - 1]
        assert isinstance(service, ContainerService)
        return service

    def producer(self) -> ContainerService:
        service = self.producers[0]
        assert isinstance(service, ContainerService)
        return service

    def inject_poison(self, first: int, count: int = 4) -> None:
        """``count`` poison messages, each between two valid orders, on every partition's
        way (keys vary): the DLQ must hold exactly these, whatever the network did."""
        items: list[tuple[bytes | None, bytes | None, str | None]] = []
        for n, case in enumerate(POISON[:count], start=first):
            key, value = record(valid_order(n))
            items.append((key, value, None))
            items.append((case.key, case.value, case.error_class))
        self.inject(items)

    def fault_starts(self) -> None:
        """Both consumers settled: rebalances are counted from here on."""
        self._assignments_before = self._assignments()

    def _assignments(self) -> int:
        return sum(
            len(c.events_starting(("partitions assigned", "partitions revoked", "partitions lost")))
            for c in self.consumers
        )

    def rebalances(self) -> int:
        """Assignment changes (assigned, revoked, lost) any consumer logged since the
        fault began: a quiet group logs none."""
        return self._assignments() - self._assignments_before

    def stop_consumers(self, timeout: float = 30) -> None:
        # The stop itself revokes partitions: the fault's rebalances are counted before.
        self.rebalances_seen = self.rebalances()
        super().stop_consumers(timeout)

    def producer_in_flight(self) -> int:
        """Orders the producer sent and has no delivery report for (its progress line)."""
        progress = self.producer().events("progress")
        return int(progress[-1]["in_flight"]) if progress else 0

    def save_logs(self) -> None:
        """Each container's log next to the test's other logs (kept when it fails)."""
        for service in [*self.producers, *self.consumers]:
            if isinstance(service, ContainerService):
                (self.log_dir / f"{service.role}.log").write_text(service.tail(10**9) + "\n")

    def restarts(self) -> int:
        return sum(
            s.restarts()
            for s in [*self.producers, *self.consumers]
            if isinstance(s, ContainerService)
        )

    # ------------------------------------------------------------------ the end
    def conclude(
        self, *, extra: dict[str, Any] | None = None, allow_unacknowledged: bool = False
    ) -> None:
        """Stop the producer (it flushes), drain, run the invariant check, add the row."""
        self.stop_producers()
        report = self.finish(allow_unacknowledged=allow_unacknowledged, drain_timeout=180)
        ROWS.append(
            {
                "test": self.test,
                "case": self.case,
                "title": self.title,
                "orders": report.acknowledged,
                "invalid": report.invalid_sent,
                "redeliveries": report.redeliveries,
                "rebalances": self.rebalances_seen,
                "restarts": self.restarts(),
                "recovery_s": [round(r, 1) for r in self.recoveries],
                "duration_s": round(time.monotonic() - self.started, 1),
                "notes": "; ".join(self.notes),
                **(extra or {}),
            }
        )
