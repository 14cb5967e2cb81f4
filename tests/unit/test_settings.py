"""The settings object: defaults, validation, one-line errors, secrets."""

from __future__ import annotations

import pytest

from foodpipe.cli import main
from foodpipe.db import make_engine
from foodpipe.log import scrub
from foodpipe.settings import ConfigError, Settings, load_settings


def settings(**values: object) -> Settings:
    return load_settings(_env_file=None, **values)


def test_defaults_match_the_product() -> None:
    s = settings()
    assert s.kafka_topic == "food-orders"
    assert s.kafka_dlq_topic == "food-orders.dlq"
    assert s.kafka_consumer_group == "order-processors"
    assert s.kafka_topic_partitions == 3
    assert s.kafka_retention_ms == 7 * 24 * 3600 * 1000
    assert s.order_rate == 10


def test_environment_variables_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "a:1, b:2")
    monkeypatch.setenv("ORDER_RATE", "250")
    s = load_settings(_env_file=None)
    assert s.kafka_bootstrap_servers == "a:1,b:2"
    assert s.order_rate == 250


def test_dotenv_file_is_read(
    tmp_path: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    env_file = tmp_path / "x.env"  # type: ignore[operator]
    env_file.write_text("BATCH_SIZE=42\n")
    assert load_settings(_env_file=str(env_file)).batch_size == 42


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        (
            "kafka_bootstrap_servers",
            "nonsense",
            "KAFKA_BOOTSTRAP_SERVERS: 'nonsense' is not host:port",
        ),
        ("kafka_bootstrap_servers", "host:99999", "KAFKA_BOOTSTRAP_SERVERS"),
        ("kafka_bootstrap_servers", " , ", "KAFKA_BOOTSTRAP_SERVERS: expected host:port"),
        ("database_url", "not a url", "DATABASE_URL: not a URL"),
        ("database_url", "mysql://u:p@h/db", "DATABASE_URL: driver 'mysql' is not PostgreSQL"),
        ("database_url", "postgresql://u:p@/db", "DATABASE_URL: host and database name"),
        ("database_url", "postgresql://u:p@h:abc/db", "DATABASE_URL"),
        ("order_rate", "-1", "ORDER_RATE"),
        ("batch_size", "0", "BATCH_SIZE"),
        ("log_level", "LOUD", "LOG_LEVEL"),
        ("kafka_topic", "bad topic!", "KAFKA_TOPIC: expected 1-249 characters"),
    ],
)
def test_invalid_values_give_one_line_naming_the_variable(
    field: str, value: str, expected: str
) -> None:
    with pytest.raises(ConfigError) as info:
        settings(**{field: value})
    message = str(info.value)
    assert expected in message
    assert "\n" not in message


def test_dlq_must_differ_from_topic() -> None:
    with pytest.raises(ConfigError, match="KAFKA_DLQ_TOPIC must differ"):
        settings(kafka_topic="x", kafka_dlq_topic="x")


def test_production_refuses_placeholder_passwords_where_the_db_is_used() -> None:
    # Loading is fine: the producer never connects to the database.
    producer_side = settings(foodpipe_env="production")
    with pytest.raises(ConfigError, match="placeholder"):
        make_engine(producer_side)
    with pytest.raises(ConfigError, match="placeholder"):
        make_engine(
            settings(foodpipe_env="production", database_url="postgresql://u:change-me@h/db")
        )
    ok = settings(foodpipe_env="production", database_url="postgresql://u:s3cr3t-Xy@h/db")
    ok.check_database_password()
    assert make_engine(ok).url.password == "s3cr3t-Xy"
    # Development accepts the placeholder, so the example .env works out of the box.
    settings().check_database_password()


def test_url_from_parts_and_driver_normalised() -> None:
    s = settings(postgres_host="db", postgres_port=5433, postgres_password="pw")
    url = s.sqlalchemy_url()
    assert (url.drivername, url.host, url.port, url.database) == (
        "postgresql+psycopg2",
        "db",
        5433,
        "foodpipe",
    )
    assert settings(database_url="postgresql://u:p@h/d").sqlalchemy_url().drivername == (
        "postgresql+psycopg2"
    )


def test_secrets_never_appear_in_the_public_view() -> None:
    s = settings(database_url="postgresql://u:topsecret@h/d", postgres_password="alsosecret")
    view = str(s.public_view())
    assert "topsecret" not in view
    assert "alsosecret" not in view
    assert "u:***@h" in s.redacted_database_url()


def test_cli_reports_bad_config_in_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://u:p@h:notaport/db")
    assert main(["--env-file", "/dev/null", "config", "--check"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("foodpipe: invalid configuration: DATABASE_URL")
    assert len(err.splitlines()) == 1


def test_cli_config_prints_masked_settings(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://u:hunter2@h/db")
    assert main(["--env-file", "/dev/null", "config"]) == 0
    out = capsys.readouterr().out
    assert '"kafka_topic": "food-orders"' in out
    assert "hunter2" not in out


def test_cli_rejects_unknown_flags(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["config", "--no-such-flag"])
    assert info.value.code == 2
    assert "unrecognized arguments: --no-such-flag" in capsys.readouterr().err


@pytest.mark.parametrize("query", ["password=qsecret", "sslmode=disable&PassWord=qsecret"])
def test_a_password_in_the_url_query_is_masked(
    query: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DATABASE_URL", f"postgresql://u@h/db?{query}")
    monkeypatch.setenv("DATABASE_ADMIN_URL", f"postgresql://owner@h/db?{query}")
    assert main(["--env-file", "/dev/null", "config"]) == 0
    out = capsys.readouterr().out
    assert "qsecret" not in out
    assert "password=***" in out.lower()
    assert "qsecret" not in scrub(f"connecting to postgresql://u@h/db?{query}")
