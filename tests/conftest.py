"""Shared fixtures: real Kafka and real PostgreSQL, from one of three places.

1. ``KAFKA_BOOTSTRAP_SERVERS`` and ``DATABASE_URL`` (plus ``DATABASE_ADMIN_URL`` when
   the app URL may not create databases) in the environment: use those services.
2. Otherwise, when a Docker engine answers and the images named by ``KAFKA_IMAGE`` and
   ``POSTGRES_IMAGE`` (default: the official apache/kafka and postgres images) are on it:
   testcontainers. An image is never pulled: where no registry answers, the docker suite
   builds local stand-ins (scripts/docker_images.sh) and names them in those variables.
3. Otherwise: ``scripts/local_stack.sh start`` runs both as local processes.

``FOODPIPE_TEST_STACK=local`` or ``=containers`` forces 3 or 2 (``containers`` fails with
one line when it cannot be had). scripts/test.sh sets ``local``: the fault suite controls
the broker and database processes, which it can do only with the local stack.

Services start once per session. Factory fixtures give each test its own topic, DLQ
topic, consumer group and database, so tests never see each other's data.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka.admin import AdminClient
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url

from foodpipe.db import init_sql, make_engine
from foodpipe.kafka import admin_config, ensure_topics, topic_specs, wait_for_broker
from foodpipe.settings import Settings, load_settings

from .support import REPO

APP_ROLE = "foodpipe_test_app"
TEMPLATE_DB = "foodpipe_test_template"
KAFKA_IMAGE = os.environ.get("KAFKA_IMAGE", "apache/kafka:4.3.1")
POSTGRES_IMAGE = os.environ.get("POSTGRES_IMAGE", "postgres:16-alpine")


@dataclass
class Stack:
    """Where the session's services are, and how to stop/start PostgreSQL."""

    bootstrap: str
    admin_url: str
    source: str
    env: dict[str, str] = field(default_factory=dict)

    def script(self, *args: str, timeout: float = 180.0) -> str:
        """Run ``scripts/local_stack.sh ARGS`` against this stack (local stack only)."""
        if self.source != "local":
            pytest.skip(f"needs the local stack to control processes (services from {self.source})")
        result = subprocess.run(
            [str(REPO / "scripts" / "local_stack.sh"), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, **self.env},
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"local_stack.sh {' '.join(args)} failed: {result.stderr.strip()}")
        return result.stdout

    def pg_stop(self) -> None:
        self.script("pg-stop")

    def pg_start(self) -> None:
        self.script("pg-start")


def _docker_answers() -> bool:
    if os.environ.get("FOODPIPE_NO_DOCKER"):
        return False
    try:
        import docker  # type: ignore[import-untyped]

        docker.from_env(timeout=3).ping()
    except Exception:
        return False
    return True


def _images_present() -> bool:
    """Both images are on the engine already: testcontainers would otherwise pull them."""
    import docker

    client = docker.from_env(timeout=10)
    try:
        for name in (KAFKA_IMAGE, POSTGRES_IMAGE):
            client.images.get(name)
    except docker.errors.ImageNotFound:
        return False
    return True


def _use_containers() -> bool:
    choice = os.environ.get("FOODPIPE_TEST_STACK", "auto")
    if choice == "local":
        return False
    usable = _docker_answers() and _images_present()
    if choice == "containers" and not usable:
        pytest.fail(
            f"FOODPIPE_TEST_STACK=containers, but no Docker engine answers or {KAFKA_IMAGE} /"
            f" {POSTGRES_IMAGE} are not on it; run scripts/docker_engine.sh start and"
            " scripts/docker_images.sh, and set KAFKA_IMAGE/POSTGRES_IMAGE to what it prints",
            pytrace=False,
        )
    return usable


def _parse_env(text_out: str) -> dict[str, str]:
    return dict(
        line.split("=", 1) for line in text_out.splitlines() if re.match(r"^[A-Z_]+=", line)
    )


@pytest.fixture(scope="session")
def stack() -> Iterator[Stack]:
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    db_url = os.environ.get("DATABASE_URL")
    if bootstrap and db_url:
        yield Stack(bootstrap, os.environ.get("DATABASE_ADMIN_URL", db_url), "environment")
        return
    if _use_containers():
        yield from _containers()
        return
    script = str(REPO / "scripts" / "local_stack.sh")
    # A stack that was already up belongs to the developer: leave it running after.
    was_running = (
        subprocess.run([script, "status"], capture_output=True, check=False).returncode == 0
    )
    result = subprocess.run(
        [script, "start"], capture_output=True, text=True, timeout=900, check=False
    )
    if result.returncode != 0:
        pytest.fail(f"scripts/local_stack.sh start failed:\n{result.stderr}", pytrace=False)
    # start prints no password; the owner URL comes from `env --admin` on request.
    result = subprocess.run(
        [script, "env", "--admin"], capture_output=True, text=True, timeout=60, check=True
    )
    env = _parse_env(result.stdout)
    try:
        yield Stack(env["KAFKA_BOOTSTRAP_SERVERS"], env["DATABASE_ADMIN_URL"], "local")
    finally:
        if not was_running:
            subprocess.run([script, "stop"], capture_output=True, timeout=120, check=False)


def _containers() -> Iterator[Stack]:
    """Kafka and PostgreSQL in containers, through the images' documented interfaces.

    testcontainers' own KafkaContainer drives Confluent's image (its start script lives
    in /etc/confluent), so Kafka runs as a generic container configured the way the
    apache/kafka image documents: KAFKA_* variables and CLUSTER_ID, advertised on a
    fixed host port chosen here, because a client reconnects to the advertised address.
    """
    from testcontainers.core.container import DockerContainer
    from testcontainers.core.wait_strategies import LogMessageWaitStrategy
    from testcontainers.postgres import PostgresContainer

    # The reaper container (testcontainers/ryuk) would need a pull; the context managers
    # below remove both containers instead.
    os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    kafka_env = {
        "KAFKA_NODE_ID": "1",
        "KAFKA_PROCESS_ROLES": "broker,controller",
        "KAFKA_CONTROLLER_QUORUM_VOTERS": "1@localhost:9093",
        "KAFKA_CONTROLLER_LISTENER_NAMES": "CONTROLLER",
        "KAFKA_LISTENERS": "PLAINTEXT://:9092,CONTROLLER://:9093",
        "KAFKA_ADVERTISED_LISTENERS": f"PLAINTEXT://127.0.0.1:{port}",
        "KAFKA_LISTENER_SECURITY_PROTOCOL_MAP": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR": "1",
        "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR": "1",
        "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR": "1",
        "KAFKA_SHARE_COORDINATOR_STATE_TOPIC_REPLICATION_FACTOR": "1",
        "KAFKA_SHARE_COORDINATOR_STATE_TOPIC_MIN_ISR": "1",
        "KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS": "0",
        "KAFKA_HEAP_OPTS": "-Xmx512m",
        "CLUSTER_ID": "qua9uwnESoiKaGd_j49ZsQ",
    }
    kafka = DockerContainer(KAFKA_IMAGE).with_bind_ports(9092, port)
    for key, value in kafka_env.items():
        kafka.with_env(key, value)
    kafka.waiting_for(LogMessageWaitStrategy("Kafka Server started").with_startup_timeout(120))
    with kafka, PostgresContainer(POSTGRES_IMAGE, driver="psycopg2") as pg:
        yield Stack(f"127.0.0.1:{port}", pg.get_connection_url(), "testcontainers")


@pytest.fixture(scope="session")
def admin_engine(stack: Stack) -> Iterator[Engine]:
    engine = create_engine(stack.admin_url, isolation_level="AUTOCOMMIT", pool_pre_ping=True)
    yield engine
    engine.dispose()


@pytest.fixture(scope="session")
def app_password() -> str:
    # Fixed, not random: several pytest sessions may share one server (a developer's
    # stack), and a per-session password would lock the other sessions' role out.
    # The role exists only on test servers and can only read and insert test orders.
    return "foodpipe-test-app"


@pytest.fixture(scope="session")
def template_db(admin_engine: Engine, stack: Stack, app_password: str) -> Iterator[str]:
    """A database with the schema and the least-privilege role's grants, to copy.

    Its name is per session, so concurrent sessions never drop each other's template.
    """
    template = f"{TEMPLATE_DB}_{uuid.uuid4().hex[:8]}"
    with admin_engine.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{template}"'))
        exists = conn.execute(
            text("SELECT 1 FROM pg_roles WHERE rolname = :r"), {"r": APP_ROLE}
        ).scalar()
        verb = "ALTER" if exists else "CREATE"
        # Role names cannot be bound parameters; the password is quoted by format().
        statement = conn.execute(
            text(f"SELECT format('{verb} ROLE {APP_ROLE} LOGIN PASSWORD %L', :pw)"),
            {"pw": app_password},
        ).scalar_one()
        conn.execute(text(statement))
    template_url = make_url(stack.admin_url).set(database=template)
    engine = create_engine(template_url)
    with engine.begin() as conn:
        conn.exec_driver_sql(init_sql())
        conn.execute(text(f"GRANT SELECT, INSERT ON orders TO {APP_ROLE}"))
    engine.dispose()
    yield template
    with admin_engine.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{template}" WITH (FORCE)'))


@dataclass
class Pipeline:
    """Everything one test needs: its own topic, DLQ, group and database."""

    settings: Settings
    env: dict[str, str]
    db_admin_url: str
    engine: Engine
    admin_engine: Engine

    @property
    def topic(self) -> str:
        return self.settings.kafka_topic

    @property
    def dlq_topic(self) -> str:
        return self.settings.kafka_dlq_topic

    @property
    def group(self) -> str:
        return self.settings.kafka_consumer_group

    @property
    def bootstrap(self) -> str:
        return self.settings.kafka_bootstrap_servers

    def order_ids(self) -> list[str]:
        with self.admin_engine.connect() as conn:
            return list(conn.execute(text("SELECT order_id FROM orders")).scalars())

    def row_count(self) -> int:
        with self.admin_engine.connect() as conn:
            return int(conn.execute(text("SELECT count(*) FROM orders")).scalar_one())


def _short(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:40]


@pytest.fixture
def new_topic(stack: Stack, request: pytest.FixtureRequest) -> Callable[..., str]:
    admin = AdminClient({"bootstrap.servers": stack.bootstrap})

    def make(partitions: int = 3) -> str:
        name = f"t-{_short(request.node.name)}-{uuid.uuid4().hex[:8]}"
        settings = load_settings(
            _env_file=None,
            kafka_bootstrap_servers=stack.bootstrap,
            kafka_topic=name,
            kafka_dlq_topic=f"{name}.dlq",
            kafka_topic_partitions=partitions,
        )
        ensure_topics(admin, topic_specs(settings)[:1])
        return name

    return make


@pytest.fixture
def make_pipeline(
    stack: Stack,
    admin_engine: Engine,
    template_db: str,
    app_password: str,
    request: pytest.FixtureRequest,
) -> Iterator[Callable[..., Pipeline]]:
    created: list[tuple[str, list[Engine]]] = []
    admin = AdminClient(
        admin_config(load_settings(_env_file=None, kafka_bootstrap_servers=stack.bootstrap))
    )
    wait_for_broker(
        admin, load_settings(_env_file=None, kafka_bootstrap_servers=stack.bootstrap), 60
    )

    def make(partitions: int = 3, **overrides: Any) -> Pipeline:
        suffix = uuid.uuid4().hex[:8]
        base = f"{_short(request.node.name)}-{suffix}"
        db_name = f"fp_{suffix}"
        with admin_engine.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{db_name}" TEMPLATE "{template_db}"'))
        admin_url = make_url(stack.admin_url).set(database=db_name)
        app_url = admin_url.set(username=APP_ROLE, password=app_password)
        app_url_str = app_url.render_as_string(hide_password=False)
        values: dict[str, Any] = {
            "kafka_bootstrap_servers": stack.bootstrap,
            "kafka_topic": f"orders-{base}",
            "kafka_dlq_topic": f"orders-{base}.dlq",
            "kafka_consumer_group": f"group-{base}",
            "kafka_topic_partitions": partitions,
            "database_url": app_url_str,
            "log_format": "json",
        }
        values.update(overrides)
        settings = load_settings(_env_file=None, **values)
        ensure_topics(admin, topic_specs(settings))
        env = {key.upper(): str(value) for key, value in values.items()}
        engine = make_engine(settings)
        pipe_admin = create_engine(admin_url, pool_pre_ping=True)
        created.append((db_name, [engine, pipe_admin]))
        return Pipeline(
            settings=settings,
            env=env,
            db_admin_url=admin_url.render_as_string(hide_password=False),
            engine=engine,
            admin_engine=pipe_admin,
        )

    yield make

    for db_name, engines in created:
        for engine in engines:
            engine.dispose()
        with admin_engine.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)'))


@pytest.fixture
def pipeline(make_pipeline: Callable[..., Pipeline]) -> Pipeline:
    """The common case: one pipeline per test."""
    return make_pipeline()


@pytest.fixture
def log_dir(tmp_path: Path) -> Path:
    """Where subprocess logs of a test go (kept by pytest for failed tests)."""
    path = tmp_path / "logs"
    path.mkdir()
    return path


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Everything under tests/integration and tests/fault is an integration test."""
    for item in items:
        parts = Path(str(item.fspath)).parts
        if "integration" in parts or "fault" in parts:
            item.add_marker(pytest.mark.integration)
