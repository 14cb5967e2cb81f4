"""Authenticated, encrypted connections as settings (issue 17, item 2).

Kafka: ``KAFKA_SECURITY_PROTOCOL``, the SASL login and the TLS files reach every client
foodpipe builds, through the one place that builds librdkafka configurations. PostgreSQL:
``POSTGRES_SSLMODE`` up to ``verify-full`` with a root certificate and a client
certificate. A bad value is one line naming the setting. Secrets may come from files
(``<NAME>_FILE``), the convention Compose secrets use.
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import quote_plus

import psycopg2
import pytest
from sqlalchemy.engine import URL

from foodpipe import kafka
from foodpipe.cli import main
from foodpipe.settings import ConfigError, Settings, load_settings

from ..support import REPO


@pytest.fixture
def pem(tmp_path: Path) -> Path:
    # Only its existence is checked here; the secured-stack test uses real certificates.
    path = tmp_path / "ca.pem"
    path.write_text("not parsed by the settings\n")
    return path


def settings(**values: object) -> Settings:
    return load_settings(_env_file=None, **values)


def sasl_ssl(pem: Path, **more: object) -> Settings:
    return settings(
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_username="foodpipe",
        kafka_sasl_password="s3cret-sasl",
        kafka_ssl_ca_location=str(pem),
        **more,
    )


BUILDERS = (kafka.producer_config, kafka.consumer_config, kafka.admin_config)


def test_plaintext_by_default_for_every_client() -> None:
    for build in BUILDERS:
        config = build(settings())
        assert config["security.protocol"] == "PLAINTEXT"
        assert not [key for key in config if key.startswith(("sasl.", "ssl."))]


def test_sasl_ssl_reaches_every_client(pem: Path) -> None:
    configured = sasl_ssl(pem)
    for build in BUILDERS:
        config = build(configured)
        assert config["security.protocol"] == "SASL_SSL"
        assert config["sasl.mechanism"] == "SCRAM-SHA-512"
        assert config["sasl.username"] == "foodpipe"
        assert config["sasl.password"] == "s3cret-sasl"
        assert config["ssl.ca.location"] == str(pem)
        assert config["ssl.endpoint.identification.algorithm"] == "https"


def test_mutual_tls_files_and_key_password(pem: Path) -> None:
    config = kafka.admin_config(
        settings(
            kafka_security_protocol="SSL",
            kafka_ssl_ca_location=str(pem),
            kafka_ssl_certificate_location=str(pem),
            kafka_ssl_key_location=str(pem),
            kafka_ssl_key_password="k3y-pw",
        )
    )
    assert config["ssl.certificate.location"] == str(pem)
    assert config["ssl.key.location"] == str(pem)
    assert config["ssl.key.password"] == "k3y-pw"
    assert "sasl.username" not in config


def test_every_kafka_client_in_the_code_is_built_from_the_config_builders() -> None:
    """One place builds librdkafka configs: no client gets a hand-made dict."""
    pattern = re.compile(r"\b(Producer|Consumer|AdminClient)\(\s*(?P<arg>[^\s)]*)")
    builders = ("producer_config(", "consumer_config(", "admin_config(")
    offenders = []
    for path in (REPO / "src" / "foodpipe").rglob("*.py"):
        for match in pattern.finditer(path.read_text()):
            arg = match.group("arg")
            if arg and not arg.startswith(builders):
                offenders.append(f"{path.name}: {match.group(0)}")
    assert not offenders, offenders


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"kafka_security_protocol": "TLS"}, r"^invalid configuration: KAFKA_SECURITY_PROTOCOL: "),
        (
            {"kafka_security_protocol": "SASL_SSL", "kafka_sasl_username": "u"},
            r"KAFKA_SECURITY_PROTOCOL=SASL_SSL needs KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD",
        ),
        (
            {"kafka_sasl_username": "u", "kafka_sasl_password": "p"},
            r"KAFKA_SASL_USERNAME is set but KAFKA_SECURITY_PROTOCOL is PLAINTEXT; use SASL_SSL",
        ),
        (
            {
                "foodpipe_env": "production",
                "kafka_security_protocol": "SASL_PLAINTEXT",
                "kafka_sasl_username": "u",
                "kafka_sasl_password": "change-me",
            },
            r"KAFKA_SASL_PASSWORD is a placeholder",
        ),
        ({"kafka_sasl_mechanism": "GSSAPI"}, r"^invalid configuration: KAFKA_SASL_MECHANISM: "),
        (
            {"kafka_security_protocol": "SSL", "kafka_ssl_ca_location": "/nonexistent/ca.pem"},
            r"KAFKA_SSL_CA_LOCATION: /nonexistent/ca.pem is not a file",
        ),
        ({"postgres_sslmode": "verify"}, r"^invalid configuration: POSTGRES_SSLMODE: "),
        ({"postgres_sslrootcert": "/nonexistent"}, r"POSTGRES_SSLROOTCERT: /nonexistent is not"),
    ],
)
def test_bad_values_are_one_line_naming_the_setting(values: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        settings(**values)
    assert "\n" not in str(caught.value)


def test_tls_files_only_with_a_tls_protocol_and_in_pairs(pem: Path) -> None:
    with pytest.raises(ConfigError, match=r"KAFKA_SSL_CA_LOCATION is set but .* is PLAINTEXT"):
        settings(kafka_ssl_ca_location=str(pem))
    with pytest.raises(ConfigError, match=r"KAFKA_SSL_CERTIFICATE_LOCATION and .* go together"):
        settings(kafka_security_protocol="SSL", kafka_ssl_certificate_location=str(pem))
    with pytest.raises(ConfigError, match="POSTGRES_SSLCERT and POSTGRES_SSLKEY go together"):
        settings(postgres_sslcert=str(pem))


def test_postgres_tls_settings_reach_the_connection_url(pem: Path) -> None:
    url = settings(
        postgres_sslmode="verify-full",
        postgres_sslrootcert=str(pem),
        postgres_sslcert=str(pem),
        postgres_sslkey=str(pem),
    ).sqlalchemy_url()
    assert url.query["sslmode"] == "verify-full"
    assert url.query["sslrootcert"] == str(pem)
    assert (url.query["sslcert"], url.query["sslkey"]) == (str(pem), str(pem))
    from_url = settings(
        database_url="postgresql://u:p@db/foodpipe", postgres_sslmode="require"
    ).sqlalchemy_url()
    assert from_url.query["sslmode"] == "require"
    assert "sslmode" not in settings().sqlalchemy_url().query  # libpq's default


def test_postgres_tls_settings_reach_the_owner_url_and_the_bench_connections(
    pem: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The owner (DATABASE_ADMIN_URL, used by the bench) reaches the same server: a
    server that requires TLS would refuse it without the same settings."""
    from foodpipe.bench import peer, scratch

    configured = settings(
        database_admin_url="postgresql://owner:pw@db:5433/postgres",
        postgres_sslmode="verify-full",
        postgres_sslrootcert=str(pem),
    )
    admin = configured.admin_sqlalchemy_url()
    assert admin is not None
    assert (admin.drivername, admin.host, admin.port) == ("postgresql+psycopg2", "db", 5433)
    assert admin.query == {"sslmode": "verify-full", "sslrootcert": str(pem)}
    assert settings(database_admin_url=None).admin_sqlalchemy_url() is None
    assert "pw" not in str(configured.public_view()["database_admin_url"])

    seen: dict[str, object] = {}
    monkeypatch.setattr(psycopg2, "connect", lambda **kw: seen.update(kw) or _Conn())
    scratch.connect(admin)
    assert (seen["sslmode"], seen["sslrootcert"]) == ("verify-full", str(pem))
    assert (seen["host"], seen["port"], seen["user"]) == ("db", 5433, "owner")
    assert peer.jdbc_address(admin) == (
        f"jdbc:postgresql://db:5433/postgres?sslmode=verify-full&sslrootcert={quote_plus(str(pem))}"
    )
    plain = URL.create("postgresql", host="h", database="d")
    assert peer.jdbc_address(plain) == "jdbc:postgresql://h:5432/d"

    with pytest.raises(ConfigError, match=r"but DATABASE_ADMIN_URL has \?sslmode=disable"):
        settings(
            database_admin_url="postgresql://owner:pw@db/postgres?sslmode=disable",
            postgres_sslmode="require",
        )


class _Conn:
    autocommit = False


def test_the_url_and_the_setting_may_not_disagree() -> None:
    with pytest.raises(ConfigError, match=r"POSTGRES_SSLMODE=verify-full but DATABASE_URL has"):
        settings(
            database_url="postgresql://u:p@db/foodpipe?sslmode=disable",
            postgres_sslmode="verify-full",
        )
    agreed = settings(
        database_url="postgresql://u:p@db/foodpipe?sslmode=require", postgres_sslmode="require"
    )
    assert agreed.sqlalchemy_url().query["sslmode"] == "require"


def test_secrets_never_show_in_foodpipe_config(
    pem: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name, value in {
        "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "KAFKA_SASL_USERNAME": "foodpipe",
        "KAFKA_SASL_PASSWORD": "s3cret-sasl",
        "KAFKA_SSL_CA_LOCATION": str(pem),
    }.items():
        monkeypatch.setenv(name, value)
    assert main(["--env-file", "/dev/null", "config"]) == 0
    out = capsys.readouterr().out
    assert "s3cret-sasl" not in out
    assert '"kafka_sasl_password": "***"' in out


# ---------------------------------------------------------------- secrets from files


def test_a_secret_can_come_from_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("POSTGRES_PASSWORD", "KAFKA_SASL_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    (tmp_path / "pg").write_text("from-a-file\n")
    (tmp_path / "sasl").write_text("sasl-from-a-file")
    monkeypatch.setenv("POSTGRES_PASSWORD_FILE", str(tmp_path / "pg"))
    monkeypatch.setenv("KAFKA_SASL_PASSWORD_FILE", str(tmp_path / "sasl"))
    loaded = settings(kafka_security_protocol="SASL_PLAINTEXT", kafka_sasl_username="u")
    assert loaded.postgres_password.get_secret_value() == "from-a-file"
    assert loaded.kafka_sasl_password is not None
    assert loaded.kafka_sasl_password.get_secret_value() == "sasl-from-a-file"


def test_a_secret_file_that_cannot_be_read_or_clashes_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("POSTGRES_PASSWORD", raising=False)
    monkeypatch.setenv("POSTGRES_PASSWORD_FILE", str(tmp_path / "absent"))
    with pytest.raises(ConfigError, match=r"^invalid configuration: POSTGRES_PASSWORD_FILE: "):
        settings()
    (tmp_path / "present").write_text("x")
    monkeypatch.setenv("POSTGRES_PASSWORD_FILE", str(tmp_path / "present"))
    monkeypatch.setenv("POSTGRES_PASSWORD", "also-set")
    with pytest.raises(ConfigError, match="POSTGRES_PASSWORD and POSTGRES_PASSWORD_FILE are both"):
        settings()


def test_kafkas_java_tools_in_the_bench_connect_the_same_way(pem: Path) -> None:
    props = kafka.java_security_properties(kafka.producer_config(sasl_ssl(pem)))
    assert props["security.protocol"] == "SASL_SSL"
    assert props["sasl.mechanism"] == "SCRAM-SHA-512"
    assert props["sasl.jaas.config"] == (
        "org.apache.kafka.common.security.scram.ScramLoginModule required"
        ' username="foodpipe" password="s3cret-sasl";'
    )
    assert (props["ssl.truststore.type"], props["ssl.truststore.location"]) == ("PEM", str(pem))
    assert props["ssl.endpoint.identification.algorithm"] == "https"
    plain = kafka.java_security_properties(kafka.producer_config(settings()))
    assert plain == {"security.protocol": "PLAINTEXT"}
