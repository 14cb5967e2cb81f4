"""The decision table: which exception belongs to which failure class."""

from __future__ import annotations

import pytest
from confluent_kafka import KafkaError, KafkaException
from sqlalchemy import exc as sa_exc

from foodpipe.consumer.classify import FailureClass, classify, classify_db_error, sqlstate
from foodpipe.errors import FatalError, PoisonMessage, TransientError

POISON = FailureClass.POISON
TRANSIENT = FailureClass.TRANSIENT
FATAL = FailureClass.FATAL


class FakeDriverError(Exception):
    """Stands in for a psycopg2 error: a message and the server's SQLSTATE."""

    def __init__(self, message: str, pgcode: str | None = None) -> None:
        super().__init__(message)
        self.pgcode = pgcode


def db_error(
    kind: type[sa_exc.DBAPIError],
    message: str,
    pgcode: str | None = None,
    invalidated: bool = False,
) -> sa_exc.DBAPIError:
    return kind(
        "INSERT ...", None, FakeDriverError(message, pgcode), connection_invalidated=invalidated
    )


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        # poison: the row's content is refused
        (db_error(sa_exc.IntegrityError, "violates check constraint", "23514"), POISON),
        (db_error(sa_exc.IntegrityError, "null value in column", "23502"), POISON),
        (db_error(sa_exc.DataError, "numeric field overflow", "22003"), POISON),
        (db_error(sa_exc.DataError, "unsupported Unicode escape sequence", "22P05"), POISON),
        # transient: the database is busy, restarting or gone for a while
        (
            db_error(sa_exc.OperationalError, "canceling statement due to lock timeout", "55P03"),
            TRANSIENT,
        ),
        (
            db_error(
                sa_exc.OperationalError, "canceling statement due to statement timeout", "57014"
            ),
            TRANSIENT,
        ),
        (
            db_error(
                sa_exc.OperationalError,
                "terminating connection due to administrator command",
                "57P01",
            ),
            TRANSIENT,
        ),
        (
            db_error(sa_exc.OperationalError, "the database system is starting up", "57P03"),
            TRANSIENT,
        ),
        (db_error(sa_exc.OperationalError, "could not serialize access", "40001"), TRANSIENT),
        (db_error(sa_exc.OperationalError, "deadlock detected", "40P01"), TRANSIENT),
        (db_error(sa_exc.OperationalError, "sorry, too many clients already", "53300"), TRANSIENT),
        (
            db_error(sa_exc.OperationalError, "could not extend file: No space left", "53100"),
            TRANSIENT,
        ),
        (db_error(sa_exc.OperationalError, "connection failure", "08006"), TRANSIENT),
        (
            db_error(
                sa_exc.InternalError, "cannot execute INSERT in a read-only transaction", "25006"
            ),
            TRANSIENT,
        ),
        (
            db_error(
                sa_exc.OperationalError,
                'connection to server at "127.0.0.1", port 15432 failed: Connection refused',
            ),
            TRANSIENT,
        ),
        (db_error(sa_exc.OperationalError, "server closed the connection unexpectedly"), TRANSIENT),
        (
            db_error(
                sa_exc.OperationalError,
                'FATAL:  database "x" is not currently accepting connections',
            ),
            TRANSIENT,
        ),
        (db_error(sa_exc.InterfaceError, "connection already closed"), TRANSIENT),
        (db_error(sa_exc.DatabaseError, "anything", None, invalidated=True), TRANSIENT),
        (sa_exc.TimeoutError("QueuePool limit reached"), TRANSIENT),
        # fatal: retrying cannot help
        (
            db_error(
                sa_exc.OperationalError, 'FATAL:  password authentication failed for user "a"'
            ),
            FATAL,
        ),
        (db_error(sa_exc.OperationalError, 'FATAL:  role "nobody" does not exist'), FATAL),
        (db_error(sa_exc.OperationalError, 'FATAL:  database "nope" does not exist'), FATAL),
        (db_error(sa_exc.OperationalError, "no pg_hba.conf entry for host"), FATAL),
        (db_error(sa_exc.OperationalError, "password authentication failed", "28P01"), FATAL),
        (db_error(sa_exc.ProgrammingError, 'relation "orders" does not exist', "42P01"), FATAL),
        (db_error(sa_exc.ProgrammingError, "permission denied for table orders", "42501"), FATAL),
        (db_error(sa_exc.InternalError, "something new", "XX000"), FATAL),
    ],
    ids=lambda value: str(value)[:60] if not isinstance(value, FailureClass) else str(value),
)
def test_database_errors(error: Exception, expected: FailureClass) -> None:
    assert classify_db_error(error) is expected
    assert classify(error) is expected


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        (KafkaError._TRANSPORT, TRANSIENT),
        (KafkaError._ALL_BROKERS_DOWN, TRANSIENT),
        (KafkaError.REBALANCE_IN_PROGRESS, TRANSIENT),
        (KafkaError.COORDINATOR_NOT_AVAILABLE, TRANSIENT),
        (KafkaError.UNKNOWN_TOPIC_OR_PART, TRANSIENT),
        (KafkaError.TOPIC_AUTHORIZATION_FAILED, FATAL),
        (KafkaError.GROUP_AUTHORIZATION_FAILED, FATAL),
        (KafkaError.SASL_AUTHENTICATION_FAILED, FATAL),
        # librdkafka's fatal error as a message error (fatal() is False there), and the
        # static-membership refusals behind it: the client is dead, a restart rejoins.
        (KafkaError._FATAL, FATAL),
        (KafkaError.UNRELEASED_INSTANCE_ID, FATAL),
        (KafkaError.FENCED_INSTANCE_ID, FATAL),
    ],
)
def test_kafka_errors(code: int, expected: FailureClass) -> None:
    assert classify(KafkaException(KafkaError(code))) is expected


def test_a_fatal_kafka_error_is_fatal_whatever_its_code() -> None:
    assert classify(KafkaException(KafkaError(KafkaError._TRANSPORT, fatal=True))) is FATAL


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (PoisonMessage("json_invalid", "bad"), POISON),
        (TransientError("later"), TRANSIENT),
        (FatalError("never"), FATAL),
        (ValueError("a bug"), FATAL),
        (KeyError("a bug"), FATAL),
    ],
)
def test_named_errors_and_bugs(error: Exception, expected: FailureClass) -> None:
    assert classify(error) is expected


def test_sqlstate_reads_the_driver_error() -> None:
    assert sqlstate(db_error(sa_exc.OperationalError, "x", "55P03")) == "55P03"
    assert sqlstate(db_error(sa_exc.OperationalError, "x")) is None
    assert sqlstate(ValueError("x")) is None
