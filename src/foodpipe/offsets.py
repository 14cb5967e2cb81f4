"""Read-only views of Kafka for the operations commands: offsets, group, owners, messages.

``foodpipe status``, ``foodpipe audit`` and ``foodpipe dlq`` look at the cluster through
this module, with the admin API only: looking never joins a consumer group, never
commits an offset and never moves a running consumer's partitions.

Vocabulary (per partition):

- *log start*: the oldest offset still retained (retention moves it forward);
- *log end*: what this module reads is the partition's **high watermark**, the end of
  what consumers may read: every replica in the ISR has the messages below it. The
  leader's *log end offset* (the offset its next message will get) can be ahead of it
  while followers catch up; with one broker, or once they have, the two are equal;
- *committed*: the group's committed offset, the next offset the group will read;
- *lag*: log end minus committed. Without a committed offset the group starts at the
  log start (``auto.offset.reset=earliest``), so everything retained counts as lag.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import (
    Consumer,
    ConsumerGroupTopicPartitions,
    KafkaError,
    KafkaException,
    Message,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient
from confluent_kafka.admin._listoffsets import OffsetSpec

from foodpipe.kafka import consumer_config
from foodpipe.settings import Settings


class TopicMissing(Exception):
    """The topic does not exist on the cluster. ``str()`` is one line."""


@dataclass(frozen=True)
class Member:
    """One member of a consumer group, as the group coordinator describes it."""

    member_id: str
    client_id: str
    host: str
    instance_id: str | None = None
    partitions: tuple[tuple[str, int], ...] = ()

    @property
    def short(self) -> str:
        """``client@host#abcd1234``: enough to tell two members on one host apart.

        A static member is named by its ``group.instance.id`` instead, which outlives
        its restarts (the member id is new at every join).
        """
        if self.instance_id:
            return f"{self.client_id}@{self.host.lstrip('/')}#{self.instance_id}"
        suffix = self.member_id.rsplit("-", 5)
        tag = suffix[1] if len(suffix) > 1 else self.member_id
        return f"{self.client_id}@{self.host.lstrip('/')}#{tag[:8]}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "member_id": self.member_id,
            "client_id": self.client_id,
            "host": self.host.lstrip("/"),
            "instance_id": self.instance_id,
        }


@dataclass(frozen=True)
class GroupState:
    group: str
    state: str
    members: tuple[Member, ...] = ()
    #: The group protocol: "classic" or "consumer" (KIP-848); "" when unknown (no group).
    protocol: str = ""

    def owner_of(self, topic: str, partition: int) -> Member | None:
        for member in self.members:
            if (topic, partition) in member.partitions:
                return member
        return None


@dataclass(frozen=True)
class PartitionState:
    partition: int
    log_start: int
    log_end: int
    committed: int | None
    owner: Member | None = None

    @property
    def lag(self) -> int:
        position = self.committed if self.committed is not None else self.log_start
        return max(self.log_end - position, 0)

    @property
    def messages(self) -> int:
        """Messages retained (exact for foodpipe's topics: no transactions, no compaction)."""
        return max(self.log_end - self.log_start, 0)


@dataclass(frozen=True)
class TopicState:
    topic: str
    group: GroupState
    partitions: tuple[PartitionState, ...] = field(default_factory=tuple)

    @property
    def lag(self) -> int:
        return sum(p.lag for p in self.partitions)

    @property
    def log_end(self) -> int:
        return sum(p.log_end for p in self.partitions)

    @property
    def committed(self) -> int:
        return sum(p.committed or 0 for p in self.partitions)

    @property
    def messages(self) -> int:
        return sum(p.messages for p in self.partitions)


_EARLIEST: OffsetSpec = OffsetSpec.earliest()  # type: ignore[no-untyped-call]
_LATEST: OffsetSpec = OffsetSpec.latest()  # type: ignore[no-untyped-call]


class KafkaView:
    """Admin-API reads with one deadline each. Raises ``KafkaException`` on failure."""

    def __init__(self, admin: AdminClient, timeout_s: float = 10.0) -> None:
        self.admin = admin
        self.timeout_s = timeout_s

    def partitions(self, topic: str) -> list[int]:
        # Metadata of all topics, not of this one: asking for one topic by name makes a
        # broker with auto.create.topics.enable=true create it, and a mistyped
        # KAFKA_TOPIC must be reported, not created.
        metadata = self.admin.list_topics(timeout=self.timeout_s)
        described = metadata.topics.get(topic)
        if described is None or described.error is not None or not described.partitions:
            raise TopicMissing(
                f"topic {topic} does not exist; create it with `foodpipe topics`, or check"
                " KAFKA_TOPIC / KAFKA_DLQ_TOPIC"
            )
        return sorted(described.partitions)

    def watermarks(self, topic: str, partitions: list[int]) -> dict[int, tuple[int, int]]:
        """``{partition: (log start, log end)}``."""
        tps = [TopicPartition(topic, p) for p in partitions]
        low = self._list_offsets(tps, _EARLIEST)
        high = self._list_offsets(tps, _LATEST)
        return {p: (low[p], high[p]) for p in partitions}

    def _list_offsets(self, tps: list[TopicPartition], spec: OffsetSpec) -> dict[int, int]:
        futures = self.admin.list_offsets(dict.fromkeys(tps, spec), request_timeout=self.timeout_s)
        return {
            tp.partition: int(future.result(timeout=self.timeout_s + 5).offset)
            for tp, future in futures.items()
        }

    def committed(self, group: str, topic: str, partitions: list[int]) -> dict[int, int | None]:
        """The group's committed offset per partition; ``None`` where it has none."""
        request = ConsumerGroupTopicPartitions(
            group, [TopicPartition(topic, p) for p in partitions]
        )
        future = self.admin.list_consumer_group_offsets([request], request_timeout=self.timeout_s)
        result = future[group].result(timeout=self.timeout_s + 5)
        return {
            tp.partition: (int(tp.offset) if tp.offset >= 0 else None)
            for tp in result.topic_partitions
        }

    def lag(
        self, group: str, topic_partitions: list[tuple[str, int]]
    ) -> dict[tuple[str, int], int]:
        """``{(topic, partition): log end - committed}`` of ``group`` (for a scrape).

        A partition without a committed offset counts from its log start, as the
        consumer (``auto.offset.reset=earliest``) will.
        """
        result: dict[tuple[str, int], int] = {}
        by_topic: dict[str, list[int]] = {}
        for topic, partition in topic_partitions:
            by_topic.setdefault(topic, []).append(partition)
        for topic, partitions in by_topic.items():
            committed = self.committed(group, topic, partitions)
            marks = self.watermarks(topic, partitions)
            for p in partitions:
                low, high = marks[p]
                position = committed.get(p)
                result[(topic, p)] = max(high - (low if position is None else position), 0)
        return result

    def group(self, group: str) -> GroupState:
        """The group's state and members with their assignments.

        A group that never existed (or whose members all left long ago) is reported by
        the coordinator as ``DEAD`` with no members, not as an error.
        """
        future = self.admin.describe_consumer_groups([group], request_timeout=self.timeout_s)
        try:
            description = future[group].result(timeout=self.timeout_s + 5)
        except KafkaException as exc:
            error = exc.args[0] if exc.args else None
            if isinstance(error, KafkaError) and error.code() == KafkaError.GROUP_ID_NOT_FOUND:
                return GroupState(group, "DEAD")
            raise
        members = tuple(
            Member(
                member_id=m.member_id,
                client_id=m.client_id,
                host=m.host,
                instance_id=m.group_instance_id,
                partitions=tuple(
                    (tp.topic, tp.partition)
                    for tp in (m.assignment.topic_partitions if m.assignment else [])
                ),
            )
            for m in description.members
        )
        state = getattr(description.state, "name", str(description.state))
        kind = getattr(description, "type", None)
        protocol = {"CLASSIC": "classic", "CONSUMER": "consumer"}.get(getattr(kind, "name", ""), "")
        return GroupState(group, state, members, protocol)

    def topic_state(self, topic: str, group: str) -> TopicState:
        """Offsets, lag and owner of every partition of ``topic`` for ``group``.

        Read in this order: committed, then log end. Reading the log end last means lag
        is never under-reported by a message produced in between.
        """
        partitions = self.partitions(topic)
        described = self.group(group)
        committed = self.committed(group, topic, partitions)
        marks = self.watermarks(topic, partitions)
        return TopicState(
            topic,
            described,
            tuple(
                PartitionState(
                    partition=p,
                    log_start=marks[p][0],
                    log_end=marks[p][1],
                    committed=committed.get(p),
                    owner=described.owner_of(topic, p),
                )
                for p in partitions
            ),
        )


# ----------------------------------------------------------------- reading messages


class ReadTimeout(Exception):
    """The messages up to the requested offsets did not all arrive before the deadline."""


def read_range(
    settings: Settings,
    topic: str,
    ranges: Mapping[int, tuple[int, int]],
    timeout_s: float = 120.0,
    batch: int = 1000,
) -> Iterator[Message]:
    """Yield every message of ``topic`` with ``start <= offset < end`` per partition.

    Partitions are assigned directly (no subscription, no group membership, nothing
    committed), so reading never disturbs a running consumer group. Messages are
    yielded as they arrive: memory stays bounded by librdkafka's prefetch queue, not by
    the size of the topic. Raises :class:`ReadTimeout` if ``timeout_s`` passes first.
    """
    todo = {p: (start, end) for p, (start, end) in ranges.items() if end > start}
    if not todo:
        return
    consumer = Consumer(
        consumer_config(
            settings,
            # A group id librdkafka wants; it is never joined nor committed to.
            **{"group.id": f"foodpipe-reader-{uuid.uuid4().hex[:12]}"},
            **{"enable.partition.eof": True, "client.id": "foodpipe-reader"},
        )
    )
    try:
        consumer.assign([TopicPartition(topic, p, start) for p, (start, _end) in todo.items()])
        deadline = time.monotonic() + timeout_s
        while todo:
            if time.monotonic() > deadline:
                left = {p: f"{s}..{e}" for p, (s, e) in sorted(todo.items())}
                raise ReadTimeout(
                    f"reading {topic} timed out after {timeout_s:g}s; still expected {left}"
                )
            for message in consumer.consume(num_messages=batch, timeout=0.5):
                partition = message.partition()
                error = message.error()
                if partition is None or partition not in todo:
                    continue
                end = todo[partition][1]
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        # At the end of the log: nothing more will come below ``end``
                        # (an offset may be missing when the log was truncated).
                        if (message.offset() or 0) >= end:
                            del todo[partition]
                        continue
                    raise KafkaException(error)
                offset = message.offset() or 0
                if offset >= end:
                    del todo[partition]
                    continue
                yield message
                if offset + 1 >= end:
                    del todo[partition]
    finally:
        consumer.close()
