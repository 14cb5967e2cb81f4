"""Prometheus metrics and the ``/healthz``, ``/readyz``, ``/metrics`` endpoints.

Every metric foodpipe exports is defined here, once. Each service builds its own
:class:`~prometheus_client.CollectorRegistry` (never the global one), so tests and
several services in one process never collide, and a scrape shows exactly one
service's numbers.

Counters are not incremented twice. The services already count their work in plain
stats objects (:class:`foodpipe.producer.stats.ProducerStats`,
:class:`foodpipe.consumer.stats.ConsumerStats`) that their summary log lines read;
:class:`ProducerMetrics` and :class:`ConsumerMetrics` register a collector that reads
those objects *at scrape time*. The hot path pays nothing for the counters, and the
log line and ``/metrics`` can never disagree. What a stats object does not hold
(histograms of batch size and latency, end-to-end latency, owned partitions) the
service reports through the methods of these two classes; lag is read at scrape time.

Exported names (all prefixed ``foodpipe_``):

==========================================  =========  ====================================
metric                                      type       meaning
==========================================  =========  ====================================
orders_produced_total                       counter    orders handed to the Kafka client
orders_delivered_total                      counter    orders the broker confirmed (acks=all)
orders_failed_total                         counter    orders given up on (logged with id)
orders_in_flight                            gauge      produced, awaiting a delivery report
producer_retries_total                      counter    application re-sends after an error
producer_buffer_full_total                  counter    times the local queue was full
messages_consumed_total                     counter    messages the consumer received
orders_written_total                        counter    rows inserted into PostgreSQL
orders_duplicate_total                      counter    orders already stored (redeliveries)
orders_conflict_total                       counter    duplicates with a different payload
orders_dead_lettered_total{error_class}     counter    messages sent to the DLQ, by class
batches_total                               counter    batches written and committed
db_retries_total                            counter    transient database errors retried
offset_commit_failures_total                counter    offset commits that failed
rebalances_total                            counter    assign / revoke / lost callbacks
batch_size                                  histogram  messages per batch
batch_latency_seconds                       histogram  decode + write + commit of a batch
end_to_end_latency_seconds                  histogram  row committed minus ``created_at``
consumer_lag{topic,partition}               gauge      log-end offset minus committed offset
consumer_assigned_partitions                gauge      partitions this member owns now
group_lag{group,topic,partition}            gauge      the group's lag, read by the producer
==========================================  =========  ====================================

Both services also export the standard ``process_*`` metrics of ``prometheus_client``
(on Linux): ``process_start_time_seconds`` is how an alert sees a service restart, and
resident memory, CPU seconds and open descriptors come with it.

Lag is exported twice, on purpose. Each consumer reports ``consumer_lag`` for the
partitions it owns; when no member is alive (the case an operator most needs to hear
about) nothing would report it. So the producer, which talks to the broker anyway,
reports ``group_lag``: the lag of ``KAFKA_CONSUMER_GROUP`` on its topic, every
partition, whether or not any member runs. The alert rules
(``deploy/monitoring/alerts.yml``) read both.

The HTTP server (:func:`serve`) is a small threaded ``http.server``: ``/healthz`` answers
200 while the process runs; ``/readyz`` answers 200 or 503 from a callable the service
supplies (connected, and for the consumer, partitions assigned); ``/metrics`` is the
Prometheus text format. It binds ``METRICS_HOST:METRICS_PORT``; port 0 turns it off.
It serves at most :data:`MAX_CONNECTIONS` clients at once, each for at most
:data:`CLIENT_TIMEOUT_S` seconds of silence, and a client that goes away early costs one
debug log line, not a traceback on stderr.
"""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Gauge, Histogram, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector

from foodpipe import __version__
from foodpipe.consumer.classify import ErrorClass
from foodpipe.log import get_logger
from foodpipe.settings import ConfigError, Settings

PREFIX = "foodpipe"

#: Connections served at once. Probes and scrapes come one at a time; a client beyond
#: this is closed at once instead of getting a thread (50 slow clients held 50 threads).
MAX_CONNECTIONS = 16
#: Seconds a client may take to send its request or read the answer; a slow or silent
#: one loses its connection and frees its thread.
CLIENT_TIMEOUT_S = 5.0

#: Messages per batch: from a trickle (1) to the largest BATCH_SIZE allowed.
BATCH_SIZE_BUCKETS = (1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10_000, 100_000)
#: A healthy batch takes milliseconds; seconds mean the database is struggling.
BATCH_LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0
)  # fmt: skip
#: From "the consumer keeps up" (tens of ms) to "it is draining a backlog" (minutes).
END_TO_END_BUCKETS = (
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0
)  # fmt: skip


class ProducerCounts(Protocol):
    """What :class:`ProducerMetrics` reads (``foodpipe.producer.stats.ProducerStats``)."""

    sent: int
    delivered: int
    failed: int
    retried: int
    buffer_full: int

    @property
    def in_flight(self) -> int: ...


class ConsumerCounts(Protocol):
    """What :class:`ConsumerMetrics` reads (``foodpipe.consumer.stats.ConsumerStats``)."""

    consumed: int
    written: int
    duplicates: int
    conflicts: int
    batches: int
    db_retries: int
    commit_failures: int
    rebalances: int

    @property
    def dead_lettered_by_class(self) -> Mapping[str, int]: ...


class _StatsCollector(Collector):
    """Turns attributes of a stats object into metric families at scrape time."""

    def __init__(
        self,
        families: Callable[[], Iterable[Metric]],
        describe: Callable[[], Iterable[Metric]] | None = None,
    ) -> None:
        self._families = families
        self._describe = describe or families

    def collect(self) -> Iterator[Metric]:
        yield from self._families()

    def describe(self) -> Iterator[Metric]:
        # The registry learns the names from this, so registering the same metrics twice
        # on one registry fails loudly instead of exporting them twice.
        yield from self._describe()


def _counter(name: str, documentation: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(f"{PREFIX}_{name}", documentation, value=value)


def _info(registry: CollectorRegistry, service: str) -> None:
    """``foodpipe_build_info`` and the process metrics (start time, memory, CPU, fds)."""
    gauge = Gauge(
        f"{PREFIX}_build_info",
        "Always 1; the labels say which foodpipe service and version this is",
        ["service", "version"],
        registry=registry,
    )
    gauge.labels(service=service, version=__version__).set(1)
    ProcessCollector(registry=registry)


#: Reads the lag of the whole consumer group on the producer's topic, every partition:
#: ``{(topic, partition): log end - committed}``. Called at scrape time.
GroupLagReader = Callable[[], Mapping[tuple[str, int], int]]


class ProducerMetrics:
    """The producer's metrics: counters read from its :class:`ProducerCounts`.

    With a ``group_lag`` reader it also exports ``foodpipe_group_lag``: the lag of
    consumer group ``group`` on every partition, read from the broker at scrape time,
    so lag stays visible (and alertable) while no consumer runs.
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        stats: ProducerCounts,
        group: str = "",
        group_lag: GroupLagReader | None = None,
    ) -> None:
        self.registry = registry
        self._stats = stats
        self._group = group
        self._group_lag = group_lag
        self._log = get_logger("observability")
        _info(registry, "producer")
        registry.register(_StatsCollector(self._families))
        # Described without reading: registering must not ask the broker anything.
        registry.register(
            _StatsCollector(self._group_lag_families, lambda: [self._group_lag_family()])
        )

    @staticmethod
    def _group_lag_family() -> GaugeMetricFamily:
        return GaugeMetricFamily(
            f"{PREFIX}_group_lag",
            "Messages behind: log-end offset minus the consumer group's committed offset,"
            " for every partition of the topic, whether or not a member is alive",
            labels=["group", "topic", "partition"],
        )

    def _group_lag_families(self) -> list[Metric]:
        family = self._group_lag_family()
        if self._group_lag is not None:
            try:
                lags = self._group_lag()
            except Exception as exc:  # a scrape must answer even when the broker does not
                self._log.warning("group lag unavailable", group=self._group, error=str(exc))
                lags = {}
            for (topic, partition), lag in sorted(lags.items()):
                family.add_metric([self._group, topic, str(partition)], max(lag, 0))
        return [family]

    def _families(self) -> list[Metric]:
        stats = self._stats
        in_flight = GaugeMetricFamily(
            f"{PREFIX}_orders_in_flight",
            "Orders produced and still awaiting their delivery report or a retry",
            value=stats.in_flight,
        )
        return [
            _counter(
                "orders_produced",
                "Orders handed to the Kafka client (each distinct order once)",
                stats.sent,
            ),
            _counter("orders_delivered", "Orders the broker confirmed (acks=all)", stats.delivered),
            _counter(
                "orders_failed",
                "Orders given up on after a permanent error or every retry",
                stats.failed,
            ),
            in_flight,
            _counter(
                "producer_retries",
                "Application-level re-sends after a transient delivery error",
                stats.retried,
            ),
            _counter(
                "producer_buffer_full",
                "Times produce() found the bounded local queue full (handled by polling)",
                stats.buffer_full,
            ),
        ]


#: Reads the lag of the given partitions for the service's group:
#: ``{(topic, partition): log end - committed}``. Called at scrape time.
LagReader = Callable[[list[tuple[str, int]]], Mapping[tuple[str, int], int]]


class ConsumerMetrics:
    """The consumer's metrics.

    Counters are read from its :class:`ConsumerCounts`. The service calls
    :meth:`observe_batch` after each committed batch, :meth:`observe_end_to_end` with
    the ``created_at`` of the rows it inserted, and :meth:`set_assignment` from its
    rebalance callbacks.

    Lag is read at scrape time by ``lag_reader`` (the admin API: committed offset and
    log end as the broker sees them), only for the partitions this member owns. So it
    costs the poll loop nothing, and it keeps growing while the consumer is stuck (a
    database outage, partitions paused): exactly when someone needs to see it. Summed
    over the members of a group, it is the group's lag.
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        stats: ConsumerCounts,
        lag_reader: LagReader | None = None,
    ) -> None:
        self.registry = registry
        self._stats = stats
        self._lag_reader = lag_reader
        self._owned: frozenset[tuple[str, int]] = frozenset()
        self._log = get_logger("observability")
        _info(registry, "consumer")
        registry.register(_StatsCollector(self._families))
        registry.register(_StatsCollector(self._lag_families))
        self.batch_size = Histogram(
            f"{PREFIX}_batch_size",
            "Messages per batch handled by the consumer (valid and dead-lettered)",
            buckets=BATCH_SIZE_BUCKETS,
            registry=registry,
        )
        self.batch_latency = Histogram(
            f"{PREFIX}_batch_latency_seconds",
            "Time to decode, write and commit one batch, from its first message received",
            buckets=BATCH_LATENCY_BUCKETS,
            registry=registry,
        )
        self.end_to_end = Histogram(
            f"{PREFIX}_end_to_end_latency_seconds",
            "From an order's created_at to the commit of its row in PostgreSQL",
            buckets=END_TO_END_BUCKETS,
            registry=registry,
        )
        self.assigned = Gauge(
            f"{PREFIX}_consumer_assigned_partitions",
            "Partitions currently assigned to this consumer",
            registry=registry,
        )

    @property
    def owned(self) -> frozenset[tuple[str, int]]:
        """The partitions this member owns (safe to read from any thread)."""
        return self._owned

    def _families(self) -> list[Metric]:
        stats = self._stats
        dead = CounterMetricFamily(
            f"{PREFIX}_orders_dead_lettered",
            "Messages sent to the dead-letter topic, by error class",
            labels=["error_class"],
        )
        # Every known class from the start, at 0: a series that first appears at 5 would
        # hide those 5 from rate() and increase(), and so from the DLQ alert.
        counts = dict.fromkeys(ErrorClass, 0) | dict(stats.dead_lettered_by_class)
        for error_class, count in sorted(counts.items()):
            dead.add_metric([str(error_class)], count)
        return [
            _counter(
                "messages_consumed", "Messages received from Kafka (valid or not)", stats.consumed
            ),
            _counter("orders_written", "Orders inserted into PostgreSQL", stats.written),
            _counter(
                "orders_duplicate",
                "Orders whose order_id was already stored or repeated in a batch",
                stats.duplicates,
            ),
            _counter(
                "orders_conflict",
                "Duplicates whose payload differs from the stored row (the stored row wins)",
                stats.conflicts,
            ),
            dead,
            _counter("batches", "Batches written and committed", stats.batches),
            _counter("db_retries", "Failed write attempts retried (transient)", stats.db_retries),
            _counter(
                "offset_commit_failures",
                "Offset commits that failed and were retried",
                stats.commit_failures,
            ),
            _counter(
                "rebalances",
                "Rebalance callbacks (partitions assigned, revoked or lost)",
                stats.rebalances,
            ),
        ]

    def _lag_families(self) -> list[Metric]:
        family = GaugeMetricFamily(
            f"{PREFIX}_consumer_lag",
            "Messages behind: log-end offset minus the group's committed offset, for each"
            " partition this member owns",
            labels=["topic", "partition"],
        )
        owned = sorted(self._owned)
        if self._lag_reader is not None and owned:
            try:
                lags = self._lag_reader(owned)
            except Exception as exc:  # a scrape must answer even when the broker does not
                self._log.warning("consumer lag unavailable", error=str(exc))
                lags = {}
            for (topic, partition), lag in sorted(lags.items()):
                if (topic, partition) in self._owned:
                    family.add_metric([topic, str(partition)], max(lag, 0))
        return [family]

    def observe_batch(self, size: int, latency_s: float) -> None:
        self.batch_size.observe(size)
        self.batch_latency.observe(latency_s)

    def observe_end_to_end(
        self, created_at: Iterable[datetime], now: datetime | None = None
    ) -> None:
        """One observation per inserted order: ``now`` (the commit) minus its creation."""
        at = now if now is not None else datetime.now(UTC)
        for created in created_at:
            # Clocks of two machines can disagree by a little; never observe < 0.
            self.end_to_end.observe(max((at - created).total_seconds(), 0.0))

    def set_assignment(self, topic_partitions: Iterable[tuple[str, int]]) -> None:
        """The partitions this member owns now (from the rebalance callbacks)."""
        owned = frozenset(topic_partitions)
        self._owned = owned  # one reference swap: readers on other threads see old or new
        self.assigned.set(len(owned))


# ----------------------------------------------------------------------------- HTTP


class Readiness:
    """A readiness flag with a reason, set by the service and read by ``/readyz``.

    Reading and writing one attribute is atomic in CPython, so the service thread and
    the HTTP threads need no lock.
    """

    def __init__(self, reason: str = "starting") -> None:
        self._ready = False
        self.reason = reason

    def set(self, ready: bool, reason: str) -> None:
        self.reason = reason
        self._ready = ready

    def __call__(self) -> bool:
        return self._ready


class ProducerReadiness:
    """Ready once the broker answered at start; not ready while every broker is down.

    librdkafka reports "all brokers down" through the producer's ``error_cb``; the
    producer is ready again as soon as the broker confirms another delivery.
    """

    def __init__(self, stats: ProducerCounts) -> None:
        self._stats = stats
        self._connected = False
        self._down_at: int | None = None
        self._down_reason = ""

    def connected(self) -> None:
        self._connected = True

    def brokers_down(self, detail: str) -> None:
        self._down_reason = detail
        self._down_at = self._stats.delivered

    @property
    def reason(self) -> str:
        if not self._connected:
            return "waiting for the Kafka broker"
        if self._down_at is not None:
            return f"no broker answers: {self._down_reason}"
        return "connected to Kafka"

    def __call__(self) -> bool:
        if self._down_at is not None and self._stats.delivered > self._down_at:
            self._down_at = None  # a delivery was confirmed since: the broker is back
        return self._connected and self._down_at is None


class ConsumerReadiness:
    """Ready when Kafka and PostgreSQL answered at start and partitions are assigned.

    A member without partitions (more consumers than partitions, or in the middle of
    a rebalance) is alive but not ready: it is processing nothing.
    """

    def __init__(self, metrics: ConsumerMetrics) -> None:
        self._metrics = metrics
        self._connected = False

    def connected(self) -> None:
        self._connected = True

    @property
    def reason(self) -> str:
        if not self._connected:
            return "waiting for Kafka and PostgreSQL"
        owned = len(self._metrics.owned)
        if not owned:
            return "connected; no partition assigned to this member"
        return f"connected; owns {owned} partition{'s' if owned != 1 else ''}"

    def __call__(self) -> bool:
        return self._connected and bool(self._metrics.owned)


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def setup(self) -> None:
        # Before the handler wraps the socket; its own ``timeout`` stays None.
        self.request.settimeout(self.server.client_timeout_s)
        super().setup()

    def do_GET(self) -> None:
        self._respond(send_body=True)

    def do_HEAD(self) -> None:
        self._respond(send_body=False)

    def _respond(self, send_body: bool) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/healthz":
            status, ctype, body = 200, "application/json", b'{"status": "alive"}\n'
        elif path == "/readyz":
            ready, reason = self.server.readiness()
            document = {"ready": ready, "reason": reason}
            status, ctype = (200 if ready else 503), "application/json"
            body = (json.dumps(document) + "\n").encode()
        elif path == "/metrics":
            status, ctype, body = 200, CONTENT_TYPE_LATEST, generate_latest(self.server.registry)
        else:
            status, ctype = 404, "text/plain; charset=utf-8"
            body = b"not found; try /healthz, /readyz or /metrics\n"
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if send_body:
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Probes arrive every few seconds; access lines would drown the service's logs."""


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # A restarted service must be able to bind its port again at once.
    allow_reuse_address = True
    # Accept a burst of connections (and refuse those over MAX_CONNECTIONS at once)
    # rather than leave them in the kernel's queue of 5.
    request_queue_size = 64

    def __init__(
        self,
        address: tuple[str, int],
        registry: CollectorRegistry,
        ready: Callable[[], bool],
        client_timeout_s: float = CLIENT_TIMEOUT_S,
    ) -> None:
        self.registry = registry
        self._ready = ready
        self.client_timeout_s = client_timeout_s
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self._log = get_logger("observability")
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()  # no thread started: give the slot back here
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        """One log line instead of socketserver's traceback on stderr.

        A client that disconnects early or too slowly is routine (a probe timing out,
        a scraper restarting), so it is logged at debug; anything else at warning.
        """
        exc = sys.exc_info()[1]
        level = "debug" if isinstance(exc, OSError) else "warning"
        getattr(self._log, level)(
            "http client dropped",
            client=str(client_address[0]) if client_address else "",
            error=f"{type(exc).__name__}: {exc}",
        )

    def readiness(self) -> tuple[bool, str]:
        try:
            ready = bool(self._ready())
        except Exception as exc:  # a probe must answer, whatever the callable does
            return False, f"readiness check failed: {type(exc).__name__}: {exc}"
        reason = getattr(self._ready, "reason", "")
        return ready, str(reason) if reason else ("ready" if ready else "not ready")


class HealthServer:
    """The running endpoints (or a disabled stand-in). Close it, or use ``with``."""

    def __init__(self, server: _Server | None) -> None:
        self._server = server
        self._thread: threading.Thread | None = None
        if server is not None:
            self._thread = threading.Thread(
                target=server.serve_forever,
                kwargs={"poll_interval": 0.5},
                name="foodpipe-http",
                daemon=True,
            )
            self._thread.start()

    @property
    def enabled(self) -> bool:
        return self._server is not None

    @property
    def port(self) -> int | None:
        return None if self._server is None else int(self._server.server_address[1])

    @property
    def url(self) -> str | None:
        if self._server is None:
            return None
        host = str(self._server.server_address[0])
        return f"http://{'127.0.0.1' if host in ('0.0.0.0', '') else host}:{self.port}"  # noqa: S104

    def close(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = None

    def __enter__(self) -> HealthServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def start_http(
    host: str,
    port: int,
    registry: CollectorRegistry,
    ready: Callable[[], bool],
    timeout_s: float = CLIENT_TIMEOUT_S,
) -> HealthServer:
    """Bind ``host:port`` (0 picks a free port, for tests) and serve in a thread."""
    try:
        server = _Server((host, port), registry, ready, timeout_s)
    except OSError as exc:
        raise ConfigError(
            f"METRICS_PORT: cannot listen on {host}:{port} ({exc.strerror or exc}); choose"
            " another METRICS_PORT / METRICS_HOST, or 0 to turn the endpoints off"
        ) from None
    return HealthServer(server)


def serve(
    settings: Settings, registry: CollectorRegistry, ready: Callable[[], bool]
) -> HealthServer:
    """Serve ``/healthz``, ``/readyz`` and ``/metrics`` on ``METRICS_HOST:METRICS_PORT``.

    ``METRICS_PORT=0`` (the command-line default) returns a disabled server whose
    ``close()`` does nothing, so callers need no special case.
    """
    if settings.metrics_port == 0:
        return HealthServer(None)
    server = start_http(settings.metrics_host, settings.metrics_port, registry, ready)
    get_logger("observability").info(
        "http endpoints listening",
        host=settings.metrics_host,
        port=server.port,
        paths=["/healthz", "/readyz", "/metrics"],
    )
    return server
