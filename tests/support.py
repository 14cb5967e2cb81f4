"""Helpers shared by the integration, fault and docs tests.

The one rule: never sleep to wait. ``wait_until`` polls a condition with a deadline and
fails with a message that says what was expected.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

from confluent_kafka import Consumer, Message, TopicPartition
from confluent_kafka.admin import AdminClient

REPO = Path(__file__).resolve().parents[1]

T = TypeVar("T")


class WaitTimeout(AssertionError):
    pass


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the kernel picked it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(
    predicate: Callable[[], T],
    *,
    timeout: float = 30.0,
    interval: float = 0.05,
    message: str | Callable[[], str] = "condition",
) -> T:
    """Call ``predicate`` until it returns something truthy; return that value.

    Raises ``WaitTimeout`` naming ``message`` when ``timeout`` seconds pass first.
    The short pause between polls is a poll interval, not a synchronisation sleep.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            text = message() if callable(message) else message
            raise WaitTimeout(f"timed out after {timeout:g}s waiting for {text}")
        time.sleep(interval)  # the poll interval of a deadline loop (noqa: sleep-ok)


def subprocess_env(extra: Mapping[str, str]) -> dict[str, str]:
    """A clean environment for a ``foodpipe`` subprocess: no stray settings leak in."""
    keep = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "COVERAGE_PROCESS_START", "PYTHONPATH")
    env = {key: os.environ[key] for key in keep if key in os.environ}
    # coverage's "patch = subprocess" hands its settings to children through these.
    env.update({k: v for k, v in os.environ.items() if k.startswith("COVERAGE_")})
    env.update(extra)
    env.setdefault("LOG_FORMAT", "json")
    return env


def foodpipe_argv(args: Sequence[str]) -> list[str]:
    return [sys.executable, "-m", "foodpipe", "--env-file", "/dev/null", *args]


def run_foodpipe(
    args: Sequence[str], env: Mapping[str, str], timeout: float = 120.0
) -> subprocess.CompletedProcess[str]:
    """Run ``foodpipe ARGS`` to completion as a real subprocess."""
    return subprocess.run(
        foodpipe_argv(args),
        env=subprocess_env(env),
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        check=False,
    )


def spawn_foodpipe(
    args: Sequence[str], env: Mapping[str, str], log_path: Path | None = None
) -> subprocess.Popen[bytes]:
    """Start ``foodpipe ARGS`` in the background; stdout+stderr go to ``log_path``."""
    out = open(log_path, "ab") if log_path is not None else subprocess.DEVNULL  # noqa: SIM115
    try:
        return subprocess.Popen(
            foodpipe_argv(args),
            env=subprocess_env(env),
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )
    finally:
        if log_path is not None:
            out.close()  # type: ignore[union-attr]


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 15.0) -> int:
    """SIGTERM, wait up to ``timeout``, then SIGKILL. Returns the exit code."""
    if proc.poll() is None:
        proc.terminate()
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
    return proc.wait(timeout=timeout)


def consume_all(bootstrap: str, topic: str, expected: int, timeout: float = 60.0) -> list[Message]:
    """Read ``expected`` messages from the start of ``topic`` with a throwaway group."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"reader-{os.urandom(6).hex()}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    messages: list[Message] = []
    try:
        consumer.subscribe([topic])

        def read_more() -> bool:
            for msg in consumer.consume(num_messages=1000, timeout=0.5):
                if msg.error() is None:
                    messages.append(msg)
            return len(messages) >= expected

        wait_until(
            read_more,
            timeout=timeout,
            interval=0,
            message=lambda: f"{expected} messages on {topic} (got {len(messages)})",
        )
    finally:
        consumer.close()
    return messages


def end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    """Log-end offset (high watermark) of every partition of ``topic``."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "offsets-reader"})
    try:
        metadata = consumer.list_topics(topic, timeout=10)
        result = {}
        for partition in metadata.topics[topic].partitions:
            _low, high = consumer.get_watermark_offsets(
                TopicPartition(topic, partition), timeout=10
            )
            result[partition] = high
        return result
    finally:
        consumer.close()


def committed_offsets(bootstrap: str, group: str, topic: str) -> dict[int, int]:
    """The group's committed offset per partition (-1001 when none is committed)."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    partitions = admin.list_topics(topic, timeout=10).topics[topic].partitions
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        committed = consumer.committed([TopicPartition(topic, p) for p in partitions], timeout=10)
        return {tp.partition: tp.offset for tp in committed}
    finally:
        consumer.close()


def group_lag(bootstrap: str, group: str, topic: str) -> int:
    """Total lag of ``group`` on ``topic``: log-end minus committed, summed."""
    ends = end_offsets(bootstrap, topic)
    committed = committed_offsets(bootstrap, group, topic)
    return sum(end - max(committed.get(p, 0), 0) for p, end in ends.items())
