"""The one validated settings object.

Every service reads its configuration here, once, at start-up (never at import time),
from the process environment and an optional ``.env`` file. Field names map to
upper-case environment variables: ``kafka_bootstrap_servers`` <- ``KAFKA_BOOTSTRAP_SERVERS``.

A bad value raises :class:`ConfigError` whose message is a single line naming the
variable and what was expected; the CLI prints that line and exits 2, with no traceback.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal, get_args

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from foodpipe.log import scrub

# Values that appear in .env.example. Outside development they are refused so that a
# copied example file can never reach production with a guessable password.
PLACEHOLDER_PASSWORDS = frozenset({"change-me", "changeme", "password", "postgres", "foodpipe"})

_HOST_PORT = re.compile(r"^(\[[0-9a-fA-F:]+\]|[A-Za-z0-9_.-]+):(\d{1,5})$")


class ConfigError(Exception):
    """A configuration value is missing or malformed. ``str()`` is one line."""


class Environment(StrEnum):
    DEVELOPMENT = "development"
    PRODUCTION = "production"


class Settings(BaseSettings):
    """foodpipe configuration. Each field's description feeds the README's table."""

    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        case_sensitive=False,
    )

    foodpipe_env: Environment = Field(
        Environment.DEVELOPMENT,
        description="development or production; production refuses placeholder passwords",
    )
    kafka_bootstrap_servers: str = Field(
        "127.0.0.1:19092",
        description="Comma-separated host:port list of Kafka brokers to bootstrap from",
    )
    kafka_topic: str = Field("food-orders", description="Topic the orders are published to")
    kafka_dlq_topic: str = Field(
        "food-orders.dlq", description="Dead-letter topic for messages that are not valid orders"
    )
    kafka_consumer_group: str = Field(
        "order-processors", description="Consumer group id of the consumer service"
    )
    kafka_topic_partitions: int = Field(
        3, ge=1, le=1000, description="Partitions of the orders topic when it is created"
    )
    kafka_replication_factor: int = Field(
        1, ge=1, le=10, description="Replication factor of the topics when they are created"
    )
    kafka_retention_ms: int = Field(
        7 * 24 * 3600 * 1000, ge=60_000, description="Retention of the orders topic (7 days)"
    )
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT",
        description="PLAINTEXT, SSL (TLS), SASL_PLAINTEXT or SASL_SSL (TLS and a login);"
        " every Kafka client foodpipe makes uses it",
    )
    kafka_sasl_mechanism: Literal["SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN"] = Field(
        "SCRAM-SHA-512", description="SASL mechanism when the protocol is SASL_*"
    )
    kafka_sasl_username: str | None = Field(
        None, description="SASL user name (required with SASL_SSL or SASL_PLAINTEXT)"
    )
    kafka_sasl_password: SecretStr | None = Field(
        None, description="SASL password (a secret; or KAFKA_SASL_PASSWORD_FILE)"
    )
    kafka_ssl_ca_location: Path | None = Field(
        None,
        description="PEM file of the CA(s) that signed the brokers' certificates (SSL,"
        " SASL_SSL); unset: the system's trusted CAs",
    )
    kafka_ssl_certificate_location: Path | None = Field(
        None, description="PEM client certificate, for brokers that require mutual TLS"
    )
    kafka_ssl_key_location: Path | None = Field(
        None, description="PEM private key of the client certificate"
    )
    kafka_ssl_key_password: SecretStr | None = Field(
        None, description="Password of an encrypted client key (a secret)"
    )
    kafka_ssl_endpoint_identification: Literal["https", "none"] = Field(
        "https",
        description="https: the broker's certificate must name the host foodpipe connects"
        " to; none turns that check off (never in production)",
    )
    database_url: SecretStr | None = Field(
        None,
        description="SQLAlchemy URL of PostgreSQL, e.g. postgresql+psycopg2://user:pw@host:5432/db;"
        " when unset it is built from the POSTGRES_* parts",
    )
    postgres_host: str = Field("127.0.0.1", description="PostgreSQL host (if no DATABASE_URL)")
    postgres_port: int = Field(15432, ge=1, le=65535, description="PostgreSQL port")
    postgres_db: str = Field("foodpipe", description="PostgreSQL database name")
    postgres_user: str = Field("foodpipe_app", description="PostgreSQL user")
    postgres_password: SecretStr = Field(
        SecretStr("change-me"),
        description="PostgreSQL password (a secret); POSTGRES_PASSWORD_FILE may name a file"
        " that holds it instead, which is how Compose passes it",
    )
    postgres_sslmode: (
        Literal["disable", "allow", "prefer", "require", "verify-ca", "verify-full"] | None
    ) = Field(
        None,
        description="libpq sslmode: disable ... require (encrypted), verify-ca (and the"
        " CA is trusted), verify-full (and the host name matches); unset: libpq's default"
        " (prefer) or the URL's ?sslmode=",
    )
    postgres_sslrootcert: Path | None = Field(
        None, description="PEM file of the CA(s) trusted for the server's certificate"
    )
    postgres_sslcert: Path | None = Field(
        None, description="PEM client certificate, for servers that require one"
    )
    postgres_sslkey: Path | None = Field(
        None, description="PEM private key of the client certificate (mode 600)"
    )
    db_pool_size: int = Field(2, ge=1, le=50, description="SQLAlchemy connection pool size")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", description="DEBUG, INFO, WARNING or ERROR"
    )
    log_format: Literal["auto", "json", "console"] = Field(
        "auto", description="auto (JSON unless stdout is a terminal), json or console"
    )
    order_rate: float = Field(
        10.0, ge=0, description="Producer orders per second; 0 means as fast as possible"
    )
    producer_state_dir: Path = Field(
        Path(".stack/producer-state"),
        description="Producer: directory of the order-id counters; every producer instance"
        " must share it (a named volume in Compose) so ids stay unique across instances"
        " and restarts",
    )
    batch_size: int = Field(500, ge=1, le=100_000, description="Consumer: max messages per batch")
    batch_timeout_ms: int = Field(
        1000, ge=1, le=600_000, description="Consumer: max wait to fill a batch, in ms"
    )
    batch_linger_ms: int = Field(
        5,
        ge=0,
        le=600_000,
        description="Consumer: once the messages already fetched are taken, how long to"
        " wait for more before writing a partial batch, in ms (low: latency; high: bigger"
        " batches when orders trickle in)",
    )
    kafka_session_timeout_ms: int = Field(
        45_000,
        ge=6_000,
        le=300_000,
        description="Consumer: how long the group waits for a member that stopped"
        " heartbeating (crashed) before moving its partitions (session.timeout.ms)",
    )
    kafka_max_poll_interval_ms: int = Field(
        300_000,
        ge=10_000,
        le=3_600_000,
        description="Consumer: longest gap between polls before the group removes the"
        " member (max.poll.interval.ms); the database timeouts stay well below it",
    )
    kafka_group_protocol: Literal["classic", "consumer"] = Field(
        "classic",
        description="Consumer: the group protocol. classic (JoinGroup/SyncGroup, the"
        " cooperative-sticky assignor in the client) or consumer (KIP-848: the broker"
        " assigns, members reconcile through heartbeats; Kafka 4.0+)",
    )
    kafka_group_remote_assignor: Literal["uniform", "range"] | None = Field(
        None,
        description="Consumer, with KAFKA_GROUP_PROTOCOL=consumer only: the broker-side"
        " assignor (group.remote.assignor), uniform or range, both sticky; unset: the"
        " broker's default (uniform)",
    )
    kafka_group_instance_id: str | None = Field(
        None,
        description="Consumer: static membership (group.instance.id). Unset or empty:"
        " dynamic membership; auto: <hostname>-<n>, n the lowest slot no other consumer"
        " of the group on this host holds; any other value is used as it is and must be"
        " unique per replica",
    )
    metrics_port: int = Field(
        0, ge=0, le=65535, description="Port for /healthz, /readyz, /metrics; 0 turns them off"
    )
    metrics_host: str = Field(
        "127.0.0.1", description="Address the HTTP endpoints bind to (0.0.0.0 in containers)"
    )
    database_admin_url: SecretStr | None = Field(
        None, description="owner URL used only by tooling: bench, tests"
    )

    @field_validator("kafka_bootstrap_servers")
    @classmethod
    def _check_bootstrap(cls, value: str) -> str:
        entries = [part.strip() for part in value.split(",") if part.strip()]
        if not entries:
            raise ValueError("expected host:port[,host:port...]")
        for entry in entries:
            match = _HOST_PORT.match(entry)
            if not match or not 1 <= int(match.group(2)) <= 65535:
                raise ValueError(f"'{entry}' is not host:port; expected host:port[,host:port...]")
        return ",".join(entries)

    @field_validator("kafka_topic", "kafka_dlq_topic", "kafka_consumer_group")
    @classmethod
    def _check_name(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9._-]{1,249}", value):
            raise ValueError("expected 1-249 characters of letters, digits, '.', '_' or '-'")
        return value

    @field_validator("kafka_group_instance_id")
    @classmethod
    def _check_instance_id(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = value.strip()
        # Kafka takes any string up to 249 characters; the name rules keep it readable in
        # `foodpipe status` and Kafka's tools, and "auto" leaves room for "-<slot>".
        if not re.fullmatch(r"[A-Za-z0-9._-]{1,200}", value):
            raise ValueError(
                "expected auto, or 1-200 letters, digits, '.', '_' or '-' unique per replica;"
                " leave it empty for dynamic membership"
            )
        return value

    # The admin URL is held to the same rules: a typo should fail at start, not mid-bench.
    @field_validator("database_url", "database_admin_url")
    @classmethod
    def _check_database_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value():
            return None
        try:
            url = make_url(value.get_secret_value())
        except ArgumentError:
            raise ValueError(
                "not a URL; expected postgresql+psycopg2://user:password@host:5432/dbname"
            ) from None
        if not url.drivername.startswith("postgresql"):
            raise ValueError(f"driver '{url.drivername}' is not PostgreSQL; expected postgresql://")
        if not url.host or not url.database:
            raise ValueError("host and database name are required: postgresql://user:pw@host/db")
        try:
            _ = url.port
        except ValueError:
            raise ValueError("the port is not a number") from None
        return value

    @field_validator(
        "kafka_sasl_username",
        "kafka_group_instance_id",
        "kafka_group_remote_assignor",
        "kafka_ssl_ca_location",
        "kafka_ssl_certificate_location",
        "kafka_ssl_key_location",
        "postgres_sslmode",
        "postgres_sslrootcert",
        "postgres_sslcert",
        "postgres_sslkey",
        mode="before",
    )
    @classmethod
    def _empty_is_unset(cls, value: Any) -> Any:
        # "NAME=" in a .env file (or .env.example's "# NAME=") means "not set".
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator(
        "kafka_ssl_ca_location",
        "kafka_ssl_certificate_location",
        "kafka_ssl_key_location",
        "postgres_sslrootcert",
        "postgres_sslcert",
        "postgres_sslkey",
    )
    @classmethod
    def _check_file(cls, value: Path | None) -> Path | None:
        # A missing file would otherwise surface as a TLS error on the first connect.
        if value is None:
            return None
        if not value.is_file():
            raise ValueError(f"{value} is not a file")
        if not os.access(value, os.R_OK):
            raise ValueError(f"{value} is not readable by this user")
        return value

    @model_validator(mode="after")
    def _check_kafka_security(self) -> Settings:
        protocol = self.kafka_security_protocol
        sasl = protocol.startswith("SASL_")
        tls = protocol.endswith("SSL")
        if sasl and not (self.kafka_sasl_username and self.kafka_sasl_password):
            raise ValueError(
                f"KAFKA_SECURITY_PROTOCOL={protocol} needs KAFKA_SASL_USERNAME and"
                " KAFKA_SASL_PASSWORD"
            )
        # The user name, not the password: a placeholder password may sit in a copied
        # .env.example; a user name is only ever set on purpose.
        if not sasl and self.kafka_sasl_username:
            raise ValueError(
                f"KAFKA_SASL_USERNAME is set but KAFKA_SECURITY_PROTOCOL is {protocol};"
                " use SASL_SSL (or unset it)"
            )
        password = self.kafka_sasl_password
        if (
            sasl
            and self.foodpipe_env is Environment.PRODUCTION
            and password is not None
            and password.get_secret_value() in PLACEHOLDER_PASSWORDS
        ):
            raise ValueError(
                "KAFKA_SASL_PASSWORD is a placeholder; set a real one (FOODPIPE_ENV=production"
                " refuses placeholders)"
            )
        tls_files = {
            "KAFKA_SSL_CA_LOCATION": self.kafka_ssl_ca_location,
            "KAFKA_SSL_CERTIFICATE_LOCATION": self.kafka_ssl_certificate_location,
            "KAFKA_SSL_KEY_LOCATION": self.kafka_ssl_key_location,
        }
        given = [name for name, value in tls_files.items() if value is not None]
        if given and not tls:
            raise ValueError(
                f"{given[0]} is set but KAFKA_SECURITY_PROTOCOL is {protocol}; use SSL or"
                " SASL_SSL (or unset it)"
            )
        if (self.kafka_ssl_certificate_location is None) != (self.kafka_ssl_key_location is None):
            raise ValueError(
                "KAFKA_SSL_CERTIFICATE_LOCATION and KAFKA_SSL_KEY_LOCATION go together"
            )
        return self

    @model_validator(mode="after")
    def _check_postgres_tls(self) -> Settings:
        if (self.postgres_sslcert is None) != (self.postgres_sslkey is None):
            raise ValueError("POSTGRES_SSLCERT and POSTGRES_SSLKEY go together")
        wanted = self._tls_query()
        urls = {"DATABASE_URL": self.database_url, "DATABASE_ADMIN_URL": self.database_admin_url}
        if not wanted:
            urls = {}  # nothing set through POSTGRES_SSL*: the URLs alone decide
        for name, secret in urls.items():
            if secret is None:
                continue
            query = make_url(secret.get_secret_value()).query
            for key, value in wanted.items():
                if key in query and query[key] != value:
                    raise ValueError(
                        f"POSTGRES_{key.upper()}={value} but {name} has"
                        f" ?{key}={query[key]}; set it in one place"
                    )
        if self.postgres_sslmode == "disable" and len(wanted) > 1:
            raise ValueError("POSTGRES_SSLMODE=disable, yet certificate files are set")
        return self

    @model_validator(mode="after")
    def _refuse_placeholders(self) -> Settings:
        if self.kafka_dlq_topic == self.kafka_topic:
            raise ValueError("KAFKA_DLQ_TOPIC must differ from KAFKA_TOPIC")
        # librdkafka refuses this combination when the consumer is created; say it at start.
        if self.kafka_max_poll_interval_ms < self.kafka_session_timeout_ms:
            raise ValueError("KAFKA_MAX_POLL_INTERVAL_MS must be at least KAFKA_SESSION_TIMEOUT_MS")
        # librdkafka would ignore it without a word: the classic protocol assigns in the
        # client (cooperative-sticky), never on the broker.
        if self.kafka_group_remote_assignor and self.kafka_group_protocol == "classic":
            raise ValueError(
                f"KAFKA_GROUP_REMOTE_ASSIGNOR={self.kafka_group_remote_assignor} needs"
                " KAFKA_GROUP_PROTOCOL=consumer; set that too, or unset the assignor"
            )
        return self

    def check_database_password(self) -> None:
        """Refuse a placeholder database password outside development.

        Checked where a database connection is made (``db.make_engine``), not when the
        settings load: the producer and the topic initialiser never connect to the
        database, so they need no database password at all.
        """
        if self.foodpipe_env is Environment.PRODUCTION:
            password = self.sqlalchemy_url().password
            if not password or str(password) in PLACEHOLDER_PASSWORDS:
                raise ConfigError(
                    "invalid configuration: the database password is a placeholder; set a "
                    "real one in .env (FOODPIPE_ENV=production refuses placeholders)"
                )

    def sqlalchemy_url(self) -> URL:
        """The database URL, always with the psycopg2 driver and the POSTGRES_SSL* settings."""
        if self.database_url is not None:
            url = make_url(self.database_url.get_secret_value())
        else:
            url = URL.create(
                "postgresql+psycopg2",
                username=self.postgres_user,
                password=self.postgres_password.get_secret_value(),
                host=self.postgres_host,
                port=self.postgres_port,
                database=self.postgres_db,
            )
        return self._with_driver_and_tls(url)

    def admin_sqlalchemy_url(self) -> URL | None:
        """DATABASE_ADMIN_URL like :meth:`sqlalchemy_url`: the owner reaches the same
        server, so it gets the same TLS settings (a server that requires TLS refuses
        the owner otherwise)."""
        if self.database_admin_url is None:
            return None
        return self._with_driver_and_tls(make_url(self.database_admin_url.get_secret_value()))

    def _with_driver_and_tls(self, url: URL) -> URL:
        if url.drivername in ("postgresql", "postgres"):
            url = url.set(drivername="postgresql+psycopg2")
        tls = self._tls_query()
        return url.update_query_dict(tls) if tls else url

    def _tls_query(self) -> dict[str, str]:
        """The POSTGRES_SSL* settings as libpq connection parameters (those that are set)."""
        values = {
            "sslmode": self.postgres_sslmode,
            "sslrootcert": self.postgres_sslrootcert,
            "sslcert": self.postgres_sslcert,
            "sslkey": self.postgres_sslkey,
        }
        return {key: str(value) for key, value in values.items() if value is not None}

    def redacted_database_url(self) -> str:
        """Safe to log: the password is replaced by ***."""
        return redact_url(self.sqlalchemy_url())

    def public_view(self) -> dict[str, Any]:
        """Every setting with secrets masked, for start-up logs."""
        view = self.model_dump(mode="json")
        view["database_url"] = self.redacted_database_url()
        admin_url = self.admin_sqlalchemy_url()
        if admin_url is not None:
            view["database_admin_url"] = redact_url(admin_url)
        view["postgres_password"] = "***"  # noqa: S105 - the mask, not a password
        for secret in ("kafka_sasl_password", "kafka_ssl_key_password"):
            if view.get(secret) is not None:
                view[secret] = "***"
        return view


def redact_url(url: URL) -> str:
    """``url`` as text with its password masked, in the user part and in the query."""
    return scrub(url.render_as_string(hide_password=True))


def env_var_name(field_name: str) -> str:
    return field_name.upper()


def load_settings(**overrides: Any) -> Settings:
    """Read and validate settings, turning pydantic's report into one line."""
    values = {**secrets_from_files(os.environ), **overrides}
    try:
        return Settings(**values)
    except ValidationError as exc:
        raise ConfigError(_one_line(exc)) from None


#: Settings that are secrets (``SecretStr``): each may also be read from a file.
SECRET_FIELDS = tuple(
    name
    for name, field in Settings.model_fields.items()
    if field.annotation is SecretStr or SecretStr in get_args(field.annotation)
)


def secrets_from_files(environ: Mapping[str, str]) -> dict[str, str]:
    """Secrets named by ``<NAME>_FILE`` variables, e.g. ``POSTGRES_PASSWORD_FILE``.

    The convention of the official postgres image: Compose mounts each secret as a file
    under ``/run/secrets/`` and the container's environment holds only its path, so the
    secret never shows in ``docker inspect``. One trailing newline is dropped (``echo``
    writes one). ``<NAME>`` and ``<NAME>_FILE`` together are refused: which one wins
    would be a guess.
    """
    found = {}
    for field in SECRET_FIELDS:
        name = env_var_name(field)
        path = environ.get(f"{name}_FILE")
        if not path:
            continue
        if environ.get(name):
            raise ConfigError(
                f"invalid configuration: {name} and {name}_FILE are both set; keep one"
            )
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = getattr(exc, "strerror", None) or type(exc).__name__
            raise ConfigError(
                f"invalid configuration: {name}_FILE: cannot read {path} ({reason})"
            ) from None
        found[field] = text.removesuffix("\n").removesuffix("\r")
    return found


def _one_line(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors():
        loc = error.get("loc") or ()
        message = str(error.get("msg", "invalid value")).removeprefix("Value error, ")
        if loc:
            parts.append(f"{env_var_name(str(loc[0]))}: {message}")
        else:
            parts.append(message)
    return "invalid configuration: " + "; ".join(parts)
