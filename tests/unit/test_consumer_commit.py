"""Offset commits never block the poll loop (found by the fault suite, case 7).

A broker frozen for 30 s (longer than the group session) while a synchronous commit was
in flight hung the consumer for good: librdkafka declared the assignment lost and waited
for the application to serve ``on_lost``, while the application, blocked inside
``commit()``, waited for librdkafka. py-spy showed the only thread in
``rd_kafka_commit_queue``; the debug log showed the group parked in
``wait-unassign-call``. Commits inside the loop are now asynchronous and confirmed
through ``on_commit``; only the last one, at shutdown, waits.
"""

from __future__ import annotations

from confluent_kafka import KafkaError, TopicPartition

from tests.poison import valid_order
from tests.unit.test_consumer_service import TOPIC, Harness, make_harness, msg


class StalledCoordinator(Exception):
    """What a synchronous commit would do here: never return."""


def stall_sync_commits(h: Harness) -> list[bool]:
    """Make every commit record whether it waits; one that waits in the loop fails."""
    calls: list[bool] = []
    original = h.consumer.commit

    def commit(*, offsets: list[TopicPartition], asynchronous: bool) -> object:
        calls.append(asynchronous)
        if not asynchronous and not h.service.stopping:
            raise StalledCoordinator("a synchronous commit in the loop blocks for ever here")
        return original(offsets=offsets, asynchronous=asynchronous)

    h.consumer.commit = commit  # type: ignore[method-assign]
    return calls


def test_the_loop_commits_asynchronously_and_settles_on_the_callback() -> None:
    h = make_harness()
    calls = stall_sync_commits(h)
    h.consumer.steps = [[msg(0, 0, valid_order(1))], [msg(0, 1, valid_order(2))]]
    h.run()
    assert h.of("commit") == [("commit", {(0, 1)}), ("commit", {(0, 2)})]
    assert calls == [True, True]  # nothing left to commit at shutdown
    assert h.service.stats.commit_failures == 0


def test_a_lost_assignment_during_a_commit_is_served_and_the_loop_goes_on() -> None:
    h = make_harness()
    calls = stall_sync_commits(h)
    held: list[tuple[object, list[TopicPartition]]] = []
    commit = h.consumer.commit

    def unanswered_first_commit(*, offsets: list[TopicPartition], asynchronous: bool) -> object:
        result = commit(offsets=offsets, asynchronous=asynchronous)
        if not held:  # the coordinator stalls: no answer to the first commit for now
            held.extend(h.consumer.reports)
            h.consumer.reports.clear()
        return result

    h.consumer.commit = unanswered_first_commit  # type: ignore[method-assign]

    def session_expires() -> list[object]:
        # The commit of the first batch is still unanswered when the session expires.
        h.consumer.revoke([(TOPIC, 0), (TOPIC, 1), (TOPIC, 2)], lost=True)
        # ... and then fails: the member it was sent for is gone.
        h.consumer.reports.append((KafkaError(KafkaError.UNKNOWN_MEMBER_ID), held[0][1]))
        h.consumer.assign([(TOPIC, 0), (TOPIC, 1), (TOPIC, 2)])
        return []

    h.consumer.steps = [
        [msg(0, 0, valid_order(1))],
        session_expires,  # type: ignore[list-item]
        [msg(0, 0, valid_order(1)), msg(0, 1, valid_order(2))],  # redelivered from offset 0
    ]
    h.run()
    assert h.service.stats.written == 2
    assert h.service.stats.duplicates == 1  # the redelivery, absorbed
    assert h.service.stats.commit_failures == 1
    assert h.of("commit")[-1] == ("commit", {(0, 2)})
    assert all(calls), "a synchronous commit inside the loop"
