"""The producer's counters, in one object so they can be logged now and exported later."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(slots=True)
class ProducerStats:
    """Counts of distinct orders, not of send attempts (except ``retried``).

    Every order that librdkafka accepted at least once is, at any moment, exactly one of
    delivered, failed or in flight (queued, awaiting its delivery report, or waiting
    for an application-level retry).
    """

    #: Orders accepted by librdkafka at least once.
    sent: int = 0
    #: Orders whose delivery the broker confirmed (acks=all).
    delivered: int = 0
    #: Orders given up on: a permanent error, or transient errors past every retry.
    failed: int = 0
    #: Application-level re-sends after a transient delivery error.
    retried: int = 0
    #: Times ``produce()`` found the local queue full (handled by polling).
    buffer_full: int = 0

    @property
    def in_flight(self) -> int:
        return self.sent - self.delivered - self.failed

    def as_dict(self) -> dict[str, int]:
        return {**asdict(self), "in_flight": self.in_flight}
