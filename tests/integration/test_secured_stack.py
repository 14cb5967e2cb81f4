"""The pipeline over authenticated, encrypted connections, on the secured native stack.

``STACK_SECURED=1 scripts/local_stack.sh start`` runs a broker whose client listener is
SASL_SSL (a SCRAM-SHA-512 user made with Kafka's own tools, a CA and server certificate
generated for the stack) and a PostgreSQL that accepts TLS connections only. Here:

- produce -> consume -> audit over it, with ``KAFKA_SECURITY_PROTOCOL=SASL_SSL`` and
  ``POSTGRES_SSLMODE=verify-full``, and PostgreSQL confirming the connection is TLS;
- a wrong SASL password, a CA the broker's certificate does not chain to, and a CA the
  database's certificate does not chain to each stop the command at start with one line
  naming the setting to check, and lose nothing: the orders produced before are all
  written once the settings are right again.

The secured stack has its own data folder (``.stack/secured``) and ports (the normal
stack's plus 100), so it runs beside the normal one; it needs what that one needs
(Java, PostgreSQL, the Kafka jars) and openssl.
"""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import struct
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine, make_url

from foodpipe.db import init_sql, make_engine
from foodpipe.settings import load_settings
from tests.support import REPO, run_foodpipe, spawn_foodpipe, stop_process, wait_until

SCRIPT = REPO / "scripts" / "local_stack.sh"
SECURED_DIR = REPO / ".stack" / "secured"


def _stack_env() -> dict[str, str]:
    kafka_port = int(os.environ.get("KAFKA_PORT", "19092")) + 100
    pg_port = int(os.environ.get("PG_PORT", "15432")) + 100
    env = {
        **os.environ,
        "STACK_DIR": str(SECURED_DIR),
        "STACK_SECURED": "1",
        "KAFKA_PORT": str(kafka_port),
        "PG_PORT": str(pg_port),
    }
    for name in ("KAFKA_NODES", "STACK_SERVICES", "KAFKA_BOOTSTRAP_SERVERS", "DATABASE_URL"):
        env.pop(name, None)
    return env


def _script(*args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=_stack_env(),
        check=False,
    )


@pytest.fixture(scope="module")
def secured_env() -> Iterator[dict[str, str]]:
    """The secured stack's settings (``env --admin``), started for this module."""
    if shutil.which("java") is None or shutil.which("openssl") is None:
        pytest.fail("the secured stack needs java and openssl (scripts/bootstrap.sh installs them)")
    was_running = _script("status", timeout=120).returncode == 0
    started = _script("start")
    if started.returncode != 0:
        pytest.fail(f"STACK_SECURED=1 local_stack.sh start failed:\n{started.stderr}")
    printed = _script("env", "--admin", timeout=60).stdout
    values = dict(line.split("=", 1) for line in printed.splitlines() if "=" in line)
    try:
        yield values
    finally:
        if not was_running:
            _script("stop", timeout=180)


@dataclass
class SecuredPipeline:
    env: dict[str, str]
    admin_engine: Engine
    log_dir: Path

    def rows(self) -> int:
        with self.admin_engine.connect() as conn:
            return int(conn.execute(text("SELECT count(*) FROM orders")).scalar_one())

    def foodpipe(self, *args: str, **changes: str) -> subprocess.CompletedProcess[str]:
        return run_foodpipe(list(args), {**self.env, **changes}, timeout=180)

    def consume_until(self, rows: int) -> None:
        log = self.log_dir / f"consumer-{uuid.uuid4().hex[:6]}.log"
        consumer = spawn_foodpipe(["consume", "--wait", "60"], self.env, log)
        try:
            wait_until(
                lambda: self.rows() >= rows or consumer.poll() is not None,
                timeout=120,
                message=lambda: f"{rows} rows over TLS (have {self.rows()}); see {log}",
            )
            assert consumer.poll() is None, log.read_text()[-2000:]
        finally:
            stop_process(consumer)


@pytest.fixture
def secured(secured_env: dict[str, str], tmp_path: Path) -> Iterator[SecuredPipeline]:
    """Its own topic, DLQ, group and database on the secured stack."""
    suffix = uuid.uuid4().hex[:8]
    owner_url = make_url(secured_env["DATABASE_ADMIN_URL"])
    db_name = f"fp_sec_{suffix}"
    server = create_engine(owner_url, isolation_level="AUTOCOMMIT")
    with server.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{db_name}"'))
    admin_engine = create_engine(owner_url.set(database=db_name))
    app_user = make_url(secured_env["DATABASE_URL"]).username
    with admin_engine.begin() as conn:
        conn.exec_driver_sql(init_sql())
        conn.execute(text(f'GRANT SELECT, INSERT ON orders TO "{app_user}"'))
    base = f"sec-{suffix}"
    env = {key: value for key, value in secured_env.items() if key != "DATABASE_ADMIN_URL"} | {
        "DATABASE_URL": make_url(secured_env["DATABASE_URL"])
        .set(database=db_name)
        .render_as_string(hide_password=False),
        "KAFKA_TOPIC": f"orders-{base}",
        "KAFKA_DLQ_TOPIC": f"orders-{base}.dlq",
        "KAFKA_CONSUMER_GROUP": f"group-{base}",
    }
    pipe = SecuredPipeline(env, admin_engine, tmp_path)
    created = pipe.foodpipe("topics", "--wait", "60")
    assert created.returncode == 0, created.stderr
    try:
        yield pipe
    finally:
        admin_engine.dispose()
        with server.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)'))
        server.dispose()


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_produce_consume_audit_over_sasl_ssl_and_verified_tls(secured: SecuredPipeline) -> None:
    env = secured.env
    assert env["KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL"
    assert env["POSTGRES_SSLMODE"] == "verify-full"
    produced = secured.foodpipe("produce", "--count", "200", "--rate", "0", "--no-progress")
    assert produced.returncode == 0, produced.stderr[-2000:]
    secured.consume_until(200)
    audit = secured.foodpipe("audit", "--timeout", "120")
    assert audit.returncode == 0, audit.stdout[-3000:] + audit.stderr[-2000:]
    assert "CONSISTENT" in audit.stdout
    # The services' own connection settings give a TLS session, verified against the CA.
    settings = load_settings(
        _env_file=None,
        **{key.lower(): value for key, value in env.items() if key != "LOG_FORMAT"},
    )
    engine = make_engine(settings)
    try:
        with engine.connect() as conn:
            tls = conn.execute(
                text("SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            ).one()
    finally:
        engine.dispose()
    assert tls.ssl is True, tls


def _other_ca(directory: Path) -> Path:
    """A CA that signed nothing the secured stack serves."""
    key, cert = directory / "other-ca.key", directory / "other-ca.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-subj", "/CN=not the stack's CA", "-keyout", str(key), "-out", str(cert)),
        ],
        capture_output=True,
        check=True,
        timeout=60,
    )
    return cert


def _last_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = result.stderr.strip().splitlines()
    return lines[-1] if lines else ""


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_wrong_credentials_and_untrusted_certificates_fail_in_one_line_and_lose_nothing(
    secured: SecuredPipeline, tmp_path: Path
) -> None:
    produced = secured.foodpipe("produce", "--count", "50", "--rate", "0", "--no-progress")
    assert produced.returncode == 0, produced.stderr[-2000:]
    other_ca = str(_other_ca(tmp_path))

    wrong_login = secured.foodpipe(
        "produce", "--count", "10", "--no-progress", KAFKA_SASL_PASSWORD="not-the-password"
    )
    assert wrong_login.returncode == 3
    line = _last_line(wrong_login)
    assert line.startswith("foodpipe: Kafka at "), line
    assert "refused the login" in line, line
    assert "KAFKA_SASL_PASSWORD" in line
    assert "not-the-password" not in wrong_login.stderr + wrong_login.stdout

    untrusted_broker = secured.foodpipe("consume", "--wait", "30", KAFKA_SSL_CA_LOCATION=other_ca)
    assert untrusted_broker.returncode == 3
    line = _last_line(untrusted_broker)
    assert "certificate verify failed" in line, line
    assert "KAFKA_SSL_CA_LOCATION" in line, line

    untrusted_database = secured.foodpipe("consume", "--wait", "30", POSTGRES_SSLROOTCERT=other_ca)
    assert untrusted_database.returncode == 3
    line = _last_line(untrusted_database)
    assert "certificate verify failed" in line, line
    assert "POSTGRES_SSLROOTCERT" in line, line

    no_tls = secured.foodpipe(
        "consume", "--wait", "30", POSTGRES_SSLMODE="disable", POSTGRES_SSLROOTCERT=""
    )
    assert no_tls.returncode == 3
    assert "accepts TLS connections only" in _last_line(no_tls), _last_line(no_tls)

    # Nothing was lost on the way: the refused producer sent nothing, the refused
    # consumers committed nothing, and the right settings write all 50.
    assert secured.rows() == 0
    secured.consume_until(50)
    audit = secured.foodpipe("audit", "--timeout", "120")
    assert audit.returncode == 0, audit.stdout[-3000:] + audit.stderr[-2000:]
    assert secured.rows() == 50


def _answers_kafka(sock: socket.socket) -> bool:
    """Send an ApiVersions v0 request (correlation id 42); True if a Kafka reply comes."""
    request = struct.pack(">hhih", 18, 0, 42, 2) + b"fp"
    try:
        sock.sendall(struct.pack(">i", len(request)) + request)
        reply = sock.recv(10)
    except (OSError, ssl.SSLError):
        return False
    return len(reply) >= 8 and struct.unpack(">i", reply[4:8])[0] == 42


@pytest.mark.slow
def test_the_controller_quorum_takes_mutual_tls_only(secured_env: dict[str, str]) -> None:
    """The broker registered with its controller over mutual TLS (the stack is up); a
    local process without a certificate of the stack's CA gets no answer from it,
    neither in plain text nor over TLS."""
    port = int(secured_env["KAFKA_BOOTSTRAP_SERVERS"].rsplit(":", 1)[1]) + 1
    with socket.create_connection(("127.0.0.1", port), timeout=10) as plain:
        assert not _answers_kafka(plain)
    context = ssl.create_default_context(cafile=secured_env["KAFKA_SSL_CA_LOCATION"])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        try:
            tls = context.wrap_socket(raw, server_hostname="127.0.0.1")
        except (OSError, ssl.SSLError):
            return  # refused during the handshake (TLS 1.2 asks for the certificate there)
        with tls:
            # TLS 1.3: the server checks the client's certificate after the handshake,
            # and its alert arrives on the first read.
            assert not _answers_kafka(tls)
