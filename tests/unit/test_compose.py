"""docker-compose.yml and docker-compose.aws.yml, checked without a Docker engine.

The files are parsed as Compose parses them (YAML anchors and merge keys, then variable
interpolation from a .env that is a copy of .env.example) and checked against the
Compose specification's JSON schema, the Settings object, the CLI's parser and the
memory budget in docs/deployment/aws-setup.md. When a Compose front end is installed
(`docker compose` or the older `docker-compose`), its own `config` check runs too; it
needs no engine either.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from foodpipe.cli import COMMANDS, build_parser
from foodpipe.kafka import group_timeouts, topic_specs
from foodpipe.settings import (
    PLACEHOLDER_PASSWORDS,
    SECRET_FIELDS,
    ConfigError,
    Settings,
    load_settings,
)

from ..compose_support import (
    COMPOSE_FILES,
    MissingVariable,
    example_env,
    foodpipe_services,
    interpolation_names,
    load_compose,
    parse_bytes,
    service_env,
)
from ..support import REPO

SCHEMA = REPO / "tests" / "data" / "compose-spec.json"
AWS_DOC = REPO / "docs" / "deployment" / "aws-setup.md"
FILES = sorted(COMPOSE_FILES)

MIB = 1024**2
GIB = 1024**3
#: The issue's budget for the AWS file: all memory limits together, on a 2 GiB t2.small.
AWS_BUDGET = int(1.6 * GIB)

EXPECTED_SERVICES = {"kafka", "postgres", "db-init", "topics-init", "producer", "consumer"}
ONE_SHOTS = {"db-init", "topics-init"}
LONG_RUNNING = EXPECTED_SERVICES - ONE_SHOTS

SETTINGS_VARS = {name.upper() for name in Settings.model_fields}
#: ``NAME_FILE`` stands for the secret NAME (Settings reads the file it names).
SECRET_FILE_VARS = {f"{name.upper()}_FILE": name.upper() for name in SECRET_FIELDS}
#: Settings fields no service receives, and why.
NOT_PASSED = {
    "DATABASE_URL": "Compose passes the POSTGRES_* parts, so no password sits inside a URL",
    "DATABASE_ADMIN_URL": "the owner account is for tooling and humans, never for a service",
    **dict.fromkeys(
        (
            "KAFKA_SECURITY_PROTOCOL",
            "KAFKA_SASL_MECHANISM",
            "KAFKA_SASL_USERNAME",
            "KAFKA_SASL_PASSWORD",
            "KAFKA_SSL_CA_LOCATION",
            "KAFKA_SSL_CERTIFICATE_LOCATION",
            "KAFKA_SSL_KEY_LOCATION",
            "KAFKA_SSL_KEY_PASSWORD",
            "KAFKA_SSL_ENDPOINT_IDENTIFICATION",
            "POSTGRES_SSLMODE",
            "POSTGRES_SSLROOTCERT",
            "POSTGRES_SSLCERT",
            "POSTGRES_SSLKEY",
        ),
        "the Compose stacks talk PLAINTEXT on their private network by design (README,"
        " Security); TLS and SASL are for deployments against managed services",
    ),
}

#: What each foodpipe service cannot do without (its defaults are wrong in a container,
#: or the value is a secret, or it is the knob that service exists for).
COMMON_NEEDS = {
    "LOG_LEVEL",
    "LOG_FORMAT",
    "KAFKA_BOOTSTRAP_SERVERS",
    "KAFKA_TOPIC",
    "KAFKA_DLQ_TOPIC",
}
NEEDS = {
    "topics-init": COMMON_NEEDS
    | {"KAFKA_TOPIC_PARTITIONS", "KAFKA_REPLICATION_FACTOR", "KAFKA_RETENTION_MS"},
    "producer": COMMON_NEEDS | {"ORDER_RATE", "PRODUCER_STATE_DIR", "METRICS_PORT", "METRICS_HOST"},
    "consumer": COMMON_NEEDS
    | {
        "FOODPIPE_ENV",
        "KAFKA_CONSUMER_GROUP",
        "POSTGRES_HOST",
        "POSTGRES_PORT",
        "POSTGRES_DB",
        "POSTGRES_USER",
        "POSTGRES_PASSWORD_FILE",
        "DB_POOL_SIZE",
        "BATCH_SIZE",
        "BATCH_TIMEOUT_MS",
        "METRICS_PORT",
        "METRICS_HOST",
    },
}
#: The Compose secrets, and the .env variable that names each one's file on the host.
SECRETS = {
    "postgres_password": "POSTGRES_PASSWORD_FILE",
    "postgres_admin_password": "POSTGRES_ADMIN_PASSWORD_FILE",
}
#: Who may hold each one: the app role's password, and the owner's.
SECRET_HOLDERS = {
    "postgres_password": {"db-init", "consumer", "dashboard"},
    "postgres_admin_password": {"postgres", "db-init"},
}


def compose(name: str) -> dict[str, Any]:
    return load_compose(name, example_env())


def raw_text(name: str) -> str:
    return COMPOSE_FILES[name].read_text()


def services(name: str) -> dict[str, dict[str, Any]]:
    return compose(name)["services"]


def generated_env() -> dict[str, str]:
    """A .env as a user may write it: the secrets' files somewhere else than the example's."""
    env = example_env()
    env.update(
        POSTGRES_PASSWORD_FILE="/etc/zq8-generated/app-pw",
        POSTGRES_ADMIN_PASSWORD_FILE="/etc/zq8-generated/owner-pw",
    )
    return env


def service_secrets(service: dict[str, Any]) -> set[str]:
    return {
        entry if isinstance(entry, str) else entry["source"] for entry in service.get("secrets", [])
    }


@pytest.fixture
def mounted_secrets(tmp_path: Path) -> dict[str, Path]:
    """What Compose mounts at /run/secrets/<name>: one generated password per file."""
    paths = {}
    for name in SECRETS:
        paths[name] = tmp_path / name
        paths[name].write_text(f"Zq8-generated-{name}\n")
    return paths


def as_mounted(env: dict[str, str], mounted: dict[str, Path]) -> dict[str, str]:
    """``env`` with each /run/secrets/<name> path pointing at ``mounted``'s file."""
    out = {}
    for key, value in env.items():
        for name, path in mounted.items():
            value = value.replace(f"/run/secrets/{name}", str(path))
        out[key] = value
    return out


def settings_from(env: dict[str, str]) -> Settings:
    return load_settings(_env_file=None, **{key.lower(): value for key, value in env.items()})


# ---------------------------------------------------------------- structure and schema


@pytest.mark.parametrize("name", FILES)
def test_validates_against_the_compose_specification_schema(name: str) -> None:
    schema = json.loads(SCHEMA.read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    errors = sorted(
        jsonschema.Draft7Validator(schema).iter_errors(compose(name)), key=lambda e: e.path
    )
    assert not errors, "\n".join(f"{list(e.path)}: {e.message}" for e in errors)


def test_the_schema_validator_rejects_what_compose_rejects() -> None:
    """The vendored schema is the real one: an unknown service key fails validation."""
    schema = json.loads(SCHEMA.read_text())
    broken = compose("local")
    broken["services"]["consumer"]["mem_limmit"] = "128m"
    assert list(jsonschema.Draft7Validator(schema).iter_errors(broken))


@pytest.mark.parametrize("name", FILES)
def test_has_the_expected_services(name: str) -> None:
    # Services behind a Compose profile (monitoring) are optional and checked in
    # tests/unit/test_monitoring.py.
    always = {s for s, service in services(name).items() if not service.get("profiles")}
    # The dashboard runs by default locally; on the t2.small it sits behind a profile.
    assert always == EXPECTED_SERVICES | ({"dashboard"} if name == "local" else set())
    assert "dashboard" in services(name)


@pytest.mark.parametrize("name", FILES)
def test_uses_keys_both_compose_front_ends_honour(name: str) -> None:
    """`docker compose` (v2) and the older `docker-compose` both apply mem_limit and cpus;
    deploy.resources is ignored by docker-compose without --compatibility."""
    text = raw_text(name)
    assert not re.search(r"^\s*deploy:", text, re.MULTILINE)
    assert not re.search(r"^\s*start_interval:", text, re.MULTILINE)
    assert not re.search(r"^version:", text, re.MULTILINE), "the version key is obsolete"


# ---------------------------------------------------------------- Kafka and PostgreSQL


def kafka_version_of_native_stack() -> str:
    pom = (REPO / "scripts" / "kafka" / "pom.xml").read_text()
    match = re.search(r"<kafka.version>([^<]+)</kafka.version>", pom)
    assert match
    return match.group(1)


@pytest.mark.parametrize("name", FILES)
def test_kafka_is_the_official_image_in_kraft_mode(name: str) -> None:
    kafka = services(name)["kafka"]
    assert kafka["image"] == f"apache/kafka:{kafka_version_of_native_stack()}", (
        "Compose must run the Kafka version the native tests run (scripts/kafka/pom.xml)"
    )
    env = service_env(kafka)
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert env["CLUSTER_ID"]
    assert "zookeeper" not in raw_text(name).lower().replace("no zookeeper", "")
    advertised = env["KAFKA_ADVERTISED_LISTENERS"].split(",")
    assert "INTERNAL://kafka:9092" in advertised
    host = [listener for listener in advertised if listener.startswith("HOST://")]
    assert host == ["HOST://127.0.0.1:9092"]
    assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"


@pytest.mark.parametrize("name", FILES)
def test_postgres_is_15_or_newer_and_applies_init_sql(name: str) -> None:
    postgres = services(name)["postgres"]
    image, _, tag = postgres["image"].partition(":")
    assert image == "postgres"
    assert int(tag.split("-")[0].split(".")[0]) >= 15
    mounts = postgres["volumes"]
    assert "./src/database/init.sql:/docker-entrypoint-initdb.d/001-init.sql:ro" in mounts
    assert "pg-data:/var/lib/postgresql/data" in mounts


@pytest.mark.parametrize("name", FILES)
def test_db_init_creates_the_app_role_with_app_role_sql(name: str) -> None:
    db_init = services(name)["db-init"]
    assert db_init["image"] == services(name)["postgres"]["image"]
    assert "./src/database/app_role.sql:/foodpipe/app_role.sql:ro" in db_init["volumes"]
    script = " ".join(db_init["command"])
    assert "-v app_user=" in script
    # The password comes from psql's environment, never its argv (which `ps` shows).
    assert "-c '\\getenv app_password APP_PASSWORD' -f /foodpipe/app_role.sql" in script
    assert "app_password=" not in script
    assert "-f /foodpipe/app_role.sql" in script
    assert "ON_ERROR_STOP=1" in script
    env = service_env(load_compose(name)["services"]["db-init"])
    assert not {"APP_PASSWORD", "PGPASSWORD"} & set(env), "the passwords come from secrets"
    # The role it creates is the one the consumer logs in as.
    assert (
        env["APP_USER"] == service_env(load_compose(name)["services"]["consumer"])["POSTGRES_USER"]
    )


# ---------------------------------------------------------------- code <-> compose drift


@pytest.mark.parametrize("name", FILES)
def test_db_init_hands_both_passwords_to_psql_through_its_environment_only(
    name: str, tmp_path: Path, mounted_secrets: dict[str, Path]
) -> None:
    """The command runs for real, with a psql stand-in that reports what it received."""
    db_init = load_compose(name, example_env())["services"]["db-init"]
    assert service_secrets(db_init) == set(SECRETS)
    assert db_init["command"][:2] == ["sh", "-c"]
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "psql"
    fake.write_text(
        '#!/bin/sh\nprintf "%s|%s|%s\\n" "$PGPASSWORD" "$APP_PASSWORD" "$*"\n', encoding="utf-8"
    )
    fake.chmod(0o755)
    script = as_mounted({"c": db_init["command"][2]}, mounted_secrets)["c"]
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "APP_USER": "foodpipe_app"}
    result = subprocess.run(
        ["sh", "-c", script], env=env, capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 0, result.stderr
    owner, app, argv = result.stdout.rstrip("\n").split("|")
    assert owner == "Zq8-generated-postgres_admin_password"
    assert app == "Zq8-generated-postgres_password"
    assert "Zq8" not in argv, "a password on psql's command line"
    # A secret that cannot be read stops db-init (non-zero) before psql runs.
    mounted_secrets["postgres_password"].unlink()
    failed = subprocess.run(
        ["sh", "-c", script], env=env, capture_output=True, text=True, timeout=30, check=False
    )
    assert failed.returncode != 0
    assert failed.stdout == ""


@pytest.mark.parametrize("name", FILES)
def test_every_variable_passed_to_foodpipe_is_a_setting(name: str) -> None:
    known = SETTINGS_VARS | set(SECRET_FILE_VARS)
    for service_name, service in foodpipe_services(compose(name)).items():
        unknown = set(service_env(service)) - known
        assert not unknown, f"{name}/{service_name} passes {unknown}, which Settings ignores"


@pytest.mark.parametrize("name", FILES)
def test_every_setting_reaches_a_service(name: str) -> None:
    passed = set().union(*(service_env(s) for s in foodpipe_services(compose(name)).values()))
    passed = {SECRET_FILE_VARS.get(var, var) for var in passed}
    missing = SETTINGS_VARS - passed - set(NOT_PASSED)
    assert not missing, (
        f"{name}: Settings fields no service receives: {sorted(missing)}; pass them in "
        "the Compose file (or explain in NOT_PASSED why not)"
    )
    assert set(NOT_PASSED) <= SETTINGS_VARS, "NOT_PASSED names a field that no longer exists"


@pytest.mark.parametrize("name", FILES)
@pytest.mark.parametrize("service_name", sorted(NEEDS))
def test_each_service_gets_what_it_needs(name: str, service_name: str) -> None:
    env = service_env(services(name)[service_name])
    assert NEEDS[service_name] <= set(env), sorted(NEEDS[service_name] - set(env))
    assert "DATABASE_URL" not in env


@pytest.mark.parametrize("name", FILES)
def test_only_the_consumer_holds_a_database_password(name: str) -> None:
    """And the dashboard, which reads the table as the same least-privilege role; of the
    others, only postgres and db-init hold the owner's."""
    for service_name, service in foodpipe_services(compose(name)).items():
        if service_name not in ("consumer", "dashboard"):
            held = {"POSTGRES_PASSWORD", "POSTGRES_PASSWORD_FILE", "DATABASE_URL"}
            assert not held & set(service_env(service))
    for service_name, service in compose(name)["services"].items():
        for secret in service_secrets(service):
            assert service_name in SECRET_HOLDERS[secret], (service_name, secret)
    dashboard = service_env(compose(name)["services"]["dashboard"])
    assert dashboard["POSTGRES_USER"] == "foodpipe_app"


@pytest.mark.parametrize("name", FILES)
def test_every_service_environment_is_valid_settings(
    name: str, mounted_secrets: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each foodpipe service's environment, as its container gets it, loads; a service
    that logs in to PostgreSQL reads the password from the secret that Compose mounts."""
    for service_name, service in foodpipe_services(load_compose(name, generated_env())).items():
        env = as_mounted(service_env(service), mounted_secrets)
        with monkeypatch.context() as patch:
            for key in [key for key in os.environ if key.endswith("_FILE")]:
                patch.delenv(key)
            for key, value in env.items():
                patch.setenv(key, value)
            try:
                settings = load_settings(_env_file=None)
            except ConfigError as exc:
                pytest.fail(f"{name}/{service_name}: {exc}")
        if "POSTGRES_PASSWORD_FILE" in env:
            assert service_secrets(service) >= {"postgres_password"}
            password = settings.postgres_password.get_secret_value()
            assert password == "Zq8-generated-postgres_password", service_name


def test_containers_talk_to_each_other_not_to_the_host() -> None:
    for name in FILES:
        for service in foodpipe_services(compose(name)).values():
            env = service_env(service)
            assert env["KAFKA_BOOTSTRAP_SERVERS"] == "kafka:9092"
            if "POSTGRES_HOST" in env:
                assert (env["POSTGRES_HOST"], env["POSTGRES_PORT"]) == ("postgres", "5432")
            if "METRICS_HOST" in env:
                assert env["METRICS_HOST"] == "0.0.0.0"  # noqa: S104 - inside a container


def test_aws_consumer_refuses_placeholder_passwords(
    mounted_secrets: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    env = as_mounted(service_env(services("aws")["consumer"]), mounted_secrets)
    assert env["FOODPIPE_ENV"] == "production"
    mounted_secrets["postgres_password"].write_text(f"{sorted(PLACEHOLDER_PASSWORDS)[0]}\n")
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ConfigError, match="placeholder"):
        # Refused where the consumer makes its database engine.
        load_settings(_env_file=None).check_database_password()


# ---------------------------------------------------------------- the commands


@pytest.mark.parametrize("name", FILES)
def test_commands_are_foodpipe_subcommands_the_cli_accepts(name: str) -> None:
    parser = build_parser()
    expected = {
        "topics-init": "topics",
        "producer": "produce",
        "consumer": "consume",
        "dashboard": "dashboard",
    }
    for service_name, service in foodpipe_services(compose(name)).items():
        command = service["command"]
        assert isinstance(command, list), "exec form: no shell between Docker and foodpipe"
        assert command[0] == expected[service_name]
        assert command[0] in COMMANDS
        args = parser.parse_args(command)  # exits (SystemExit) on an unknown flag
        assert args.command == command[0]


def test_both_files_run_the_same_commands_and_image() -> None:
    local, aws = compose("local"), compose("aws")
    for service_name in foodpipe_services(local):
        # Only the broker wait differs: a t2.small starts Kafka more slowly.
        strip = [arg for arg in local["services"][service_name]["command"] if not arg.isdigit()]
        assert strip == [
            arg for arg in aws["services"][service_name]["command"] if not arg.isdigit()
        ]
    assert foodpipe_services(local).keys() == foodpipe_services(aws).keys()


@pytest.mark.parametrize("name", FILES)
def test_topic_init_creates_3_partitions_with_7_day_retention_and_the_dlq(name: str) -> None:
    settings = settings_from(service_env(services(name)["topics-init"]))
    orders, dlq = topic_specs(settings)
    assert (orders.name, orders.partitions) == ("food-orders", 3)
    assert orders.config["retention.ms"] == str(7 * 24 * 3600 * 1000)
    assert dlq.name == "food-orders.dlq"


# ---------------------------------------------------------------- resources


@pytest.mark.parametrize("name", FILES)
def test_every_service_has_memory_and_cpu_limits(name: str) -> None:
    for service_name, service in services(name).items():
        assert "mem_limit" in service, f"{name}/{service_name} has no mem_limit"
        assert float(service["cpus"]) > 0, f"{name}/{service_name} has no cpus limit"
    assert parse_bytes(services(name)["producer"]["mem_limit"]) == 128 * MIB
    assert parse_bytes(services(name)["consumer"]["mem_limit"]) == 128 * MIB


def limits(name: str) -> dict[str, int]:
    return {s: parse_bytes(v["mem_limit"]) for s, v in services(name).items()}


def test_aws_memory_limits_fit_the_t2_small_budget() -> None:
    mem = limits("aws")
    steady = sum(mem[s] for s in LONG_RUNNING)
    assert steady <= AWS_BUDGET, f"{steady / MIB:.0f} MiB > {AWS_BUDGET / MIB:.0f} MiB"
    # The file's comment promises that a second consumer still fits.
    assert steady + mem["consumer"] <= AWS_BUDGET
    # The one-shots run before the producer and the consumer start (depends_on).
    start_up = mem["kafka"] + mem["postgres"] + mem["db-init"] + mem["topics-init"]
    assert start_up <= AWS_BUDGET


def _heap_max(opts: str) -> int:
    match = re.search(r"-Xmx(\d+[kmg])", opts, re.IGNORECASE)
    assert match, f"no -Xmx in {opts!r}"
    return parse_bytes(match.group(1))


@pytest.mark.parametrize("name", FILES)
def test_kafka_heap_leaves_room_for_the_rest_of_the_jvm(name: str) -> None:
    kafka = services(name)["kafka"]
    heap = _heap_max(service_env(kafka)["KAFKA_HEAP_OPTS"])
    assert heap <= 512 * MIB
    # Metaspace, code cache, thread stacks and buffers live outside the heap.
    assert parse_bytes(kafka["mem_limit"]) - heap >= 192 * MIB


@pytest.mark.parametrize("name", FILES)
def test_kafka_heap_is_fixed_and_touched_at_start(name: str) -> None:
    """-Xms = -Xmx with AlwaysPreTouch: the broker's memory is committed at start, not
    over the first hours (the soak measured +148 MiB/h with -Xms256m -Xmx512m)."""
    opts = service_env(services(name)["kafka"])["KAFKA_HEAP_OPTS"]
    initial = re.search(r"-Xms(\d+[kmg])", opts, re.IGNORECASE)
    assert initial, f"no -Xms in {opts!r}"
    assert parse_bytes(initial.group(1)) == _heap_max(opts)
    assert "-XX:+AlwaysPreTouch" in opts.split()


def postgres_settings(name: str) -> dict[str, str]:
    command = services(name)["postgres"].get("command") or []
    return dict(command[i + 1].split("=", 1) for i, arg in enumerate(command) if arg == "-c")


def test_aws_kafka_and_postgres_are_sized_for_a_t2_small() -> None:
    kafka = service_env(services("aws")["kafka"])
    assert _heap_max(kafka["KAFKA_HEAP_OPTS"]) <= 512 * MIB
    # The cleaner's dedupe buffer sits on the heap; the default is 128 MiB.
    assert int(kafka["KAFKA_LOG_CLEANER_DEDUPE_BUFFER_SIZE"]) <= 32 * MIB
    pg = postgres_settings("aws")
    assert pg["shared_buffers"] == "256MB"
    assert parse_bytes(pg["work_mem"]) <= 8 * MIB
    max_connections = int(pg["max_connections"])
    assert max_connections <= 50
    # Room for every consumer the partitions allow, each with its pool, plus humans.
    partitions = int(service_env(services("aws")["topics-init"])["KAFKA_TOPIC_PARTITIONS"])
    pool = int(service_env(services("aws")["consumer"])["DB_POOL_SIZE"])
    assert partitions * pool + 10 <= max_connections
    assert (
        parse_bytes(pg["shared_buffers"])
        <= parse_bytes(services("aws")["postgres"]["mem_limit"]) * 0.6
    )


# ---------------------------------------------------------------- health, order, scaling


@pytest.mark.parametrize("name", FILES)
def test_kafka_and_postgres_have_healthchecks(name: str) -> None:
    for service_name in ("kafka", "postgres"):
        check = services(name)[service_name]["healthcheck"]
        assert {"interval", "timeout", "retries", "start_period"} <= set(check)
    assert services(name)["postgres"]["healthcheck"]["test"][0] == "CMD-SHELL"
    # The broker's probe is bash speaking ApiVersions (tests/integration/
    # test_kafka_probe.py runs it): no JVM is started in the broker's container.
    probe = services(name)["kafka"]["healthcheck"]["test"]
    assert probe[:3] == ["CMD", "bash", "-c"]
    assert "/dev/tcp/127.0.0.1/9092" in probe[3]
    assert not re.search(r"java|kafka-[a-z-]+\.sh|KAFKA_HEAP_OPTS", probe[3])
    assert "pg_isready -h 127.0.0.1" in " ".join(services(name)["postgres"]["healthcheck"]["test"])


EXPECTED_DEPENDS = {
    "db-init": {"postgres": "service_healthy"},
    "topics-init": {"kafka": "service_healthy"},
    "producer": {"kafka": "service_healthy", "topics-init": "service_completed_successfully"},
    "consumer": {
        "kafka": "service_healthy",
        "postgres": "service_healthy",
        "topics-init": "service_completed_successfully",
        "db-init": "service_completed_successfully",
    },
}


@pytest.mark.parametrize("name", FILES)
def test_start_up_order_is_enforced_by_depends_on_conditions(name: str) -> None:
    svc = services(name)
    for service_name, expected in EXPECTED_DEPENDS.items():
        actual = {dep: spec["condition"] for dep, spec in svc[service_name]["depends_on"].items()}
        assert actual == expected, service_name
    for service in svc.values():
        for dep, spec in (service.get("depends_on") or {}).items():
            if spec["condition"] == "service_healthy":
                assert "healthcheck" in svc[dep], f"{dep} has no healthcheck to wait for"
            if spec["condition"] == "service_completed_successfully":
                assert dep in ONE_SHOTS
                assert svc[dep]["restart"] == "no"


@pytest.mark.parametrize("name", FILES)
def test_the_consumer_can_be_scaled(name: str) -> None:
    for service_name, service in services(name).items():
        assert "container_name" not in service, f"{service_name}: container_name blocks scaling"
    for service_name in ("consumer", "producer"):
        assert "ports" not in services(name)[service_name]
        assert "hostname" not in services(name)[service_name]


@pytest.mark.parametrize("name", FILES)
def test_published_ports_are_bound_to_loopback(name: str) -> None:
    for service_name, service in services(name).items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{service_name} publishes {port}"


@pytest.mark.parametrize("name", FILES)
def test_data_lives_on_named_volumes(name: str) -> None:
    data = compose(name)
    optional = {"prometheus-data", "grafana-data"}  # the monitoring profile's
    assert set(data["volumes"]) - optional == {"kafka-data", "pg-data", "producer-state"}
    assert "kafka-data:/var/lib/kafka/data" in data["services"]["kafka"]["volumes"]
    assert service_env(data["services"]["kafka"])["KAFKA_LOG_DIRS"] == "/var/lib/kafka/data"
    producer = data["services"]["producer"]
    state_dir = service_env(producer)["PRODUCER_STATE_DIR"]
    assert f"producer-state:{state_dir}" in producer["volumes"]


@pytest.mark.parametrize("name", FILES)
def test_python_services_run_hardened(name: str) -> None:
    for service_name, service in foodpipe_services(compose(name)).items():
        assert service["init"] is True, service_name
        assert service["read_only"] is True, service_name
        assert service["cap_drop"] == ["ALL"], service_name
        assert "no-new-privileges:true" in service["security_opt"], service_name
        assert service["build"]["context"] == "."


@pytest.mark.parametrize("name", FILES)
def test_third_party_services_run_hardened_as_far_as_their_images_allow(name: str) -> None:
    """Kafka runs as the image's non-root user and needs no capability; the postgres
    entrypoint needs five to own its data directory and drop to the user postgres;
    db-init's psql needs none and writes nothing. None may gain privileges."""
    found = compose(name)["services"]
    for service_name in ("kafka", "postgres", "db-init"):
        service = found[service_name]
        assert service["cap_drop"] == ["ALL"], service_name
        assert "no-new-privileges:true" in service["security_opt"], service_name
    assert "cap_add" not in found["kafka"]
    assert "cap_add" not in found["db-init"]
    assert sorted(found["postgres"]["cap_add"]) == [
        "CHOWN",
        "DAC_OVERRIDE",
        "FOWNER",
        "SETGID",
        "SETUID",
    ]
    assert found["db-init"]["read_only"] is True


@pytest.mark.parametrize("name", FILES)
def test_long_running_python_services_get_time_to_stop_cleanly(name: str) -> None:
    for service_name in ("producer", "consumer"):
        assert services(name)[service_name]["stop_grace_period"] == "30s"


# ---------------------------------------------------------------- AWS operations


def test_aws_services_restart_and_one_shots_do_not() -> None:
    for service_name, service in services("aws").items():
        expected = "no" if service_name in ONE_SHOTS else "unless-stopped"
        assert service["restart"] == expected, service_name


@pytest.mark.parametrize("name", FILES)
def test_every_log_is_rotated(name: str) -> None:
    for service_name, service in services(name).items():
        logging = service["logging"]
        assert logging["driver"] == "json-file", service_name
        assert parse_bytes(logging["options"]["max-size"]) <= 50 * MIB
        assert 1 <= int(logging["options"]["max-file"]) <= 5


def test_aws_logs_are_json() -> None:
    for service in foodpipe_services(compose("aws")).values():
        assert service_env(service)["LOG_FORMAT"] == "json"


def budget_table() -> dict[str, int]:
    """The memory table of docs/deployment/aws-setup.md: service -> MiB."""
    text = AWS_DOC.read_text()
    start = text.index("<!-- memory-budget -->")
    rows: dict[str, int] = {}
    for line in text[start:].splitlines()[1:]:
        if not line.startswith("|"):
            if rows:
                break
            continue
        cells = [cell.strip().strip("*`") for cell in line.strip("|").split("|")]
        match = re.fullmatch(r"(\d+) MiB", cells[1]) if len(cells) > 1 else None
        if match:
            rows[cells[0]] = int(match.group(1))
    return rows


def test_aws_setup_doc_budget_table_matches_the_aws_file() -> None:
    table = budget_table()
    mem = limits("aws")
    for service_name in EXPECTED_SERVICES:
        assert table[service_name] * MIB == mem[service_name], service_name
    steady = sum(mem[s] for s in LONG_RUNNING)
    assert table["total (long-running)"] * MIB == steady
    assert table["total with 2 consumers"] * MIB == steady + mem["consumer"]


# ---------------------------------------------------------------- secrets


@pytest.mark.parametrize("name", FILES)
def test_passwords_reach_containers_only_as_compose_secrets(name: str) -> None:
    """No password in any container's environment (``docker inspect`` shows it): only
    the path of a secret that the service lists, and each secret's file comes from .env."""
    raw = load_compose(name)
    assert {key: value["file"] for key, value in raw["secrets"].items()} == {
        secret: f"${{{variable}:?set {variable} in .env; scripts/setup_local.sh --env-only"
        " writes both (see .env.example)}"
        for secret, variable in SECRETS.items()
    }
    for service_name, service in raw["services"].items():
        for key, value in service_env(service).items():
            if "PASSWORD" not in key:
                continue
            assert key.endswith("_FILE"), f"{service_name}: {key} holds a password"
            secret = value.removeprefix("/run/secrets/")
            assert secret in service_secrets(service), f"{service_name}: {key}={value}"


@pytest.mark.parametrize("name", FILES)
@pytest.mark.parametrize("variable", sorted(SECRETS.values()))
def test_compose_refuses_to_start_without_each_secret(name: str, variable: str) -> None:
    env = generated_env()
    del env[variable]
    with pytest.raises(MissingVariable, match=variable):
        load_compose(name, env)


@pytest.mark.parametrize("name", FILES)
def test_every_interpolated_variable_is_documented_in_env_example(name: str) -> None:
    from ..compose_support import read_env_file

    documented = set(read_env_file().documented)
    assert interpolation_names(raw_text(name)) <= documented


# ---------------------------------------------------------------- the real front ends


def _front_ends() -> list[Any]:
    found = []
    docker = shutil.which("docker")
    plugin_ok = False
    if docker:
        probe = subprocess.run(
            [docker, "compose", "version"], capture_output=True, text=True, check=False
        )
        plugin_ok = probe.returncode == 0
    found.append(
        pytest.param(
            [docker or "docker", "compose"],
            id="docker-compose-v2",
            marks=pytest.mark.skipif(
                not plugin_ok, reason="the `docker compose` plugin is not installed here"
            ),
        )
    )
    legacy = shutil.which("docker-compose")
    found.append(
        pytest.param(
            [legacy or "docker-compose"],
            id="docker-compose-v1",
            marks=pytest.mark.skipif(
                legacy is None, reason="the legacy `docker-compose` command is not installed here"
            ),
        )
    )
    return found


@pytest.mark.parametrize("front_end", _front_ends())
@pytest.mark.parametrize("name", FILES)
def test_the_compose_front_end_accepts_the_file(
    front_end: list[str], name: str, tmp_path: Path
) -> None:
    """`config` parses, interpolates and validates without talking to an engine."""
    env_file = tmp_path / "env"
    env_file.write_text("\n".join(f"{k}={v}" for k, v in generated_env().items()) + "\n")
    result = subprocess.run(
        [*front_end, "--env-file", str(env_file), "-f", str(COMPOSE_FILES[name]), "config"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "consumer:" in result.stdout
    assert "/etc/zq8-generated/app-pw" in result.stdout  # .env reached the interpolation

    empty = tmp_path / "empty.env"
    empty.write_text("")
    refused = subprocess.run(
        [*front_end, "--env-file", str(empty), "-f", str(COMPOSE_FILES[name]), "config", "-q"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        check=False,
    )
    assert refused.returncode != 0
    assert "PASSWORD" in refused.stderr


@pytest.mark.parametrize("name", FILES)
def test_producer_and_consumer_health_is_their_readyz_endpoint(name: str) -> None:
    for service_name in ("producer", "consumer"):
        service = services(name)[service_name]
        env = service_env(service)
        assert int(env["METRICS_PORT"]) > 0, "the endpoints must be on in Compose"
        assert env["METRICS_HOST"] == "0.0.0.0"  # noqa: S104 - inside a container
        check = " ".join(service["healthcheck"]["test"])
        assert "/readyz" in check
        assert "METRICS_PORT" in check
        assert "ports" not in service, "scalable: no fixed host port"


def test_prometheus_gets_every_rule_file_its_config_loads() -> None:
    """Prometheus skips a missing rule file without a word: mount each one it names."""
    config = yaml.safe_load((REPO / "deploy" / "monitoring" / "prometheus.yml").read_text())
    mounts = compose("local")["services"]["prometheus"]["volumes"]
    for rule_file in config["rule_files"]:
        assert f"./deploy/monitoring/{rule_file}:/etc/prometheus/{rule_file}:ro" in mounts


@pytest.mark.parametrize("name", FILES)
def test_the_producer_exports_the_lag_of_the_consumers_group(name: str) -> None:
    found = compose(name)["services"]
    assert (
        service_env(found["producer"])["KAFKA_CONSUMER_GROUP"]
        == service_env(found["consumer"])["KAFKA_CONSUMER_GROUP"]
    )


# ---------------------------------------------------------------- group protocol


@pytest.mark.parametrize("name", FILES)
def test_the_consumer_gets_the_group_protocol_and_static_membership_settings(name: str) -> None:
    env = service_env(services(name)["consumer"])
    default = Settings.model_fields["kafka_group_protocol"].default
    # The product's default, so Compose and a bare `foodpipe consume` behave alike.
    assert env["KAFKA_GROUP_PROTOCOL"] == default
    raw = service_env(load_compose(name)["services"]["consumer"])
    assert raw["KAFKA_GROUP_PROTOCOL"] == f"${{KAFKA_GROUP_PROTOCOL:-{default}}}"
    # Never a fixed id: every --scale replica would share it and they would fence each
    # other. Empty (dynamic) or auto (derived from each container's own host name).
    assert raw["KAFKA_GROUP_INSTANCE_ID"] in (
        "${KAFKA_GROUP_INSTANCE_ID:-}",
        "${KAFKA_GROUP_INSTANCE_ID:-auto}",
    )
    assert raw["KAFKA_GROUP_REMOTE_ASSIGNOR"] == "${KAFKA_GROUP_REMOTE_ASSIGNOR:-}"
    # The consumer has no fixed host name: Compose gives each replica its container id.
    assert "hostname" not in services(name)["consumer"]


@pytest.mark.parametrize("name", FILES)
def test_kafka_accepts_the_consumers_session_timeout_in_the_consumer_protocol(name: str) -> None:
    """With group.protocol=consumer the broker bounds the group's session and heartbeat."""
    kafka = service_env(services(name)["kafka"])
    consumer = service_env(services(name)["consumer"])
    session_ms, heartbeat_ms = group_timeouts(
        load_settings(_env_file=None, kafka_session_timeout_ms=consumer["KAFKA_SESSION_TIMEOUT_MS"])
    )
    assert int(kafka["KAFKA_GROUP_CONSUMER_MIN_SESSION_TIMEOUT_MS"]) <= session_ms
    assert int(kafka["KAFKA_GROUP_CONSUMER_MIN_HEARTBEAT_INTERVAL_MS"]) <= heartbeat_ms
    # Kafka 4.x serves both protocols by default; nothing may turn the new one off.
    assert "KAFKA_GROUP_COORDINATOR_REBALANCE_PROTOCOLS" not in kafka
