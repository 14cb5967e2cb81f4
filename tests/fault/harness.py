"""The fault-injection harness: real ``foodpipe`` processes, real signals, measured recovery.

One :class:`Fault` per test. It owns the test's producers and consumers (each a real
``foodpipe produce`` / ``foodpipe consume`` subprocess logging JSON lines to its own
file), samples the group's committed offsets all along (to prove they never move
backwards), installs the write log that counts redeliveries, and ends the case with
:func:`tests.fault.invariants.check_invariants`. Each finished case adds a row to the
suite's summary table (printed at the end of the run, and written as JSON).

Nothing here sleeps to synchronise: waits poll a condition with a deadline
(:func:`tests.support.wait_until`). A fault that lasts a given time ("freeze the broker
for 30 s") is held by :meth:`Fault.hold`, which keeps checking the processes meanwhile.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from confluent_kafka import Consumer, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient
from sqlalchemy import text

from foodpipe.audit import audit
from tests.conftest import Pipeline, Stack
from tests.fault.invariants import (
    InvariantReport,
    Position,
    assert_monotonic,
    check_invariants,
    end_offsets,
    install_write_log,
    order_id_of,
    partitions_of,
    read_topic,
)
from tests.poison import produce_records
from tests.support import REPO, foodpipe_argv, subprocess_env, wait_until

#: Session timeout of consumers in cases that kill them: the broker's minimum (6 s), so a
#: SIGKILLed member's partitions move in seconds rather than the default 45 s. It is a
#: setting (KAFKA_SESSION_TIMEOUT_MS), not a hack; cases about timeouts use the defaults.
FAST_SESSION_MS = 6_000

#: Where a real memory limit is put on a consumer when the machine allows it (cgroup v1
#: memory controller, as root). Elsewhere the peak RSS is checked against the limit.
CGROUP_MEMORY_ROOT = Path("/sys/fs/cgroup/memory")

#: ``Fault.inject`` error class meaning "must be dead-lettered, under whatever class".
ANY_CLASS = "*"


# --------------------------------------------------------------------------- processes


def read_events(path: Path) -> list[dict[str, Any]]:
    """The JSON log lines of a process (other lines, e.g. a traceback, are skipped)."""
    events: list[dict[str, Any]] = []
    if not path.exists():
        return events
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            try:
                events.append(json.loads(line))
            except ValueError:
                continue
    return events


def proc_status(pid: int, field_name: str) -> int | None:
    """A ``kB`` field of /proc/PID/status (VmRSS, VmHWM), or None once the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError, ValueError):
        return None
    return None


def fd_count(pid: int) -> int | None:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except (FileNotFoundError, PermissionError):
        return None


class Proc(Protocol):
    """What a case needs of a running ``foodpipe`` service: a :class:`Service` here, a
    container in the network-fault suite (tests/fault/network)."""

    role: str

    @property
    def pid(self) -> int: ...

    def alive(self) -> bool: ...

    def events(self, name: str | None = None) -> list[dict[str, Any]]: ...

    def events_starting(self, prefix: str | tuple[str, ...]) -> list[dict[str, Any]]: ...

    def tail(self, lines: int = 15) -> str: ...

    def terminate(self, timeout: float = 30.0) -> tuple[int, float]: ...

    def wait(self, timeout: float) -> int: ...

    def stacks(self) -> str: ...

    def cleanup(self) -> None: ...


@dataclass
class Service:
    """One running ``foodpipe`` subprocess."""

    role: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    started: float = field(default_factory=time.monotonic)
    cgroup: Path | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        events = read_events(self.log_path)
        return events if name is None else [e for e in events if e.get("event") == name]

    def has_logged(self, name: str, at_least: int = 1) -> bool:
        return len(self.events(name)) >= at_least

    def events_starting(self, prefix: str | tuple[str, ...]) -> list[dict[str, Any]]:
        return [e for e in read_events(self.log_path) if str(e.get("event", "")).startswith(prefix)]

    def tail(self, lines: int = 15) -> str:
        if not self.log_path.exists():
            return "(no log)"
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def rss_kb(self) -> int | None:
        return proc_status(self.pid, "VmRSS")

    def hwm_kb(self) -> int | None:
        return proc_status(self.pid, "VmHWM")

    def fds(self) -> int | None:
        return fd_count(self.pid)

    def send(self, sig: signal.Signals) -> None:
        assert self.alive(), f"{self.role} exited early ({self.proc.returncode}):\n{self.tail()}"
        os.kill(self.pid, sig)

    def kill(self) -> int:
        """SIGKILL and reap; returns the exit status (-9)."""
        self.send(signal.SIGKILL)
        return self.proc.wait(timeout=30)

    def terminate(self, timeout: float = 30.0) -> tuple[int, float]:
        """SIGTERM; returns (exit code, seconds until it exited)."""
        started = time.monotonic()
        self.send(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=30)
            raise AssertionError(
                f"{self.role} did not exit within {timeout}s of SIGTERM:\n{self.tail()}"
            ) from None
        return code, time.monotonic() - started

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"{self.role} still running after {timeout}s:\n{self.tail()}"
            ) from None

    def stacks(self) -> str:
        """The process's Python (and native) stacks, via py-spy when it is installed."""
        spy = Path(sys.executable).with_name("py-spy")
        if not self.alive() or not spy.exists():
            return ""
        result = subprocess.run(
            [str(spy), "dump", "--native", "--pid", str(self.pid)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        return result.stdout[-6000:] or result.stderr[-500:]

    def cleanup(self) -> None:
        if self.alive():
            with_suppressed(lambda: os.kill(self.pid, signal.SIGCONT))
            self.proc.kill()
        with_suppressed(lambda: self.proc.wait(timeout=30))
        if self.cgroup is not None:
            cgroup = self.cgroup

            def removed() -> bool:
                # The kernel may still be uncharging the exited process (EBUSY) a moment.
                try:
                    cgroup.rmdir()
                except FileNotFoundError:
                    return True
                except OSError:
                    return False
                return True

            with_suppressed(lambda: wait_until(removed, timeout=10, message=f"rmdir {cgroup}"))


def with_suppressed(action: Callable[[], object]) -> None:
    with contextlib.suppress(Exception):  # cleanup must go on
        action()


def memory_cgroup(name: str, limit_mb: int) -> Path | None:
    """A cgroup v1 memory cgroup limited to ``limit_mb`` (no swap), if we may create one."""
    if not (CGROUP_MEMORY_ROOT / "cgroup.procs").exists() or os.geteuid() != 0:
        return None
    path = CGROUP_MEMORY_ROOT / f"foodpipe-fault-{name}-{os.getpid()}"
    try:
        path.mkdir(exist_ok=True)
        (path / "memory.limit_in_bytes").write_text(str(limit_mb * 1024 * 1024))
        swap = path / "memory.memsw.limit_in_bytes"
        if swap.exists():
            swap.write_text(str(limit_mb * 1024 * 1024))
    except OSError:
        return None
    return path


def cgroup_oom_kills(path: Path) -> int:
    for line in (path / "memory.oom_control").read_text().splitlines():
        if line.startswith("oom_kill "):
            return int(line.split()[1])
    return 0


def spawn(
    role: str,
    args: Sequence[str],
    env: Mapping[str, str],
    log_path: Path,
    cgroup: Path | None = None,
) -> Service:
    """Start ``foodpipe ARGS``; with ``cgroup``, the process runs inside it from exec on."""
    argv = foodpipe_argv(args)
    if cgroup is not None:
        # The shell joins the cgroup, then execs Python: every byte is charged to it.
        argv = ["sh", "-c", f'echo $$ > {cgroup}/cgroup.procs && exec "$@"', "sh", *argv]
    with open(log_path, "ab") as out:
        proc = subprocess.Popen(
            argv, env=subprocess_env(env), stdout=out, stderr=subprocess.STDOUT, cwd=REPO
        )
    return Service(role, proc, log_path, cgroup=cgroup)


# --------------------------------------------------------------------------- samplers


class Sampler:
    """Calls ``probe`` every ``interval`` seconds on a thread; keeps (t, value) pairs.

    A probe that raises (the broker is frozen, the process is gone) is skipped: a
    sample is evidence, its absence is not.
    """

    def __init__(
        self,
        probe: Callable[[], Any],
        interval: float,
        close: Callable[[], None] | None = None,
    ) -> None:
        self._probe = probe
        self._close = close
        self._interval = interval
        self._stop = threading.Event()
        self.samples: list[tuple[float, Any]] = []
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                value = self._probe()
            except Exception:
                value = None
            if value is not None:
                self.samples.append((time.monotonic(), value))
            self._stop.wait(self._interval)

    def values(self, since: float = float("-inf"), until: float = float("inf")) -> list[Any]:
        return [v for t, v in list(self.samples) if since <= t <= until]

    def stop(self) -> None:
        if self._stop.is_set():
            return
        self._stop.set()
        self._thread.join(timeout=30)
        if self._close is not None:
            self._close()


class OffsetProbe:
    """The group's committed offsets, through one long-lived consumer that never joins.

    ``Consumer.committed`` (OffsetFetch) rather than the admin API: librdkafka's admin
    requests can abort the process when they time out while a broker is down
    (librdkafka issue #4605, ``rd_kafka_enq_once_del_source_return`` assertion), and the
    probes run precisely while brokers are killed and frozen.
    """

    def __init__(self, bootstrap: str, group: str, topic: str) -> None:
        self._consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": group,
                "enable.auto.commit": False,
                "socket.timeout.ms": 3000,
            }
        )
        self._partitions = [TopicPartition(topic, p) for p in partitions_of(bootstrap, topic)]

    def __call__(self) -> dict[int, int]:
        committed = self._consumer.committed(self._partitions, timeout=3)
        return {
            tp.partition: tp.offset
            for tp in committed
            if tp.offset is not None and tp.offset >= 0 and tp.error is None
        }

    def close(self) -> None:
        self._consumer.close()


def group_members(bootstrap: str, group: str) -> dict[str, set[int]]:
    """``{member client host/id: partitions}`` as the group coordinator sees it now."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    description = admin.describe_consumer_groups([group], request_timeout=10)[group].result()
    return {
        member.member_id: {tp.partition for tp in member.assignment.topic_partitions}
        for member in description.members
    }


# --------------------------------------------------------------------------- the case


@dataclass
class CaseResult:
    """One row of the summary table."""

    case: str
    title: str
    orders: int
    invalid: int
    redeliveries: int
    rewritten: int
    dlq_repeats: int
    producer_repeats: int
    recovery_s: list[float]
    duration_s: float
    notes: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "case": self.case,
            "title": self.title,
            "orders": self.orders,
            "invalid": self.invalid,
            "redeliveries": self.redeliveries,
            "rewritten": self.rewritten,
            "dlq_repeats": self.dlq_repeats,
            "producer_repeats": self.producer_repeats,
            "recovery_s": [round(r, 2) for r in self.recovery_s],
            "duration_s": round(self.duration_s, 1),
            "notes": self.notes,
        }


class Fault:
    """A fault-injection case: processes, samplers, ground truth and the final check."""

    def __init__(
        self,
        *,
        case: str,
        title: str,
        pipeline: Pipeline,
        stack: Stack,
        log_dir: Path,
        results: list[CaseResult],
        bootstrap: str | None = None,
        fast_session: bool = True,
        group_protocol: str | None = None,
    ) -> None:
        self.case = case
        self.title = title
        self.pipeline = pipeline
        self.stack = stack
        self.log_dir = log_dir
        self.bootstrap = bootstrap or pipeline.bootstrap
        self._results = results
        self.started = time.monotonic()
        self.env: dict[str, str] = {
            **pipeline.env,
            "KAFKA_BOOTSTRAP_SERVERS": self.bootstrap,
            "PRODUCER_STATE_DIR": str(log_dir / "producer-state"),
            "PYTHONUNBUFFERED": "1",
        }
        if fast_session:
            self.env["KAFKA_SESSION_TIMEOUT_MS"] = str(FAST_SESSION_MS)
        if group_protocol is not None:
            self.env["KAFKA_GROUP_PROTOCOL"] = group_protocol
        self.producers: list[Proc] = []
        self.consumers: list[Proc] = []
        #: Orders acknowledged outside ``foodpipe produce`` (``inject``), by id.
        self.injected_acks: dict[str, Position | None] = {}
        #: Positions of messages that must end in the DLQ, with their error class.
        self.invalid: dict[Position, str | None] = {}
        self.recoveries: list[float] = []
        self.notes: list[str] = []
        self._cleared: tuple[float, dict[int, int]] | None = None
        install_write_log(pipeline.admin_engine)
        probe = OffsetProbe(self.bootstrap, pipeline.group, pipeline.topic)
        self.offsets = Sampler(probe, 0.25, close=probe.close)
        self._counter = 0
        self._earlier_offset_samples = 0

    # ----------------------------------------------------------------- processes

    def _log_path(self, role: str) -> Path:
        self._counter += 1
        return self.log_dir / f"{self._counter:02d}-{role}.log"

    def produce(
        self,
        count: int | None,
        *,
        rate: float,
        seed: int,
        env: Mapping[str, str] | None = None,
        debug: bool = True,
    ) -> Service:
        """``foodpipe produce [--count] --rate --seed``; at DEBUG it logs each acknowledgement.

        Without ``count`` it runs until :meth:`stop_producers` (SIGTERM, then it flushes).
        """
        limit = ["--count", str(count)] if count is not None else []
        service = spawn(
            "producer",
            ["produce", *limit, "--rate", str(rate), "--seed", str(seed)],
            {**self.env, "LOG_LEVEL": "DEBUG" if debug else "INFO", **(env or {})},
            self._log_path("producer"),
        )
        self.producers.append(service)
        return service

    def consume(
        self, *, env: Mapping[str, str] | None = None, memory_limit_mb: int | None = None
    ) -> Service:
        cgroup = None
        if memory_limit_mb is not None:
            cgroup = memory_cgroup(f"{self.pipeline.group[-8:]}-{self._counter}", memory_limit_mb)
        service = spawn(
            "consumer",
            ["consume", "--wait", "60"],
            {**self.env, "LOG_LEVEL": "INFO", **(env or {})},
            self._log_path("consumer"),
            cgroup=cgroup,
        )
        self.consumers.append(service)
        return service

    def wait_assigned(self, consumer: Proc, timeout: float = 60) -> None:
        """Wait until ``consumer`` owns partitions (its first assignment is logged)."""
        wait_until(
            lambda: consumer.events_starting("partitions assigned") or not consumer.alive(),
            timeout=timeout,
            message=lambda: f"{consumer.role} to be assigned partitions:\n{consumer.tail()}",
        )
        assert consumer.alive(), f"consumer exited at start:\n{consumer.tail()}"

    def inject(self, records: Iterable[tuple[bytes | None, bytes | None, str | None]]) -> None:
        """Produce ``(key, value, error_class)``; ``error_class`` None means a valid order.

        Valid ones join the acknowledged set, invalid ones the expected dead letters.
        """
        items = list(records)
        positions = produce_records(
            self.bootstrap, self.pipeline.topic, [(key, value) for key, value, _ in items]
        )
        for (_key, value, error_class), position in zip(items, positions, strict=True):
            if error_class is None:
                order_id = order_id_of(value)
                assert order_id is not None, value
                self.injected_acks[order_id] = position
            else:
                self.invalid[position] = None if error_class == ANY_CLASS else error_class

    # ----------------------------------------------------------------- ground truth

    def acknowledge_from_topic(self, producer: Proc) -> None:
        """Ground truth of a producer run at INFO (no per-order lines, for speed).

        Its summary says every order was confirmed (delivered N, failed 0); the topic then
        holds exactly N orders with distinct ids, so those ids are the acknowledged set.
        """
        summary = self.producer_summary(producer)
        assert summary["failed"] == 0, summary
        assert summary["in_flight"] == 0, summary
        records = read_topic(self.bootstrap, self.pipeline.topic, keep_values=True)
        ids = {order_id_of(r.value): (r.partition, r.offset) for r in records}
        assert None not in ids
        assert len(ids) == len(records) == summary["delivered"], (len(ids), summary)
        self.injected_acks.update({k: v for k, v in ids.items() if k is not None})

    def acknowledged(self) -> dict[str, Position | None]:
        acks: dict[str, Position | None] = dict(self.injected_acks)
        for producer in self.producers:
            for event in producer.events():
                if event.get("event") in ("order delivered", "order delivered after retry"):
                    # A retried delivery's report can come without an offset (seen in case
                    # 6 under heavy load): the order still counts as acknowledged, and a
                    # None position makes it one that must be in the table.
                    partition, offset = event.get("partition"), event.get("offset")
                    acks[event["order_id"]] = (
                        None
                        if partition is None or offset is None
                        else (int(partition), int(offset))
                    )
        return acks

    def producer_summary(self, producer: Proc) -> dict[str, Any]:
        stopped = producer.events("producer stopped")
        assert stopped, f"the producer logged no summary:\n{producer.tail()}"
        return stopped[-1]

    def rows(self) -> int:
        with self.pipeline.admin_engine.connect() as conn:
            return int(conn.execute(text("SELECT count(*) FROM orders")).scalar_one())

    def wait_rows(self, at_least: int, timeout: float = 60) -> None:
        wait_until(
            lambda: self.rows() >= at_least,
            timeout=timeout,
            interval=0.1,
            message=lambda: f"at least {at_least} rows (have {self.rows()})",
        )

    def new_offset_phase(self) -> None:
        """Offsets were moved on purpose (a reset): check the history so far, start anew."""
        self.offsets.stop()
        history = self.offsets.values()
        assert_monotonic(history)
        self._earlier_offset_samples += len(history)
        probe = OffsetProbe(self.bootstrap, self.pipeline.group, self.pipeline.topic)
        self.offsets = Sampler(probe, 0.25, close=probe.close)

    # ----------------------------------------------------------------- recovery

    def cleared(self) -> None:
        """The fault just ended: recovery is measured from now to the backlog committed."""
        self._cleared = (time.monotonic(), end_offsets(self.bootstrap, self.pipeline.topic))

    def wait_recovered(
        self, timeout: float = 90, supervise: Callable[[], None] | None = None
    ) -> float:
        """Wait until the group committed everything on the log when the fault cleared.

        ``supervise`` runs at every poll, e.g. to restart a consumer that exited, as the
        Compose restart policy does for the real service.
        """
        assert self._cleared is not None, "call cleared() when the fault ends"
        since, ends = self._cleared
        self.wait_committed(
            ends,
            timeout=timeout,
            what="the group to commit the backlog after the fault",
            supervise=supervise,
        )
        seconds = time.monotonic() - since
        self.recoveries.append(seconds)
        self._cleared = None
        return seconds

    def wait_committed(
        self,
        ends: dict[int, int],
        *,
        timeout: float,
        what: str,
        supervise: Callable[[], None] | None = None,
    ) -> None:
        """Wait until the group's committed offsets reach ``ends`` (partition -> offset).

        The probe's own OffsetFetch can time out while a coordinator that was just healed
        catches up (network case 4): that is no answer yet, not a verdict on the
        consumers, so it asks again until the deadline. ``supervise`` runs at every poll.
        """
        probe = OffsetProbe(self.bootstrap, self.pipeline.group, self.pipeline.topic)
        seen: dict[int, int] = {}

        def reached() -> bool:
            if supervise is not None:
                supervise()
            try:
                seen.update(probe())
            except KafkaException:
                return False
            return all(seen.get(p, 0) >= end for p, end in ends.items())

        try:
            wait_until(
                reached,
                timeout=timeout,
                interval=0.1,
                message=lambda: f"{what} (committed {seen}, log end {ends})" + self.diagnostics(),
            )
        finally:
            probe.close()

    def diagnostics(self) -> str:
        """What each live process is doing, for a failure message."""
        parts = []
        for service in [*self.producers, *self.consumers]:
            if service.alive():
                parts.append(f"\n--- {service.role} {service.pid}:\n{service.stacks()}")
                parts.append(f"--- its last log lines:\n{service.tail(8)}")
        return "".join(parts)

    def hold(self, seconds: float, *, check: Callable[[], None] | None = None) -> None:
        """Keep a fault in place for ``seconds``, checking the processes all along.

        This is the fault's duration, not a synchronisation wait: the check runs every
        0.2 s and fails the case at once if a process it watches misbehaves.
        """
        deadline = time.monotonic() + seconds

        def over() -> bool:
            if check is not None:
                check()
            return time.monotonic() >= deadline

        wait_until(over, timeout=seconds + 30, interval=0.2, message=f"a {seconds}s fault")

    # ----------------------------------------------------------------- the end

    def acked_count(self) -> int:
        return sum(len(p.events("order delivered")) for p in self.producers)

    def wait_acked(self, more: int, timeout: float = 60) -> None:
        """Wait until the producers had ``more`` further orders acknowledged."""
        target = self.acked_count() + more
        wait_until(
            lambda: self.acked_count() >= target,
            timeout=timeout,
            interval=0.2,
            message=lambda: f"{target} acknowledged orders (have {self.acked_count()})",
        )

    def stop_producers(self) -> None:
        """SIGTERM the producers still running: they flush, and must exit 0 (all confirmed)."""
        for producer in self.producers:
            if producer.alive():
                code, _seconds = producer.terminate(timeout=30)
                assert code == 0, f"producer exited {code} after SIGTERM:\n{producer.tail()}"

    def wait_producers(self, timeout: float = 120) -> None:
        for producer in self.producers:
            code = producer.wait(timeout)
            assert code == 0, f"producer exited {code}:\n{producer.tail()}"

    def stop_consumers(self, timeout: float = 30) -> None:
        for consumer in self.consumers:
            if consumer.alive():
                code, _ = consumer.terminate(timeout)
                assert code == 0, f"consumer exited {code} on SIGTERM:\n{consumer.tail()}"

    def finish(
        self,
        *,
        allow_unacknowledged: bool = False,
        drain_timeout: float = 120,
        stop: bool = True,
    ) -> InvariantReport:
        """Wait for the producers, let the consumers drain, stop them, run the check."""
        self.wait_producers()
        acks = self.acknowledged()
        valid_expected = len(
            {oid for oid, pos in acks.items() if pos is None or pos not in self.invalid}
        )
        self.wait_rows(valid_expected, timeout=drain_timeout)
        # Lag 0 while still running: everything written is committed.
        ends = end_offsets(self.bootstrap, self.pipeline.topic)
        self.wait_committed(ends, timeout=drain_timeout, what="lag 0")
        if stop:
            self.stop_consumers()
        self.offsets.stop()
        report = check_invariants(
            bootstrap=self.bootstrap,
            topic=self.pipeline.topic,
            dlq_topic=self.pipeline.dlq_topic,
            group=self.pipeline.group,
            admin_engine=self.pipeline.admin_engine,
            acknowledged=acks,
            invalid=self.invalid,
            offset_samples=self.offsets.values(),
            allow_unacknowledged=allow_unacknowledged,
        )
        report.offset_samples += self._earlier_offset_samples
        assert report.offset_samples > 0, "no committed offsets were sampled during the case"
        # The product's own audit must agree (it sees only Kafka and the table).
        settings = self.pipeline.settings.model_copy(
            update={"kafka_bootstrap_servers": self.bootstrap}
        )
        product = audit(settings, engine=self.pipeline.admin_engine, timeout_s=120)
        failed = [check for check in product.checks if not check.ok]
        assert not failed, f"foodpipe audit disagrees: {failed}"
        self._results.append(
            CaseResult(
                case=self.case,
                title=self.title,
                orders=report.acknowledged,
                invalid=report.invalid_sent,
                redeliveries=report.redeliveries,
                rewritten=report.rewritten,
                dlq_repeats=report.dlq_repeats,
                producer_repeats=report.producer_repeats,
                recovery_s=self.recoveries,
                duration_s=time.monotonic() - self.started,
                notes="; ".join(self.notes),
            )
        )
        return report

    def cleanup(self) -> None:
        self.offsets.stop()
        for service in [*self.producers, *self.consumers]:
            service.cleanup()
