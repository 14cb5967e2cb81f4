"""Kafka client configuration and topic administration, in one place.

Every librdkafka configuration dict foodpipe uses is built here, so the producer, the
consumer, the admin tools and the tests can never disagree about a setting.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import (  # type: ignore[attr-defined]
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    NewTopic,
    ResourceType,
)

from foodpipe.errors import FatalError
from foodpipe.settings import Settings


class BrokerUnreachable(Exception):
    """No broker answered within the deadline. ``str()`` is one line."""


class GroupConfigRefused(FatalError):
    """The broker refused the group's session timeout (``consumer`` protocol only)."""


class BrokerRefused(BrokerUnreachable):
    """A broker answered and refused us: the login or the TLS handshake failed.

    Waiting longer cannot help, so it is raised at once. ``str()`` is one line naming
    the settings to check.
    """


class _RepeatFilter(logging.Filter):
    """Let each distinct librdkafka message through once per ``window_s``.

    A broker that is down makes librdkafka repeat the same connection error many times
    a second; one line says it as well as a hundred.
    """

    def __init__(self, window_s: float = 30.0) -> None:
        super().__init__()
        self._window_s = window_s
        self._last: dict[str, float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        # Strip the "(after 3ms in state CONNECT)" tail so repeats compare equal.
        key = record.getMessage().split(" (after ")[0]
        now = time.monotonic()
        if now - self._last.get(key, -self._window_s) < self._window_s:
            return False
        if len(self._last) > 1000:
            self._last.clear()
        self._last[key] = now
        return True


#: librdkafka's own log lines go through this stdlib logger, so they come out as the
#: same JSON lines as foodpipe's instead of raw text on stderr.
RDKAFKA_LOGGER = logging.getLogger("librdkafka")
RDKAFKA_LOGGER.addFilter(_RepeatFilter())


def common_config(settings: Settings) -> dict[str, Any]:
    """What every client shares: where the brokers are, and how to reach them securely."""
    return {
        "bootstrap.servers": settings.kafka_bootstrap_servers,
        "client.id": "foodpipe",
        "logger": RDKAFKA_LOGGER,
        **security_config(settings),
    }


def security_config(settings: Settings) -> dict[str, str]:
    """``security.protocol`` and, when it asks for them, the SASL login and TLS files.

    Every producer, consumer and admin client foodpipe builds gets these through
    :func:`common_config`. Settings validation has already checked the combination
    (a SASL protocol has a user and a password; TLS files only with a TLS protocol).
    """
    protocol = settings.kafka_security_protocol
    config: dict[str, str] = {"security.protocol": protocol}
    if protocol.startswith("SASL_"):
        config["sasl.mechanism"] = settings.kafka_sasl_mechanism
        config["sasl.username"] = settings.kafka_sasl_username or ""
        password = settings.kafka_sasl_password
        config["sasl.password"] = password.get_secret_value() if password else ""
    if protocol.endswith("SSL"):
        files = {
            "ssl.ca.location": settings.kafka_ssl_ca_location,
            "ssl.certificate.location": settings.kafka_ssl_certificate_location,
            "ssl.key.location": settings.kafka_ssl_key_location,
        }
        config.update({key: str(path) for key, path in files.items() if path is not None})
        if settings.kafka_ssl_key_password is not None:
            config["ssl.key.password"] = settings.kafka_ssl_key_password.get_secret_value()
        config["ssl.endpoint.identification.algorithm"] = settings.kafka_ssl_endpoint_identification
    return config


def java_security_properties(config: Mapping[str, Any]) -> dict[str, str]:
    """The security part of a librdkafka ``config`` as Java client properties.

    For Kafka's own Java tools the bench runs (``ProducerPerformance``), so they connect
    exactly as foodpipe's clients do. PEM files are read into the properties: the Java
    client takes a PEM key and chain inline, not as paths. The result holds secrets:
    write it to a file only this user can read, never to a command line.
    """
    protocol = str(config.get("security.protocol", "PLAINTEXT"))
    props = {"security.protocol": protocol}
    if protocol.startswith("SASL_"):
        mechanism = str(config["sasl.mechanism"])
        module = (
            "org.apache.kafka.common.security.plain.PlainLoginModule"
            if mechanism == "PLAIN"
            else "org.apache.kafka.common.security.scram.ScramLoginModule"
        )
        user, password = (
            json.dumps(str(config[key])) for key in ("sasl.username", "sasl.password")
        )
        props["sasl.mechanism"] = mechanism
        props["sasl.jaas.config"] = f"{module} required username={user} password={password};"
    if protocol.endswith("SSL"):
        if "ssl.ca.location" in config:
            props["ssl.truststore.type"] = "PEM"
            props["ssl.truststore.location"] = str(config["ssl.ca.location"])
        if "ssl.certificate.location" in config:
            props["ssl.keystore.type"] = "PEM"
            props["ssl.keystore.certificate.chain"] = Path(
                config["ssl.certificate.location"]
            ).read_text()
            props["ssl.keystore.key"] = Path(config["ssl.key.location"]).read_text()
            if "ssl.key.password" in config:
                props["ssl.key.password"] = str(config["ssl.key.password"])
        algorithm = config.get("ssl.endpoint.identification.algorithm", "https")
        props["ssl.endpoint.identification.algorithm"] = "" if algorithm == "none" else "https"
    return props


def producer_config(settings: Settings, **overrides: Any) -> dict[str, Any]:
    """An idempotent producer that loses nothing it has confirmed.

    - ``enable.idempotence`` + ``acks=all``: a retried send cannot duplicate or reorder
      a message within a partition, and a confirmation means every in-sync replica has it.
    - ``linger.ms``/``compression.type``: wait a few ms to fill batches, then compress
      them; JSON orders compress well and the broker stores fewer bytes.
    - ``queue.buffering.max.*``: bound the local queue (librdkafka's default allows about
      1 GiB) so the producer fits a 128 MB container even when the broker stalls; a full
      queue raises ``BufferError``, which the producer handles by polling.
    """
    # librdkafka's default partitioner hashes keys with CRC32 ("consistent_random");
    # the Java client uses murmur2, so a Java and a Python producer put the same key on
    # different partitions unless "partitioner" is set to "murmur2_random".
    config = {
        **common_config(settings),
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 10,
        "compression.type": "lz4",
        "batch.size": 256 * 1024,
        # Measured: a queued ~330-byte order costs about 0.9 KiB of RSS in librdkafka,
        # over a ~72 MiB baseline. With 50,000 queued (a stalled broker) the producer
        # peaked at 116 MiB, too close to 128; with 10,000 the same stall peaked at 80 MiB.
        # At full speed (~50k orders/s) fewer than 3,000 are ever queued, so the bound
        # costs no throughput.
        "queue.buffering.max.messages": 10_000,
        "queue.buffering.max.kbytes": 4 * 1024,
        "delivery.timeout.ms": 120_000,
        # A broker cut off by the network answers nothing, and a produce request sent to
        # it waits for socket.timeout.ms (librdkafka's default: 60 s) before its batch may
        # go to the new leader. Leadership moves in ~10 s (broker.session.timeout.ms), so
        # with the default every order for the isolated leader's partitions waited a
        # minute (tests/fault/network, case 3). 15 s, with the broker's own wait for the
        # in-sync replicas (request.timeout.ms) below it so that a slow ISR is answered
        # with a retriable error before the client gives up on the connection. A retry
        # of a batch that did land is absorbed by idempotence (same sequence number).
        "request.timeout.ms": 10_000,
        "socket.timeout.ms": 15_000,
    }
    config.update(overrides)
    return config


def consumer_config(settings: Settings, **overrides: Any) -> dict[str, Any]:
    """A consumer that never commits an offset on its own.

    ``enable.auto.commit=false`` and ``enable.auto.offset.store=false``: the consumer
    stores and commits offsets itself, and only after the database transaction that holds
    the rows has committed. ``auto.offset.reset=earliest``: a brand-new group starts at
    the beginning of the topic instead of skipping what is already there.
    ``queued.max.messages.kbytes``/``queued.min.messages``/``fetch.max.bytes``/
    ``max.partition.fetch.bytes`` bound the prefetch queue so a large backlog cannot
    push the process past its 128 MB limit. librdkafka's defaults (64 MB queue, 100,000
    messages per partition) let the consumer reach ~150 MB peak RSS while draining a
    backlog; these values measured ~95 MB with no loss of drain rate, because the loop is
    bound by validation and the database, not by fetching (1 MB is ~2,000 orders).
    """
    config: dict[str, Any] = {
        **common_config(settings),
        "group.id": settings.kafka_consumer_group,
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "queued.max.messages.kbytes": 1024,
        "queued.min.messages": 1000,
        "fetch.max.bytes": 1024 * 1024,
        "max.partition.fetch.bytes": 512 * 1024,
        # With queues this small the thresholds above are hit all the time, and each hit
        # postpones that partition's next fetch by fetch.queue.backoff.ms (default 1 s):
        # a bare drain measured 10k msg/s at the default, 380k at 10 ms, same RSS.
        "fetch.queue.backoff.ms": 10,
        # The loop polls at least every half second, even while it waits on the
        # database (each database call is bounded to a third of this; see db.py).
        "max.poll.interval.ms": settings.kafka_max_poll_interval_ms,
        **group_protocol_config(settings),
    }
    config.update(overrides)
    return config


def group_protocol_config(settings: Settings) -> dict[str, Any]:
    """How this member joins its group: the protocol, the assignor, static membership.

    - ``classic``: the client side decides. ``cooperative-sticky``: when a member joins
      or leaves, only the partitions that move are revoked; the others keep being
      consumed during the rebalance. The session timeout and heartbeat are the client's.
    - ``consumer`` (KIP-848): the broker assigns and every assignor is sticky and
      incremental. librdkafka refuses ``session.timeout.ms``, ``heartbeat.interval.ms``
      and ``partition.assignment.strategy`` in this protocol ("defined broker side"):
      the group's own ``consumer.session.timeout.ms``/``consumer.heartbeat.interval.ms``
      govern, which :func:`group_timeouts` gives the same values and the consumer sets
      on the group at start (:func:`apply_group_timeouts`).
    - ``group.instance.id`` (static membership, either protocol): the caller passes the
      id it claimed (:mod:`foodpipe.membership`), since ``auto`` resolves per process.
    """
    if settings.kafka_group_protocol == "consumer":
        config: dict[str, Any] = {"group.protocol": "consumer"}
        if settings.kafka_group_remote_assignor:
            config["group.remote.assignor"] = settings.kafka_group_remote_assignor
        return config
    session_ms, heartbeat_ms = group_timeouts(settings)
    return {
        "group.protocol": "classic",
        "partition.assignment.strategy": "cooperative-sticky",
        # A crashed member's partitions wait this long before moving to the others.
        "session.timeout.ms": session_ms,
        "heartbeat.interval.ms": heartbeat_ms,
    }


def group_timeouts(settings: Settings) -> tuple[int, int]:
    """(session timeout, heartbeat interval) in ms, the same in both protocols.

    At least three heartbeats per session, so one lost heartbeat never evicts a member,
    and one a second at most often. In the classic protocol the members learn of a
    rebalance from a heartbeat's answer, and a partition that moves takes two rounds
    (cooperative-sticky), so the interval sets how fast a scale-out settles: with
    librdkafka's 3 s, three consumers starting on a backlog had one of them drain ~90%
    of it while the others waited 6 s for their partitions; with 1 s they got them
    after 2 s, and the drain of 200,000 orders went from 24.7k-27.0k to 33.8k-37.0k
    orders/s (2026-12-02). The cost is one small request a second per member.
    """
    session_ms = settings.kafka_session_timeout_ms
    return session_ms, min(1_000, session_ms // 3)


def group_config_resource(settings: Settings) -> ConfigResource:
    """The group's own session timeout and heartbeat, for the ``consumer`` protocol.

    The broker accepts values between its ``group.consumer.min/max.session.timeout.ms``
    (and ``...heartbeat.interval.ms``) bounds; its defaults (45 s and 5 s minimum) would
    refuse Compose's 10 s, so the stacks foodpipe ships lower the minimums.
    """
    session_ms, heartbeat_ms = group_timeouts(settings)
    return ConfigResource(
        ResourceType.GROUP,
        settings.kafka_consumer_group,
        incremental_configs=[
            ConfigEntry(
                "consumer.session.timeout.ms",
                str(session_ms),
                incremental_operation=AlterConfigOpType.SET,
            ),
            ConfigEntry(
                "consumer.heartbeat.interval.ms",
                str(heartbeat_ms),
                incremental_operation=AlterConfigOpType.SET,
            ),
        ],
    )


def apply_group_timeouts(admin: AdminClient, settings: Settings, timeout_s: float) -> None:
    """Set the group's session timeout and heartbeat on the broker (``consumer`` only).

    Idempotent: every member sets the same values. Raises :class:`GroupConfigRefused`
    with one line when the broker says no (bounds, or no ALTER_CONFIGS on the group).
    """
    if settings.kafka_group_protocol != "consumer":
        return
    resource = group_config_resource(settings)
    future = admin.incremental_alter_configs([resource])[resource]
    try:
        future.result(timeout=timeout_s)
    except KafkaException as exc:
        error = exc.args[0] if exc.args else exc
        detail = error.str() if isinstance(error, KafkaError) else str(error)
        raise GroupConfigRefused(
            f"the broker refused KAFKA_SESSION_TIMEOUT_MS={settings.kafka_session_timeout_ms}"
            f" for group {settings.kafka_consumer_group} ({detail}); with"
            " KAFKA_GROUP_PROTOCOL=consumer the broker's group.consumer.min.session.timeout.ms"
            " and group.consumer.min.heartbeat.interval.ms must allow it: lower them on the"
            " broker, or raise KAFKA_SESSION_TIMEOUT_MS"
        ) from None


def admin_config(settings: Settings, **overrides: Any) -> dict[str, Any]:
    config = common_config(settings)
    config.update(overrides)
    return config


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    replication_factor: int
    config: Mapping[str, str]


def topic_specs(settings: Settings) -> list[TopicSpec]:
    """The orders topic and its dead-letter topic.

    The DLQ keeps the same partition count, so a dead-lettered message can stay on the
    partition of its key, and a longer retention (30 days) because someone has to look
    at it before it expires.
    """
    orders = TopicSpec(
        settings.kafka_topic,
        settings.kafka_topic_partitions,
        settings.kafka_replication_factor,
        {"retention.ms": str(settings.kafka_retention_ms)},
    )
    dlq = TopicSpec(
        settings.kafka_dlq_topic,
        settings.kafka_topic_partitions,
        settings.kafka_replication_factor,
        {"retention.ms": str(30 * 24 * 3600 * 1000)},
    )
    return [orders, dlq]


def wait_for_broker(
    admin: AdminClient, settings: Settings, timeout_s: float, min_brokers: int = 1
) -> None:
    """Poll the cluster's metadata until ``min_brokers`` brokers are registered.

    Waiting for every broker of a cluster matters before creating replicated topics:
    a topic with replication factor 3 cannot be created while only 2 brokers are known.
    """
    deadline = time.monotonic() + timeout_s
    last_error = "no answer"
    # After a failed attempt, a client that reports librdkafka's errors tells a refused
    # login or certificate apart from a broker that is not there (list_topics says
    # "Broker transport failure" for all three).
    reported: list[KafkaError] = []
    probe: AdminClient | None = None
    while True:
        refusal = _refusal(reported, settings)
        if refusal:
            raise BrokerRefused(refusal)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise BrokerUnreachable(
                f"cannot reach Kafka at {settings.kafka_bootstrap_servers} within "
                f"{timeout_s:g}s ({last_error}); is the broker running? "
                "Check KAFKA_BOOTSTRAP_SERVERS"
            )
        try:
            metadata = (probe or admin).list_topics(timeout=min(2.0, max(remaining, 0.1)))
        except KafkaException as exc:
            last_error = str(exc.args[0].str() if exc.args else exc)
            if probe is None:
                probe = AdminClient(admin_config(settings, error_cb=reported.append))
            else:
                probe.poll(0)  # error_cb is served by poll
            continue
        if len(metadata.brokers) >= min_brokers:
            return
        last_error = f"{len(metadata.brokers)} of {min_brokers} brokers registered"


def _refusal(reported: list[KafkaError], settings: Settings) -> str | None:
    """One line for a refused login or TLS handshake among ``reported``, else None."""
    where = f"Kafka at {settings.kafka_bootstrap_servers}"
    for error in reported:
        # "sasl_ssl://host:port/bootstrap: SASL authentication error: ... (after 3ms in
        # state AUTH_REQ)": keep the middle.
        detail = error.str().split(" (after ")[0]
        if "://" in detail.split(": ", 1)[0]:
            detail = detail.split(": ", 1)[-1]
        if error.code() == KafkaError._AUTHENTICATION:
            return (
                f"{where} refused the login of KAFKA_SASL_USERNAME="
                f"{settings.kafka_sasl_username} ({detail}); check KAFKA_SASL_USERNAME,"
                " KAFKA_SASL_PASSWORD and KAFKA_SASL_MECHANISM"
            )
        if error.code() == KafkaError._SSL:
            detail = detail.split(": broker certificate could not be verified")[0]
            return (
                f"TLS with {where} failed ({detail}); check KAFKA_SSL_CA_LOCATION (the CA"
                " that signed the broker's certificate), the host name in"
                " KAFKA_BOOTSTRAP_SERVERS and KAFKA_SECURITY_PROTOCOL"
            )
    return None


def ensure_topics(
    admin: AdminClient, specs: list[TopicSpec], timeout_s: float = 30.0
) -> dict[str, str]:
    """Create each topic unless it exists. Returns ``{name: "created" | "exists"}``.

    Idempotent. An existing topic with a different partition count is reported, not
    altered: adding partitions remaps keys to partitions, which breaks per-customer
    ordering, so that is a decision for a human.
    """
    existing = admin.list_topics(timeout=timeout_s).topics
    result: dict[str, str] = {}
    to_create = []
    for spec in specs:
        if spec.name in existing:
            have = len(existing[spec.name].partitions)
            result[spec.name] = (
                "exists" if have == spec.partitions else f"exists with {have} partitions"
            )
        else:
            to_create.append(
                NewTopic(
                    spec.name,
                    num_partitions=spec.partitions,
                    replication_factor=spec.replication_factor,
                    config=dict(spec.config),
                )
            )
    if to_create:
        futures = admin.create_topics(to_create, operation_timeout=timeout_s)
        for name, future in futures.items():
            try:
                future.result(timeout=timeout_s)
                result[name] = "created"
            except KafkaException as exc:
                error = exc.args[0]
                # Another process created it between our check and our request.
                if error.name() == "TOPIC_ALREADY_EXISTS":
                    result[name] = "exists"
                else:
                    raise
    return result
