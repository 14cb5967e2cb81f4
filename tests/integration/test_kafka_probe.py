"""The Kafka healthcheck of both compose files, run for real.

The probe is bash speaking Kafka's ApiVersions request over ``/dev/tcp``, so that a check
every 10 s starts no JVM in the broker's container. These tests run the exact command
from the compose files (only the port changes) against the session's real broker, and
against listeners that are not a healthy broker: a closed port, PostgreSQL, and fake
servers that answer with the wrong correlation id or an error code.
"""

from __future__ import annotations

import shutil
import socket
import struct
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from sqlalchemy.engine import make_url

from ..compose_support import COMPOSE_FILES, example_env, load_compose
from ..conftest import Stack
from ..support import free_port

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="the probe is bash")

PROBE_PORT = "/dev/tcp/127.0.0.1/9092"


def _probe(name: str) -> str:
    test = load_compose(name, example_env())["services"]["kafka"]["healthcheck"]["test"]
    assert test[:3] == ["CMD", "bash", "-c"], test
    command: str = test[3]
    assert PROBE_PORT in command
    return command


def _run(port: int, name: str = "local") -> int:
    command = _probe(name).replace(PROBE_PORT, f"/dev/tcp/127.0.0.1/{port}")
    # Docker gives a check `timeout:` (10 s) before it counts as failed; the probe's own
    # `timeout 5` must end a silent listener well before that.
    return subprocess.run(
        ["bash", "-c", command], capture_output=True, timeout=9, check=False
    ).returncode


def test_both_compose_files_probe_the_broker_the_same_way() -> None:
    commands = {_probe(name) for name in COMPOSE_FILES}
    assert len(commands) == 1, commands


@pytest.mark.parametrize("name", COMPOSE_FILES)
def test_a_running_broker_is_healthy(stack: Stack, name: str) -> None:
    port = int(stack.bootstrap.split(",")[0].rsplit(":", 1)[1])
    assert _run(port, name) == 0


def test_postgresql_is_not_a_broker(stack: Stack) -> None:
    port = make_url(stack.admin_url).port
    assert port is not None
    assert _run(port) != 0


def test_a_closed_port_is_unhealthy() -> None:
    assert _run(free_port()) != 0


@contextmanager
def _fake_broker(reply: bytes | None) -> Iterator[int]:
    """A listener that reads one request and sends ``reply`` (None: says nothing)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(10)
    seen: list[bytes] = []

    def serve() -> None:
        try:
            conn, _ = server.accept()
        except OSError:
            return
        with conn:
            conn.settimeout(10)
            seen.append(conn.recv(64))
            if reply is None:
                conn.recv(1)  # hold the connection open until the client gives up
            else:
                conn.sendall(reply)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield int(server.getsockname()[1])
    finally:
        server.close()
        thread.join(timeout=15)
    # The request the probe sent is an ApiVersions v0 request, framed by its length.
    assert seen, "the probe never sent a request"
    size, api_key, version, correlation = struct.unpack(">ihhi", seen[0][:12])
    assert (size, api_key, version, correlation) == (len(seen[0]) - 4, 18, 0, 42)


def _answer(correlation: int, error: int) -> bytes:
    body = struct.pack(">ihi", correlation, error, 0)  # no api keys listed
    return struct.pack(">i", len(body)) + body


def test_a_correct_answer_is_healthy() -> None:
    with _fake_broker(_answer(42, 0)) as port:
        assert _run(port) == 0


@pytest.mark.parametrize(
    ("correlation", "error"), [(7, 0), (42, 35)], ids=["wrong-correlation-id", "error-code"]
)
def test_a_wrong_answer_is_unhealthy(correlation: int, error: int) -> None:
    with _fake_broker(_answer(correlation, error)) as port:
        assert _run(port) != 0


def test_a_silent_listener_is_unhealthy_within_the_checks_timeout() -> None:
    with _fake_broker(None) as port:
        assert _run(port) != 0
