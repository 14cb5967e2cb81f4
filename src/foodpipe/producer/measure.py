"""Measure ``foodpipe produce`` from the outside: max confirmed rate, peak RSS, accuracy.

The producer runs as a real subprocess, exactly as deployed. The figures come from
sources the producer cannot flatter:

- **peak RSS**: ``VmHWM`` of the child (the kernel's high-water mark), read every 20 ms
  until it exits;
- **max confirmed rate**: the producer's final summary (orders confirmed by the broker
  divided by the time from its first send to its last confirmation), next to the
  process's wall time including start-up;
- **rate accuracy**: the ``created_at`` stamps of the orders read back from the topic,
  counted over a fixed window after a warm-up second.

``python -m foodpipe.producer.measure`` runs all three against the broker in
``KAFKA_BOOTSTRAP_SERVERS`` (each on a fresh topic) and writes one JSON document.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient

from foodpipe.kafka import admin_config, consumer_config, ensure_topics, topic_specs
from foodpipe.settings import Settings, load_settings

CONTAINER_LIMIT_KIB = 128 * 1024


@dataclass
class ProducerRun:
    """One ``foodpipe produce`` process, observed from outside."""

    exit_code: int
    wall_s: float
    #: ru_maxrss of the child, KiB.
    peak_rss_kib: int
    #: The producer's final "producer stopped" log line, if it wrote one.
    summary: dict[str, Any] | None
    log_path: Path
    log_lines: list[dict[str, Any]] = field(default_factory=list, repr=False)


def read_status_kib(pid: int, key: str = "VmHWM") -> int | None:
    """A ``/proc/<pid>/status`` memory field (VmHWM = peak RSS) in KiB, if readable."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith(f"{key}:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def produce_argv(args: Sequence[str]) -> list[str]:
    return [sys.executable, "-m", "foodpipe", "--env-file", "/dev/null", "produce", *args]


def run_producer(
    args: Sequence[str],
    env: Mapping[str, str],
    log_path: Path,
    *,
    run_for_s: float | None = None,
    timeout_s: float = 600.0,
) -> ProducerRun:
    """Run ``foodpipe produce ARGS``; with ``run_for_s``, SIGTERM it after that long."""
    started = time.monotonic()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            produce_argv(args), env=dict(env), stdout=log, stderr=subprocess.STDOUT
        )
    signalled = False
    # Peak RSS is VmHWM read while the child runs, not wait4's ru_maxrss: ru_maxrss keeps
    # the high-water mark across exec, so it includes the forked copy of the parent (a
    # pytest process of several hundred MB reported the producer at 477 MiB).
    peak_kib = 0
    while True:
        peak_kib = max(peak_kib, read_status_kib(proc.pid) or 0)
        pid, status, _usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        elapsed = time.monotonic() - started
        if run_for_s is not None and not signalled and elapsed >= run_for_s:
            proc.send_signal(signal.SIGTERM)
            signalled = True
        if elapsed > timeout_s:
            proc.kill()
        time.sleep(0.02)  # polling a child process; not on any hot path
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall_s = time.monotonic() - started
    lines = json_lines(log_path)
    return ProducerRun(proc.returncode, wall_s, peak_kib, summary_of(lines), log_path, lines)


def summary_of(lines: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """The producer's final "producer stopped" line among its JSON log lines."""
    return next((ln for ln in reversed(lines) if ln.get("event") == "producer stopped"), None)


def json_lines(path: Path) -> list[dict[str, Any]]:
    """The JSON log lines in a file of mixed output (anything else is skipped)."""
    lines = []
    for raw in path.read_text(errors="replace").splitlines():
        if raw.startswith("{"):
            try:
                lines.append(json.loads(raw))
            except ValueError:
                continue
    return lines


def read_created_at(
    settings: Settings, topic: str, expected: int, timeout_s: float = 120.0
) -> list[datetime]:
    """``created_at`` of the first ``expected`` orders on ``topic``, sorted."""
    consumer = Consumer(
        consumer_config(settings, **{"group.id": f"measure-{uuid.uuid4().hex[:12]}"})
    )
    stamps: list[datetime] = []
    deadline = time.monotonic() + timeout_s
    try:
        consumer.subscribe([topic])
        while len(stamps) < expected and time.monotonic() < deadline:
            for msg in consumer.consume(num_messages=5000, timeout=0.5):
                value = msg.value()
                if msg.error() is None and value:
                    created = json.loads(value)["created_at"]
                    stamps.append(datetime.fromisoformat(created))
    finally:
        consumer.close()
    if len(stamps) < expected:
        raise RuntimeError(f"read {len(stamps)} of {expected} orders from {topic}")
    return sorted(stamps)


def achieved_rate(stamps: Sequence[datetime], window_s: float, skip_s: float = 1.0) -> float:
    """Orders per second with ``created_at`` in ``[first + skip_s, + window_s)``."""
    if not stamps:
        return 0.0
    start = stamps[0].timestamp() + skip_s
    end = start + window_s
    if stamps[-1].timestamp() < end:
        raise ValueError(f"the run covers less than {skip_s + window_s:g} s of orders")
    inside = sum(1 for s in stamps if start <= s.timestamp() < end)
    return inside / window_s


def fresh_topic(settings: Settings, label: str) -> Settings:
    """Settings for a brand-new orders topic named after ``label``."""
    name = f"measure-{label}-{uuid.uuid4().hex[:8]}"
    fresh = settings.model_copy(update={"kafka_topic": name, "kafka_dlq_topic": f"{name}.dlq"})
    ensure_topics(AdminClient(admin_config(fresh)), topic_specs(fresh)[:1])
    return fresh


def _env(settings: Settings, state_dir: Path) -> dict[str, str]:
    # Measure the product, not a test tool: when the caller runs under coverage, these
    # variables would make the child trace itself, which more than triples its peak RSS
    # (seen: 255 MiB traced against 73 MiB untraced at max rate).
    env = {k: v for k, v in os.environ.items() if not k.startswith("COVERAGE_PROCESS_")}
    env.update(
        {
            "KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers,
            "KAFKA_TOPIC": settings.kafka_topic,
            "KAFKA_DLQ_TOPIC": settings.kafka_dlq_topic,
            "PRODUCER_STATE_DIR": str(state_dir),
            "LOG_FORMAT": "json",
            "LOG_LEVEL": "INFO",
        }
    )
    return env


def measure_max_rate(settings: Settings, work_dir: Path, count: int) -> dict[str, Any]:
    topic = fresh_topic(settings, "max")
    run = run_producer(
        ["--rate", "0", "--count", str(count)],
        _env(topic, work_dir / "state"),
        work_dir / "max-rate.log",
    )
    summary = run.summary or {}
    return {
        "count": count,
        "exit_code": run.exit_code,
        "delivered": summary.get("delivered"),
        "confirmed_rate": summary.get("rate"),
        "producer_elapsed_s": summary.get("elapsed_s"),
        "process_wall_s": round(run.wall_s, 3),
        "rate_incl_startup": round(count / run.wall_s, 1),
        "peak_rss_mib": round(run.peak_rss_kib / 1024, 1),
    }


def topic_size(settings: Settings, topic: str) -> int:
    """Messages in ``topic`` (sum of log-end offsets); 0 until it has partition leaders."""
    consumer = Consumer(consumer_config(settings, **{"group.id": "measure-offsets"}))
    try:
        metadata = consumer.list_topics(topic, timeout=10)
        total = 0
        for partition in metadata.topics[topic].partitions:
            _low, high = consumer.get_watermark_offsets(
                TopicPartition(topic, partition), timeout=10
            )
            total += high
        return total
    except KafkaException:
        return 0  # a topic created a moment ago may have no leader yet
    finally:
        consumer.close()


def measure_rate_accuracy(
    settings: Settings,
    work_dir: Path,
    rates: Sequence[float],
    window_s: float,
    *,
    skip_s: float = 1.0,
    timeout_s: float = 180.0,
) -> list[dict[str, Any]]:
    """Run one producer per rate, side by side; compare the achieved rate to the target.

    Each producer runs until its topic holds enough orders to cover ``skip_s`` of
    warm-up, the window and one more second; then it gets SIGTERM, and its orders'
    ``created_at`` stamps are read back and counted over the window.
    """
    runs = []
    for rate in rates:
        topic = fresh_topic(settings, f"rate{rate:g}")
        log_path = work_dir / f"rate-{rate:g}.log"
        env = _env(topic, work_dir / "state")
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                produce_argv(["--rate", f"{rate:g}"]), env=env, stdout=log, stderr=subprocess.STDOUT
            )
        runs.append((rate, topic, proc, log_path, int(rate * (skip_s + window_s + 1))))
    results = []
    try:
        deadline = time.monotonic() + timeout_s
        for rate, topic, proc, _log, needed in runs:
            while topic_size(topic, topic.kafka_topic) < needed:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError(f"the producer at {rate:g}/s did not reach {needed} orders")
                time.sleep(0.5)  # polling the topic's size; not a hot path
        peaks = [read_status_kib(proc.pid) or 0 for _r, _t, proc, _l, _n in runs]
        for _rate, _topic, proc, _log, _needed in runs:
            proc.send_signal(signal.SIGTERM)
        for (rate, topic, proc, log_path, _needed), peak in zip(runs, peaks, strict=True):
            exit_code = proc.wait(timeout=60)
            summary = summary_of(json_lines(log_path)) or {}
            delivered = int(summary.get("delivered", 0))
            stamps = read_created_at(topic, topic.kafka_topic, delivered)
            achieved = achieved_rate(stamps, window_s, skip_s)
            results.append(
                {
                    "target_rate": rate,
                    "window_s": window_s,
                    "achieved_rate": round(achieved, 3),
                    "error_pct": round(100 * (achieved - rate) / rate, 3),
                    "delivered": delivered,
                    "exit_code": exit_code,
                    "peak_rss_mib": round(peak / 1024, 1),
                }
            )
    finally:
        for _rate, _topic, proc, _log, _needed in runs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--count", type=int, default=200_000, help="orders for the max-rate run")
    parser.add_argument("--window", type=float, default=30.0, help="accuracy window, seconds")
    parser.add_argument("--rates", default="10,1000", help="comma-separated target rates")
    parser.add_argument("--work-dir", type=Path, default=Path("bench/tmp/producer"))
    parser.add_argument("--skip-accuracy", action="store_true")
    args = parser.parse_args(argv)
    settings = load_settings()
    args.work_dir.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
        "max_rate": measure_max_rate(settings, args.work_dir, args.count),
    }
    if not args.skip_accuracy:
        rates = [float(r) for r in args.rates.split(",") if r.strip()]
        result["accuracy"] = measure_rate_accuracy(settings, args.work_dir, rates, args.window)
    sys.stdout.write(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
