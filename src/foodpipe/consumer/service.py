"""The consumer's poll loop: Kafka -> validate -> PostgreSQL, losing nothing.

The delivery contract
=====================
Each batch goes through these steps, in this order, and no offset is committed whose
message is not safely somewhere (a row in PostgreSQL or a record in the DLQ). Steps 3
and the database commit of step 5 run on a writer thread, overlapped with steps 1-2 of
the next batch (see "Two batches in flight" below):

1. **Poll a batch**: up to ``BATCH_SIZE`` messages, 8 MiB of keys and values, or
   ``BATCH_TIMEOUT_MS``, whichever comes first (``consume()`` without waiting for what
   is prefetched, then waiting for one message at a time, in slices of at most half a
   second so a stop request is noticed promptly). When nothing more is prefetched and
   none arrives within ``BATCH_LINGER_MS`` (5 ms), the batch is written as it is: a
   light load gets low latency, a backlog still gets full batches. With a batch being
   written and nothing prefetched, the loop waits for that write (not for Kafka) and
   commits it at once.
2. **Decode and validate** each message with the shared ``Order`` model and its business
   rules (:func:`~foodpipe.consumer.decode.decode`). A message that is not a valid order
   becomes a :class:`~foodpipe.errors.PoisonMessage` with a named error class.
3. **Write the valid orders in one transaction** (:class:`~foodpipe.db.OrderWriter`):
   in-batch duplicates removed, one idempotent multi-row ``INSERT ... ON CONFLICT
   (order_id) DO NOTHING``. A row PostgreSQL refuses is isolated by bisecting the batch
   inside savepoints and becomes poison (``db_constraint``); the rest is written.
   Duplicates are counted; a duplicate with a different payload is logged as a conflict.
4. **Dead-letter the poison**: original key, value and headers plus ``dlq-*`` headers
   (topic, partition, offset, error class, reason), and wait for the broker's
   confirmation (idempotent producer, ``acks=all``). If the DLQ cannot take them, stop
   (fatal): committing past them would lose them.
5. **Commit the database transaction, then the offsets**: one
   ``commit(offsets=[offset + 1 per partition], asynchronous=True)`` after the
   transaction has committed; the offsets stay pending until librdkafka confirms them
   (``on_commit``, served inside a later ``consume()``/``poll()``), and a commit that
   failed is sent again. Auto-commit and auto offset store are off, so no offset ever
   moves on its own. Asynchronous because a synchronous commit blocks the only thread
   that serves rebalances: when the group session expired during one (a broker stalled
   longer than ``session.timeout.ms``), librdkafka waited for the loop to acknowledge
   the lost partitions while the loop waited for the commit, for ever. Only the last
   commit, at shutdown, is synchronous.

Two batches in flight
---------------------
While the writer thread writes batch n (psycopg2 releases the GIL while PostgreSQL
works), the loop polls and validates batch n+1 and serialises its rows for the INSERT.
The hand-off has depth one: batch n+1 is handed over only once batch n's transaction
has committed, and then at once, so the database never waits for the loop's
bookkeeping; batch n's outcome is folded in on the loop's thread while n+1 is written
(rows settled, poison dead-lettered and confirmed, offsets recorded and committed), and
n+1's outcome is folded in only after that. Hence:

- offsets are committed in order per partition, and only after their batch's DB commit;
- at most two batches are in memory (8 MiB each at most);
- batch n+1 is handed over without a new ownership check when no rebalance callback ran
  since it was validated (the wait for a successful write calls neither ``consume()``
  nor ``poll()``, so none can have); after a database retry, which polls, it is held
  to the partitions still owned and to their floors first;
- Kafka and the DLQ producer are only touched by the loop's thread; the writer thread
  only runs :meth:`~foodpipe.db.OrderWriter.write`, and its exception is re-raised on
  the loop's thread, where it is classified exactly as before (the retries then run on
  the loop's thread, which keeps polling between them);
- a crash with both in flight commits neither; a stop finishes both, in order.

Failures (the decision table is :mod:`foodpipe.consumer.classify`):

- *poison*: steps 2-4; the offset moves past it.
- *transient* (database down, connection reset, lock or statement timeout): the SAME
  batch is retried with capped exponential backoff (0.5 s doubling to 30 s). Meanwhile
  every assigned partition is paused and ``poll()`` keeps being called, so this member
  stays in its group (``max.poll.interval.ms`` is about calls to poll) without
  fetching more data. Nothing is committed until the batch is written; then the
  partitions resume. This replaces "3 retries then move on", which loses data.
- *fatal* (authentication refused, table missing after a few retries, DLQ unwritable):
  the exception propagates; the command logs one line and exits 3. Nothing of the batch
  is committed, so it is redelivered after the restart.

Rebalances (cooperative-sticky, so callbacks receive only the partitions that change,
and partitions that stay are never taken away and given back; the callbacks do not call
``incremental_assign``/``incremental_unassign`` themselves: confluent-kafka does that
right after each callback returns, with the committed offsets as start positions):

- Rebalance callbacks run on the loop's thread, *inside* ``consume()`` or ``poll()``:
  while batch n+1 is gathered, batch n may be on the writer thread; during the
  transient-retry wait, the batch being retried is unwritten by definition.
- ``on_revoke``: first wait for the batch on the writer thread and, if it was written,
  fold it in (dead letters, offsets) so that it is committed below while the partitions
  are still ours; if it failed, the loop retries what is left of it. Then the unwritten
  messages of the revoked partitions are dropped (never written, never committed: the
  new owner reads them again from the committed offset, and the idempotent insert makes
  any overlap harmless); offsets written but not yet committed are committed now.
- ``on_lost``: the partitions already belong to someone else, so a commit would be
  refused or, worse, move a stranger's offset: drop their in-flight messages (also from
  the batch on the writer thread, which may still insert their rows harmlessly) and
  pending offsets, commit nothing.
- ``on_assign``: read the group's committed offsets of the new partitions (the *floor*:
  every message below it is stored already), log what this member owns now (INFO); if
  we are waiting on the database, the new partitions are paused too before any of their
  messages is used. A message below its partition's floor is skipped and counted
  (``skipped_committed``), and no commit goes below the floor, so a stale start position
  in the client can never move the group's committed offset backwards.
- As a last guard, messages of a partition we no longer own are filtered out of every
  batch.

Shutdown: ``request_stop()`` (SIGTERM/SIGINT) lets the batches in hand finish (written
and committed, in order) or, if one is waiting on the database, abandons it uncommitted;
then the consumer is closed, which leaves the group at once instead of after the session
timeout. Leaving on an error, the batch on the writer thread is waited for but neither
dead-lettered nor committed.

Durability is not traded for speed: no ``synchronous_commit=off``, no unlogged table, no
offset commit before the database's COMMIT has returned (docs/KeyPoints/consumer.md says
why each is refused).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as futures_wait
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, Protocol, overload

from confluent_kafka import KafkaError, KafkaException, TopicPartition
from sqlalchemy.exc import SQLAlchemyError

from foodpipe.consumer.backoff import Backoff
from foodpipe.consumer.classify import (
    ErrorClass,
    FailureClass,
    classify,
    classify_kafka_error,
    sqlstate,
)
from foodpipe.consumer.decode import decode
from foodpipe.consumer.dlq import KafkaMessage
from foodpipe.consumer.stats import ConsumerStats
from foodpipe.db import WriteResult
from foodpipe.errors import FatalError, FoodpipeError, MembershipLost, PoisonMessage
from foodpipe.log import get_logger, scrub
from foodpipe.models import Order

PartitionKey = tuple[str, int]


RebalanceCallback = Callable[[Any, list[TopicPartition]], None]


class ConsumerLike(Protocol):
    """The parts of ``confluent_kafka.Consumer`` the loop uses (fakes implement it)."""

    def subscribe(
        self,
        topics: list[str],
        on_assign: RebalanceCallback | None = ...,
        on_revoke: RebalanceCallback | None = ...,
        on_lost: RebalanceCallback | None = ...,
    ) -> None: ...
    def consume(self, num_messages: int = ..., timeout: float = ...) -> Sequence[KafkaMessage]: ...
    def poll(self, timeout: float = ...) -> KafkaMessage | None: ...
    @overload
    def commit(self, *, offsets: list[TopicPartition], asynchronous: Literal[True]) -> None: ...
    @overload
    def commit(
        self, *, offsets: list[TopicPartition], asynchronous: Literal[False]
    ) -> list[TopicPartition]: ...
    def committed(
        self, partitions: list[TopicPartition], timeout: float = ...
    ) -> list[TopicPartition]: ...
    def assignment(self) -> list[TopicPartition]: ...
    def pause(self, partitions: list[TopicPartition]) -> None: ...
    def resume(self, partitions: list[TopicPartition]) -> None: ...
    def close(self) -> None: ...


class WriterLike(Protocol):
    def prepare(self, batch: Sequence[Order]) -> str:
        """The batch in the form ``write`` sends (serialised on the loop's thread)."""
        ...

    def write(self, batch: Sequence[Order], prepared: str | None = None) -> WriteResult: ...


class DeadLetterLike(Protocol):
    def send(self, message: KafkaMessage, poison: PoisonMessage) -> None: ...
    def flush(self) -> int: ...


class Observer(Protocol):
    """What the loop reports besides its counters (``observability.ConsumerMetrics``)."""

    def observe_batch(self, size: int, latency_s: float) -> None: ...
    def observe_end_to_end(self, created_at: Iterable[datetime]) -> None: ...
    def set_assignment(self, topic_partitions: Iterable[PartitionKey]) -> None: ...


class _NoObserver:
    def observe_batch(self, size: int, latency_s: float) -> None:
        pass

    def observe_end_to_end(self, created_at: Iterable[datetime]) -> None:
        pass

    def set_assignment(self, topic_partitions: Iterable[PartitionKey]) -> None:
        pass


@dataclass(frozen=True)
class LoopConfig:
    batch_size: int = 500
    batch_timeout_s: float = 1.0
    #: Once the batch has messages and none are waiting in librdkafka's queue, wait at
    #: most this long in total for more before writing what we have. Waiting the full
    #: ``batch_timeout_s`` to fill a batch made a light load pay for it in latency
    #: (measured at 1,000 orders/s: p50 291 ms, p99 621 ms); under a backlog the queue
    #: is never empty, so batches still fill up.
    batch_linger_s: float = 0.005
    #: Bytes (keys + values) at which a batch stops growing, whatever its count. The
    #: fetch settings bound what librdkafka prefetches, but messages handed to the loop
    #: leave that budget and librdkafka fetches more: without this, a burst of near-limit
    #: (1 MB) messages filled a 500-message batch with ~500 MB, far past the 128 MB
    #: container limit (OOM, restart, the same batch again: a crash loop). Same size as
    #: the prefetch queue (``queued.max.messages.kbytes``).
    batch_max_bytes: int = 8 * 1024 * 1024
    #: A write still running this long after the next batch is ready is logged (throttled).
    slow_write_s: float = 1.0
    #: Longest single ``consume()``/``poll()`` call, so a stop request is seen promptly.
    poll_slice_s: float = 0.5
    summary_interval_s: float = 5.0
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 30.0
    #: Attempts before an error classified fatal stops the process. More than one,
    #: because during a deployment a migration may create the table seconds later.
    fatal_attempts: int = 3
    #: After librdkafka declared this member dead (``on_lost``), how long to wait for a
    #: new assignment before giving up on this client: exit non-zero (fatal), and the
    #: supervisor (Compose ``restart: on-failure``) starts a fresh one. After a broker
    #: stalled (SIGSTOP for 30 s in fault case 7) librdkafka 2.16 sometimes never
    #: rejoined the group: the process idled for ever with lag growing.
    rejoin_timeout_s: float = 120.0
    #: How long ``on_assign`` waits for the group's committed offsets of the partitions
    #: it receives (see ``_floors``). On timeout the partitions are consumed unguarded.
    committed_timeout_s: float = 10.0


@dataclass
class Entry:
    """One message of the batch in flight and what decoding made of it."""

    message: KafkaMessage
    #: ``(topic, partition)`` of the message, read once: every later step needs it.
    partition_key: PartitionKey
    #: Its offset, likewise.
    offset: int
    order: Order | None = None
    poison: PoisonMessage | None = None


@dataclass
class _Next:
    """A validated batch waiting for the one on the writer thread to be written."""

    entries: list[Entry]
    started: float
    #: ``WriterLike.prepare`` of its valid orders, made while the previous batch was written.
    prepared: str | None
    #: ``stats.rebalances`` when it was validated: any callback since changes it.
    rebalances: int
    handed_over: bool = False


@dataclass
class _Write:
    """The batch whose database write runs on the writer thread (at most one)."""

    #: The batch; rebalance callbacks remove entries of partitions we lose (in place).
    entries: list[Entry]
    #: The entries handed to the writer, in the order of ``WriteResult``'s indexes.
    valid: list[Entry]
    future: Future[WriteResult]
    started: float
    #: Set once the outcome is folded in (by the loop or by a revoke callback).
    settled: bool = field(default=False)


#: librdkafka answers every commit, at the latest with a timeout error after
#: socket.timeout.ms (60 s); an in-flight commit older than this is given up on.
_COMMIT_ANSWER_S = 90.0


def _tp_key(tp: TopicPartition) -> PartitionKey:
    return (str(tp.topic), int(tp.partition))


def _msg_key(message: KafkaMessage) -> PartitionKey:
    return (str(message.topic()), int(message.partition() or 0))


def _batch_bytes(messages: Sequence[KafkaMessage]) -> int:
    # value()/key() return the message's own bytes objects: measuring copies nothing.
    return sum(len(m.value() or b"") + len(m.key() or b"") for m in messages)


def _describe(keys: Sequence[PartitionKey] | set[PartitionKey]) -> list[str]:
    return [f"{topic}[{partition}]" for topic, partition in sorted(keys)]


class ConsumerService:
    """Runs the delivery contract above until :meth:`request_stop` is called."""

    def __init__(
        self,
        consumer: ConsumerLike,
        writer: WriterLike,
        dlq: DeadLetterLike,
        topic: str,
        config: LoopConfig | None = None,
        stats: ConsumerStats | None = None,
        clock: Callable[[], float] = time.monotonic,
        after_db_commit: Callable[[], None] | None = None,
        observer: Observer | None = None,
    ) -> None:
        self._consumer = consumer
        self._observer: Observer = observer if observer is not None else _NoObserver()
        #: Test-only fault injection point (:mod:`foodpipe.consumer.faults`); None in service.
        self._after_db_commit = after_db_commit
        self._writer = writer
        self._dlq = dlq
        self._topic = topic
        self._config = config or LoopConfig()
        self.stats = stats or ConsumerStats(clock=clock)
        self._clock = clock
        self._stop = threading.Event()
        self._log = get_logger("consumer", topic=topic)
        #: Partitions this member owns, as told by the rebalance callbacks.
        self._assigned: set[PartitionKey] = set()
        #: The batch whose write runs on the writer thread, until its outcome is folded in.
        self._write: _Write | None = None
        #: One thread, so batches are written one at a time and in order; the loop hands
        #: it batch n and validates batch n+1 meanwhile (psycopg2 releases the GIL while
        #: it waits on the server).
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="foodpipe-writer")
        #: Messages received but not yet decoded: the batch being gathered, or messages
        #: that arrived while we were paused (processed first next time).
        self._incoming: list[KafkaMessage] = []
        #: Next offset to commit per partition: written (or dead-lettered), not committed.
        self._pending: dict[PartitionKey, int] = {}
        #: Offsets sent in an asynchronous commit whose outcome is not known yet.
        self._committing: dict[PartitionKey, int] = {}
        #: When the last asynchronous commit was sent (see _COMMIT_ANSWER_S).
        self._commit_sent_at = float("-inf")
        self._paused = False
        #: Partitions that left this member while paused (see _poll_batch).
        self._unpause: set[PartitionKey] = set()
        self._last_warning: dict[str, float] = {}
        #: When on_lost last fired without an assignment since (see rejoin_timeout_s).
        self._lost_at: float | None = None
        #: Set when giving up on a wedged client: shutdown must not touch it.
        self._abandoned = False
        #: The group's committed offset per partition, read when the partition was
        #: assigned: everything below it was stored by an earlier owner (see _on_assign).
        self._floors: dict[PartitionKey, int] = {}

    # ------------------------------------------------------------------ public

    def request_stop(self) -> None:
        """Ask the loop to stop after the current batch. Safe from a signal handler."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    @property
    def assigned(self) -> set[PartitionKey]:
        return set(self._assigned)

    def run(self) -> None:
        """Subscribe and process batches until stopped; always closes the consumer."""
        self._consumer.subscribe(
            [self._topic],
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_lost,
        )
        self._log.info(
            "consuming",
            batch_size=self._config.batch_size,
            batch_timeout_ms=round(self._config.batch_timeout_s * 1000),
            batch_linger_ms=round(self._config.batch_linger_s * 1000),
        )
        try:
            while not self.stopping:
                self._commit_pending()
                messages = self._poll_batch()
                if messages:
                    self._process(messages)
                else:
                    self._finish_write()
                # Not held while the next batch is gathered: at most two batches in memory
                # (one being written, one being gathered and validated).
                del messages
                self._maybe_log_summary()
                self._check_membership()
            # Stopping: the batch being written finishes (written, then committed).
            self._finish_write()
        finally:
            self._shutdown()

    # ------------------------------------------------------------------ the batch

    def _poll_batch(self) -> list[KafkaMessage]:
        # Gathered in self._incoming, not a local list: a revoke inside a later consume()
        # call must be able to drop what an earlier call returned (see _drop).
        deadline = self._clock() + self._config.batch_timeout_s
        lingering = False
        if self._unpause and not self._paused:
            # librdkafka keeps a partition's pause across losing and regaining it: one
            # paused during a database retry, lost (session timeout), then assigned
            # again was never fetched (tests/fault/network, case 1). Resuming a
            # partition that is not paused does nothing.
            owned = self._unpause & self._assigned
            self._unpause -= owned
            if owned:
                self._consumer.resume([TopicPartition(t, p) for t, p in sorted(owned)])
        while (
            len(self._incoming) < self._config.batch_size
            and _batch_bytes(self._incoming) < self._config.batch_max_bytes
            and not self.stopping
        ):
            remaining = deadline - self._clock()
            if remaining <= 0:
                break
            # Take what librdkafka already holds without waiting, and wait only for one
            # message. A consume() that waits keeps collecting while librdkafka fetches
            # more, so one call could return ~500 MB of near-limit messages; a
            # non-waiting call returns at most the prefetch queue, bounded by
            # queued.max.messages.kbytes, and the byte check above runs between calls.
            received = self._consumer.consume(
                num_messages=self._config.batch_size - len(self._incoming), timeout=0
            )
            if not received and self._incoming:
                # Nothing more prefetched, a batch in hand: linger (in total, not per
                # message) then write it. Orders we hold gain nothing by waiting for
                # orders not sent yet.
                if not lingering:
                    lingering = True
                    deadline = min(deadline, self._clock() + self._config.batch_linger_s)
                    remaining = deadline - self._clock()
                if remaining <= 0:
                    break
            if not received:
                wait = min(remaining, self._config.poll_slice_s)
                if self._write is not None and not self._incoming:
                    # Nothing prefetched, so nothing to validate while the previous batch
                    # is written: wait for its write instead (this thread holds no lock
                    # the writer needs), then commit it rather than after the timeout.
                    futures_wait([self._write.future], timeout=wait)
                    if self._write.future.done():
                        break
                    continue
                received = self._consumer.consume(num_messages=1, timeout=wait)
            # Only now read self._incoming: callbacks inside consume() may have filtered it.
            self._incoming.extend(received)
        batch, self._incoming = self._incoming, []
        return batch

    def _process(self, messages: list[KafkaMessage]) -> None:
        started = self._clock()
        rebalances = self.stats.rebalances
        # Validated, and serialised for the INSERT, while the writer thread writes the
        # previous batch: the writer thread then spends its time in PostgreSQL, not
        # waiting for the GIL that this thread holds while it validates.
        entries = self._decode(messages)
        orders = [e.order for e in entries if e.order is not None]
        prepared = self._writer.prepare(orders) if orders else None
        following = _Next(entries, started, prepared, rebalances)
        # Batches are written, and offsets committed, in order: this one is handed over
        # once the previous one's transaction has committed (see _finish_write).
        if not self._finish_write(waiting=len(entries), following=following):
            # Stopping with the previous batch unwritten: this one must not be written and
            # committed past it (its offsets would cover the unwritten messages).
            self.stats.abandoned += len(entries)
            return
        if not following.handed_over:  # nothing was being written
            self._hand_over(following)

    def _hand_over(self, following: _Next) -> None:
        """Start writing ``following`` on the writer thread (no write may be in flight)."""
        following.handed_over = True
        entries, prepared = following.entries, following.prepared
        if self.stats.rebalances != following.rebalances:
            # A rebalance since it was validated (during a database retry, which polls)
            # may have taken some of these partitions away, or taken and given them back
            # with a new floor (another member went further meanwhile).
            owned = [e for e in entries if e.partition_key in self._assigned]
            self.stats.dropped_on_revoke += len(entries) - len(owned)
            owned = [e for e in owned if not self._below_floor(e.partition_key, e.offset)]
            if len(owned) != len(entries):
                entries, prepared = owned, None  # the writer serialises what is left
        if entries:
            self._start_write(entries, following.started, prepared)

    def _start_write(self, entries: list[Entry], started: float, prepared: str | None) -> None:
        valid = [e for e in entries if e.order is not None]
        future: Future[WriteResult]
        if valid:
            future = self._executor.submit(
                self._writer.write, [e.order for e in valid if e.order], prepared
            )
        else:
            # Poison only: nothing to write, but its dead letters and offsets still wait
            # for the batches before it.
            future = Future()
            future.set_result(WriteResult())
        self._write = _Write(entries, valid, future, started)

    def _finish_write(
        self, *, in_callback: bool = False, waiting: int = 0, following: _Next | None = None
    ) -> bool:
        """Wait for the batch being written and fold its outcome in.

        Success: hand ``following`` (the next batch) to the writer thread at once, then
        settle the rows, dead-letter the poison, record the offsets and (unless called
        from a rebalance callback, which commits for itself) commit them. Failure:
        retry the same batch with backoff, partitions paused (see ``_write_with_retry``);
        from a rebalance callback, leave the failure to the loop, which retries whatever
        is left of the batch. False when a stop abandoned the batch unwritten.
        """
        write = self._write
        if write is None or write.settled:
            return True
        try:
            # Blocks until the writer thread is done; it holds no Kafka state.
            outcome: tuple[list[Entry], WriteResult] | None = (
                write.valid,
                self._result(write, waiting),
            )
        except (SQLAlchemyError, FoodpipeError) as exc:
            if in_callback:
                return True
            outcome = self._write_with_retry(write, exc)
        if outcome is None:  # stop requested while the database was unavailable
            self._write = None
            self.stats.abandoned += len(write.entries)
            self._log.warning(
                "stopping with an unwritten batch; it will be redelivered",
                messages=len(write.entries),
            )
            return False
        written_entries, result = outcome
        write.settled = True
        self._write = None
        if following is not None:
            # Its transaction has committed: the next batch may go. Only its offsets, and
            # only after this batch's below, are committed once it is written.
            self._hand_over(following)
        self._settle(written_entries, result)
        # Only the entries of partitions still ours: a revoke or a loss removed the others
        # from write.entries, and their next owner reads them again.
        self._dead_letter([e for e in write.entries if e.poison is not None])
        pending = self._pending
        for entry in write.entries:
            key, offset = entry.partition_key, entry.offset + 1
            if offset > pending.get(key, 0):
                pending[key] = offset
        if self._after_db_commit is not None:
            self._after_db_commit()  # rows and dead letters are committed, offsets are not
        if not in_callback:
            self._commit_pending()
        latency = self._clock() - write.started
        self.stats.record_batch(latency)
        self._observer.observe_batch(len(write.entries), latency)
        return True

    def _decode(self, messages: list[KafkaMessage]) -> list[Entry]:
        entries = []
        for message in messages:
            error = message.error()
            if error is not None:
                self._on_kafka_error(error)
                continue
            key = _msg_key(message)
            if key not in self._assigned:
                # Fetched before a revoke; its new owner reads it from the committed offset.
                self.stats.dropped_on_revoke += 1
                continue
            offset = message.offset() or 0
            if self._below_floor(key, offset):
                continue
            self.stats.consumed += 1
            try:
                order = decode(message.key(), message.value())
                entries.append(Entry(message, key, offset, order=order))
            except PoisonMessage as poison:
                # Keep the verdict, not the traceback: the traceback (and the pydantic error
                # chained as its context) holds this frame, whose ``messages`` list holds the
                # Entry holding the exception: a reference cycle that kept whole batches
                # alive until the cyclic GC ran (measured: 65 MB of near-limit messages).
                poison.__traceback__ = None
                poison.__context__ = None
                entries.append(Entry(message, key, offset, poison=poison))
        return entries

    def _result(self, write: _Write, waiting: int) -> WriteResult:
        if not waiting:
            return write.future.result()
        try:
            return write.future.result(timeout=self._config.slow_write_s)
        except TimeoutError:
            # Two batches in flight and the first one is slow: say so (an operator sees a
            # slow database; the fault suite waits for this line to act at that moment).
            self._warn_throttled(
                "slow-write",
                "the database write is slow; the next batch is validated and waits for it",
                writing=len(write.valid),
                waiting=waiting,
                waited_s=self._config.slow_write_s,
            )
            return write.future.result()

    def _write_with_retry(
        self, write: _Write, first_error: SQLAlchemyError | FoodpipeError
    ) -> tuple[list[Entry], WriteResult] | None:
        """Retry the batch whose write (on the writer thread) failed, until stopped.

        The retries run on the loop's own thread: the batch after this one is held back
        anyway (offsets are committed in order), and the loop must keep polling between
        attempts, paused.
        """
        backoff = Backoff(self._config.backoff_initial_s, self._config.backoff_max_s)
        fatal_attempts = 0
        failed: SQLAlchemyError | FoodpipeError | None = first_error
        try:
            while True:
                # Re-read on every attempt: a revoke during the wait may have removed some.
                valid = [e for e in write.entries if e.order is not None]
                if not valid:
                    return valid, WriteResult()
                try:
                    if failed is not None:
                        # The writer thread's attempt: classified like the retries below.
                        error, failed = failed, None
                        raise error
                    return valid, self._writer.write([e.order for e in valid if e.order])
                except (SQLAlchemyError, FoodpipeError) as exc:
                    failure = classify(exc)
                    if failure is FailureClass.POISON:  # the writer isolates bad rows itself
                        failure = FailureClass.FATAL
                    reason = _one_line(exc)
                    if failure is FailureClass.FATAL:
                        fatal_attempts += 1
                        if fatal_attempts >= self._config.fatal_attempts:
                            raise FatalError(
                                f"database refused the batch {fatal_attempts} times: {reason}"
                            ) from None
                    delay = backoff.next()
                    self.stats.db_retries += 1
                    self._log.warning(
                        "database write failed; retrying the same batch, partitions paused",
                        failure=str(failure),
                        sqlstate=sqlstate(exc),
                        error=reason,
                        attempt=backoff.attempts,
                        retry_in_s=round(delay, 2),
                        batch=len(valid),
                    )
                    self._pause()
                    if not self._wait(delay):
                        return None
        finally:
            self._resume()

    def _settle(self, valid: list[Entry], result: WriteResult) -> None:
        """Fold the write result into the entries and the counters."""
        self.stats.written += len(result.inserted)
        # The transaction has committed: these orders are processed end to end.
        inserted = [valid[i].order for i in result.inserted]
        self._observer.observe_end_to_end(o.created_at for o in inserted if o is not None)
        self.stats.duplicates += len(result.duplicates)
        self.stats.conflicts += len(result.conflicts)
        for index, reason in result.rejected.items():
            valid[index].poison = PoisonMessage(ErrorClass.DB_CONSTRAINT, reason)
            valid[index].order = None
        for conflict in result.conflicts:
            message = valid[conflict.index].message
            self._log.warning(
                "conflict: order_id already stored with a different payload; kept the stored row",
                order_id=conflict.order_id,
                fields=list(conflict.fields),
                partition=message.partition(),
                offset=message.offset(),
            )
        if self._log.is_enabled_for(logging.DEBUG):
            for entry in valid:
                if entry.order is not None:
                    self._log.debug(
                        "order stored",
                        order_id=entry.order.order_id,
                        partition=entry.message.partition(),
                        offset=entry.message.offset(),
                    )

    def _dead_letter(self, poisoned: list[Entry]) -> None:
        for entry in poisoned:
            assert entry.poison is not None
            self._dlq.send(entry.message, entry.poison)
        if not poisoned:
            return
        self._dlq.flush()  # raises FatalError: then nothing of this batch is committed
        for entry in poisoned:
            assert entry.poison is not None
            self.stats.record_dead_letter(entry.poison.error_class)
            self._log.warning(
                "dead-lettered",
                error_class=entry.poison.error_class,
                reason=entry.poison.reason,
                partition=entry.message.partition(),
                offset=entry.message.offset(),
            )

    # ------------------------------------------------------------------ offsets

    def _commit_pending(self, only: set[PartitionKey] | None = None, *, wait: bool = False) -> None:
        """Commit the written offsets of partitions we still own.

        Asynchronously: the outcome arrives in :meth:`on_commit`; until it does, no
        other commit is sent (except for partitions being revoked). A commit that fails
        for a passing reason (coordinator moving, rebalance in progress) keeps its
        offsets pending for the next iteration; the rows are written, so the only cost
        of a lost commit is a redelivery that the idempotent insert absorbs.
        ``wait=True`` (shutdown only) commits synchronously and settles the outcome at
        once; an asynchronous commit still on its way then is completed by ``close()``,
        which waits for it.
        """
        keys = [k for k in self._pending if (only is None or k in only)]
        for key in keys:
            if key not in self._assigned:
                del self._pending[key]  # no longer ours: its new owner decides
            elif self._pending[key] < self._floors.get(key, 0):
                # The group's committed offset is ahead already: committing this would
                # move it backwards (see _on_assign).
                del self._pending[key]
        if self._committing and self._clock() - self._commit_sent_at > _COMMIT_ANSWER_S:
            self._committing.clear()  # never answered: send the offsets again
        if self._committing and only is None and not wait:
            # One commit request in flight at a time: the next one carries the latest
            # offsets anyway. Sending one per batch while the coordinator did not answer
            # (a stalled broker) queued dozens of OffsetCommit requests on its connection,
            # holding back the heartbeats behind them; after such a stall the member was
            # seen to lose its partitions and never rejoin. Revocations still commit at
            # once: it is the last moment we own those partitions.
            return
        offsets = [
            TopicPartition(topic, partition, self._pending[(topic, partition)])
            for topic, partition in keys
            if (topic, partition) in self._pending
            and self._committing.get((topic, partition)) != self._pending[(topic, partition)]
        ]
        if not offsets:
            return
        try:
            if wait:
                committed = self._consumer.commit(offsets=offsets, asynchronous=False)
            else:
                self._consumer.commit(offsets=offsets, asynchronous=True)
        except KafkaException as exc:
            self._settle_commit(exc.args[0] if exc.args else None, [], exc)
            return
        if wait:
            self._settle_commit(None, committed or offsets)
        else:
            self._commit_sent_at = self._clock()
            for tp in offsets:
                self._committing[_tp_key(tp)] = tp.offset

    def on_commit(self, error: KafkaError | None, partitions: list[TopicPartition]) -> None:
        """librdkafka's ``on_commit`` callback: the outcome of an asynchronous commit."""
        for tp in partitions:
            key = _tp_key(tp)
            if self._committing.get(key) == tp.offset:
                del self._committing[key]
        self._settle_commit(error, partitions)

    def _settle_commit(
        self,
        error: KafkaError | None,
        partitions: list[TopicPartition],
        exc: BaseException | None = None,
    ) -> None:
        """Clear confirmed offsets; count and log failures; stop on a fatal one."""
        if error is not None or exc is not None:
            if isinstance(error, KafkaError):
                if error.code() == KafkaError._NO_OFFSET:
                    return
                if classify_kafka_error(error) is FailureClass.FATAL:
                    raise FatalError(f"offset commit refused: {error.str()}") from None
            self.stats.commit_failures += 1
            self._warn_throttled(
                "commit",
                "offset commit failed; will retry (rows are written, a redelivery is harmless)",
                error=str(error.str() if isinstance(error, KafkaError) else exc),
            )
            return
        for tp in partitions:
            key = _tp_key(tp)
            if getattr(tp, "error", None):
                self.stats.commit_failures += 1
                self._warn_throttled(
                    "commit", "partition offset commit failed; will retry", error=str(tp.error)
                )
            elif self._pending.get(key) == tp.offset:
                del self._pending[key]

    # ------------------------------------------------------------------ waiting

    def _pause(self) -> None:
        assignment = self._consumer.assignment()
        if assignment:
            self._consumer.pause(assignment)
        self._paused = True

    def _resume(self) -> None:
        if not self._paused:
            return
        self._paused = False
        assignment = self._consumer.assignment()
        if assignment:
            self._consumer.resume(assignment)

    def _wait(self, seconds: float) -> bool:
        """Keep polling (paused) for ``seconds``; False if a stop was requested."""
        deadline = self._clock() + seconds
        while not self.stopping:
            remaining = deadline - self._clock()
            if remaining <= 0:
                return True
            message = self._consumer.poll(min(remaining, self._config.poll_slice_s))
            # Offsets of batches written before the failure may still be held back behind
            # a commit that was in flight: send them once it is answered.
            self._commit_pending()
            # A partition assigned during the wait is not paused yet; pause it now.
            self._pause()
            if message is not None:
                error = message.error()
                if error is not None:
                    self._on_kafka_error(error)
                else:
                    # It came from a partition assigned a moment ago: keep it for the next
                    # batch rather than lose it (its offset is beyond this batch's).
                    self._incoming.append(message)
            self._maybe_log_summary()
        return False

    # ------------------------------------------------------------------ rebalances

    def _on_assign(self, _consumer: Any, partitions: list[TopicPartition]) -> None:
        self._lost_at = None  # back in the group
        added = {_tp_key(tp) for tp in partitions}
        # librdkafka 2.16 starts an assigned partition at the committed offset it fetches,
        # but under 2% packet loss and rebalances (tests/fault/network, case 5) a member
        # that had owned a partition before started it again at offset 0, re-read 8,214
        # stored messages and committed offset 1: the group's offset went backwards. So
        # read the committed offsets ourselves and hold every partition to them: a message
        # below is skipped (counted, logged), and no commit goes below.
        self._floors.update(self._committed_offsets(partitions))
        self._assigned |= added
        self._observer.set_assignment(self._assigned)
        self.stats.rebalances += 1
        self._log.info(
            "partitions assigned: this member now owns "
            f"{', '.join(_describe(self._assigned)) or 'nothing'}",
            added=_describe(added),
            owned=_describe(self._assigned),
        )

    def _committed_offsets(self, partitions: list[TopicPartition]) -> dict[PartitionKey, int]:
        """The group's committed offsets of ``partitions`` (those it has), or none."""
        try:
            answer = self._consumer.committed(
                [TopicPartition(tp.topic, tp.partition) for tp in partitions],
                timeout=self._config.committed_timeout_s,
            )
        except KafkaException as exc:
            self._log.warning(
                "could not read the committed offsets of the assigned partitions; consuming"
                " them from where Kafka starts them",
                partitions=_describe({_tp_key(tp) for tp in partitions}),
                error=_one_line(exc),
            )
            return {}
        return {_tp_key(tp): tp.offset for tp in answer if not tp.error and tp.offset >= 0}

    def _below_floor(self, key: PartitionKey, offset: int) -> bool:
        """Whether ``offset`` of partition ``key`` is below its floor (then it is counted)."""
        floor = self._floors.get(key)
        if floor is None or offset >= floor:
            return False
        self.stats.skipped_committed += 1
        self._warn_throttled(
            f"below-committed-{key[1]}",
            "skipped messages below the group's committed offset: another member stored"
            " them already",
            partition=key[1],
            offset=offset,
            committed=floor,
            skipped=self.stats.skipped_committed,
        )
        return True

    def _on_revoke(self, _consumer: Any, partitions: list[TopicPartition]) -> None:
        revoked = {_tp_key(tp) for tp in partitions}
        if self._paused:
            self._unpause |= revoked
        self.stats.rebalances += 1
        # A batch being written may hold messages of these partitions: wait for it, so
        # what it wrote is committed while they are still ours (if it failed, the loop
        # retries what is left of it once the revoked messages are dropped below).
        self._finish_write(in_callback=True)
        dropped = self._drop(revoked)
        # Still ours until this callback returns: commit what is written.
        self._commit_pending(only=revoked)
        for key in revoked:
            self._pending.pop(key, None)
            self._committing.pop(key, None)
            self._floors.pop(key, None)
        self._assigned -= revoked
        self._observer.set_assignment(self._assigned)
        self._log.info(
            "partitions revoked: this member now owns "
            f"{', '.join(_describe(self._assigned)) or 'nothing'}",
            revoked=_describe(revoked),
            owned=_describe(self._assigned),
            unwritten_dropped=dropped,
        )

    def _on_lost(self, _consumer: Any, partitions: list[TopicPartition]) -> None:
        self._lost_at = self._clock()
        lost = {_tp_key(tp) for tp in partitions}
        if self._paused:
            self._unpause |= lost
        self.stats.rebalances += 1
        dropped = self._drop(lost)
        for key in lost:
            self._pending.pop(key, None)  # another member owns them: committing would be wrong
            self._committing.pop(key, None)
            self._floors.pop(key, None)
        self._assigned -= lost
        self._observer.set_assignment(self._assigned)
        self._log.warning(
            "partitions lost (this member was considered dead); nothing committed for them",
            lost=_describe(lost),
            owned=_describe(self._assigned),
            unwritten_dropped=dropped,
        )

    def _drop(self, keys: set[PartitionKey]) -> int:
        """Forget unwritten messages of ``keys``; their next owner reads them again."""
        inflight = self._write.entries if self._write is not None else []
        before = len(inflight) + len(self._incoming)
        # In place: the loop that is waiting on these lists holds references to them. A
        # batch on the writer thread may still write these rows (harmless: the insert is
        # idempotent), but their dead letters and offsets are left to the next owner.
        inflight[:] = [e for e in inflight if e.partition_key not in keys]
        self._incoming[:] = [m for m in self._incoming if _msg_key(m) not in keys]
        dropped = before - len(inflight) - len(self._incoming)
        self.stats.dropped_on_revoke += dropped
        return dropped

    # ------------------------------------------------------------------ shutdown, logs

    def _shutdown(self) -> None:
        write, self._write = self._write, None
        if write is not None and not write.settled:
            # Leaving on an error: the batch on the writer thread is neither dead-lettered
            # nor committed (redelivered after the restart). Wait for its transaction to end
            # (bounded by statement_timeout) so no thread outlives the loop.
            self.stats.abandoned += len(write.entries)
            self._log.warning(
                "stopping with a batch whose outcome is not committed; it will be redelivered",
                messages=len(write.entries),
            )
        self._executor.shutdown(wait=True)
        if self._abandoned:
            # Out of the group and the client wedged (see _check_membership): close()
            # would block on the dead coordinator connection. Nothing is owned, so there
            # is nothing to commit or hand over.
            self._log.info("consumer abandoned (not closed)", **self.stats.snapshot())
            return
        try:
            # The last commit waits for its answer: nothing polls after close().
            self._commit_pending(wait=True)
        except FatalError as exc:
            self._log.error("final offset commit refused", error=str(exc))
        # close() leaves the group now (its revoke callback commits nothing new: the
        # pending offsets were just committed), so the partitions move at once.
        self._consumer.close()
        self._log.info("consumer closed", **self.stats.snapshot())

    def _check_membership(self) -> None:
        if self._lost_at is None:
            return
        waited = self._clock() - self._lost_at
        if waited > self._config.rejoin_timeout_s:
            self._abandoned = True
            raise MembershipLost(
                f"this member lost its partitions {waited:.0f}s ago and the group never took"
                " it back; exiting so that a restart rejoins with a fresh Kafka client"
            )

    def _maybe_log_summary(self) -> None:
        if self.stats.due(self._config.summary_interval_s):
            self._log.info("consumer stats", **self.stats.roll_window())

    def _on_kafka_error(self, error: KafkaError) -> None:
        if classify_kafka_error(error) is FailureClass.FATAL:
            raise FatalError(f"Kafka refused the consumer: {error.str()}")
        if error.code() == KafkaError._PARTITION_EOF:
            return
        self._warn_throttled(error.name(), "kafka error; the client retries", error=error.str())

    def _warn_throttled(self, kind: str, event: str, **fields: Any) -> None:
        now = self._clock()
        if now - self._last_warning.get(kind, float("-inf")) >= 30.0:
            self._last_warning[kind] = now
            self._log.warning(event, **fields)


def _one_line(exc: BaseException) -> str:
    original = getattr(exc, "orig", None) or exc
    text = str(original).strip().splitlines()
    return scrub(text[0] if text else type(exc).__name__)
