"""The conditions of a bench run: the machine, the versions, the settings that matter.

A figure without its conditions cannot be compared with anything, so they are recorded
next to the figures. CPU use is sampled from ``/proc/stat`` around each run, so a run
disturbed by other work on a shared machine can be recognised afterwards.
"""

from __future__ import annotations

import os
import platform
import time
from contextlib import closing
from dataclasses import dataclass
from importlib import metadata
from typing import Any

import confluent_kafka
from sqlalchemy.engine import URL

from foodpipe import __version__
from foodpipe.bench.ceilings import KafkaTools
from foodpipe.bench.scratch import connect
from foodpipe.kafka import consumer_config, producer_config
from foodpipe.settings import Settings


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _mem_total_mib() -> int:
    try:
        with open("/proc/meminfo", encoding="utf-8") as info:
            for line in info:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) // 1024
    except OSError:
        pass
    return 0


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "absent"


def _client_version() -> str:
    # version() is a (str, int) pair in older releases and a plain string in newer ones.
    version = confluent_kafka.version()
    return str(version[0] if isinstance(version, tuple) else version)


def _postgres(admin_url: URL) -> dict[str, str]:
    with closing(connect(admin_url)) as conn, conn.cursor() as cur:
        found = {}
        for name in ("server_version", "synchronous_commit", "fsync", "shared_buffers"):
            cur.execute(f"SHOW {name}")
            found[name] = str(cur.fetchone()[0])
        return found


def collect(
    settings: Settings, tools: KafkaTools, admin_url: URL, bench: dict[str, Any]
) -> dict[str, Any]:
    producer = producer_config(settings)
    consumer = consumer_config(settings)
    postgres = _postgres(admin_url)
    return {
        "cpu_count": os.cpu_count() or 0,
        "cpu_affinity": len(os.sched_getaffinity(0)),
        "cpu_model": _cpu_model(),
        "mem_total_mib": _mem_total_mib(),
        "os": f"{platform.system()} {platform.release()}",
        "versions": {
            "foodpipe": __version__,
            "python": platform.python_version(),
            "confluent_kafka": _client_version(),
            "librdkafka": confluent_kafka.libversion()[0],
            "kafka": tools.version,
            "java": tools.java_version(),
            "postgres": postgres.pop("server_version"),
            "sqlalchemy": _version("SQLAlchemy"),
            "psycopg2": _version("psycopg2-binary"),
            "pydantic": _version("pydantic"),
        },
        "postgres_settings": postgres,
        "producer": {
            key: producer[key]
            for key in (
                "acks",
                "enable.idempotence",
                "linger.ms",
                "compression.type",
                "batch.size",
                "queue.buffering.max.kbytes",
                "queue.buffering.max.messages",
            )
            if key in producer
        },
        "consumer": {
            "batch_size": settings.batch_size,
            "batch_timeout_ms": settings.batch_timeout_ms,
            "batch_linger_ms": settings.batch_linger_ms,
            **{
                key: consumer[key]
                for key in ("fetch.max.bytes", "queued.max.messages.kbytes")
                if key in consumer
            },
        },
        "bench": bench,
    }


@dataclass
class CpuSample:
    """Busy and total jiffies of all CPUs, from ``/proc/stat``."""

    busy: int
    total: int

    @classmethod
    def now(cls) -> CpuSample:
        with open("/proc/stat", encoding="ascii") as stat:
            fields = [int(v) for v in stat.readline().split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
        total = sum(fields[:8])  # guest time is already counted in user
        return cls(total - idle, total)

    def busy_pct_since(self, earlier: CpuSample) -> float:
        total = self.total - earlier.total
        return (self.busy - earlier.busy) / total * 100.0 if total > 0 else 0.0


def busy_pct(seconds: float = 1.0) -> float:
    """Whole-machine CPU use over the next ``seconds``: how busy it is without us."""
    before = CpuSample.now()
    time.sleep(seconds)  # the measurement interval itself
    return CpuSample.now().busy_pct_since(before)
