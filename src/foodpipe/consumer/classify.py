"""The decision table: which failure class an error belongs to, and what the consumer does.

============  ====================================================  ============================
class         examples                                              action (offset)
============  ====================================================  ============================
poison        bad JSON, schema violation, total <= 0, non-UTF-8,    dead-letter it, count, log;
              a tombstone, a row that violates a DB constraint      commit past it
transient     DB down or restarting, connection reset, lock or      retry the same batch with
              statement timeout, deadlock, too many connections,    capped backoff, partitions
              broker unreachable, coordinator moving                paused, polling; commit nothing
fatal         authentication refused, database or table missing,    one line, exit 3; commit nothing
              privilege missing, DLQ unwritable, a bug
============  ====================================================  ============================

Every function here is pure: it looks at an exception and names its class, so the table
is unit-tested exhaustively without any service running.
"""

from __future__ import annotations

import re
from enum import StrEnum

from confluent_kafka import KafkaError, KafkaException
from sqlalchemy import exc as sa_exc

from foodpipe.errors import FatalError, PoisonMessage, TransientError


class FailureClass(StrEnum):
    POISON = "poison"
    TRANSIENT = "transient"
    FATAL = "fatal"


class ErrorClass(StrEnum):
    """The ``dlq-error-class`` header: why a message was dead-lettered.

    A stable vocabulary: dashboards and replay tools filter on it.
    """

    EMPTY_VALUE = "empty_value"  # a tombstone (null value) or zero bytes
    MISSING_KEY = "missing_key"  # orders are keyed by customer_id; a null key breaks ordering
    KEY_MISMATCH = "key_mismatch"  # the key is not the order's customer_id
    OVERSIZE = "oversize"  # larger than any valid order can be; not even parsed
    NOT_UTF8 = "not_utf8"  # the bytes are not UTF-8 text
    JSON_INVALID = "json_invalid"  # UTF-8, but not JSON
    NOT_OBJECT = "not_object"  # JSON, but an array, string, number or null
    SCHEMA_VIOLATION = (
        "schema_violation"  # missing field, wrong type, bad id format, unknown status
    )
    BUSINESS_RULE = "business_rule"  # total <= 0, quantity <= 0, total != sum of the items
    DB_CONSTRAINT = "db_constraint"  # PostgreSQL refused the row (constraint or data error)


# SQLSTATE classes (first two characters) and codes, from PostgreSQL's errcodes table.
_TRANSIENT_SQLSTATE_CLASSES = frozenset(
    {
        "08",  # connection exception
        "40",  # transaction rollback: serialization failure, deadlock
        "53",  # insufficient resources: disk full, out of memory, too many connections
        "57",  # operator intervention: admin/crash shutdown, cannot connect now, query canceled
        "58",  # system error (I/O)
        "HV",  # foreign data wrapper errors are usually the remote end being down
    }
)
_TRANSIENT_SQLSTATES = frozenset(
    {
        "55P03",  # lock_not_available: our lock_timeout fired because someone holds the table
        "55006",  # object_in_use
        "25006",  # read_only_sql_transaction: we reached a standby during a failover
    }
)
_POISON_SQLSTATE_CLASSES = frozenset(
    {
        "22",  # data exception: value out of range, invalid text (e.g. NUL) for JSONB
        "23",  # integrity constraint violation: CHECK, NOT NULL, foreign key
    }
)
_FATAL_SQLSTATE_CLASSES = frozenset(
    {
        "28",  # invalid authorization specification: wrong password, unknown role
        "3D",  # invalid catalog name: the database does not exist
        "42",  # syntax error or access rule violation: table missing, privilege missing
    }
)
# psycopg2 reports a refused connection *before* a session exists, so there is no
# SQLSTATE; these are the server's FATAL messages that retrying cannot fix.
_FATAL_CONNECT_MESSAGES = re.compile(
    r"password authentication failed|no pg_hba\.conf entry|role \".*\" does not exist"
    r"|database \".*\" does not exist|SSL is required",
    re.IGNORECASE,
)

_FATAL_KAFKA_CODES = frozenset(
    {
        KafkaError.TOPIC_AUTHORIZATION_FAILED,
        KafkaError.GROUP_AUTHORIZATION_FAILED,
        KafkaError.CLUSTER_AUTHORIZATION_FAILED,
        KafkaError.SASL_AUTHENTICATION_FAILED,
        KafkaError._AUTHENTICATION,
        KafkaError._INVALID_ARG,
        KafkaError._FENCED,
        # A fatal librdkafka error reaches the consumer as a message error with code
        # _FATAL, whose fatal() is False: the client is dead, and waiting would idle for
        # ever. Static membership meets it: in the consumer protocol a member restarted
        # within the session of its crashed predecessor gets UNRELEASED_INSTANCE_ID
        # (fatal in librdkafka); the restart policy starts it again until the old
        # session has expired. The classic protocol fences the older member instead.
        KafkaError._FATAL,
        KafkaError.UNRELEASED_INSTANCE_ID,
        KafkaError.FENCED_INSTANCE_ID,
    }
)


def sqlstate(error: BaseException) -> str | None:
    """The five-character SQLSTATE of a SQLAlchemy or psycopg2 error, if the server sent one."""
    original = getattr(error, "orig", error)
    code = getattr(original, "pgcode", None)
    return code if isinstance(code, str) else None


def classify_db_error(error: BaseException) -> FailureClass:
    """Which failure class a database exception belongs to."""
    code = sqlstate(error)
    if code is not None:
        if code in _TRANSIENT_SQLSTATES or code[:2] in _TRANSIENT_SQLSTATE_CLASSES:
            return FailureClass.TRANSIENT
        if code[:2] in _POISON_SQLSTATE_CLASSES:
            return FailureClass.POISON
        # Fatal classes and anything unknown: do not loop forever on an error we do not
        # understand, and never skip a batch because of it either.
        return FailureClass.FATAL
    if isinstance(error, sa_exc.DBAPIError) and error.connection_invalidated:
        return FailureClass.TRANSIENT
    if isinstance(error, sa_exc.OperationalError | sa_exc.InterfaceError):
        # No SQLSTATE: the connection failed or broke (refused, reset, closed, timeout,
        # "the database system is starting up", "not currently accepting connections").
        if _FATAL_CONNECT_MESSAGES.search(str(error)):
            return FailureClass.FATAL
        return FailureClass.TRANSIENT
    if isinstance(error, sa_exc.TimeoutError):  # no pooled connection freed up in time
        return FailureClass.TRANSIENT
    return FailureClass.FATAL


def classify_kafka_error(error: KafkaError) -> FailureClass:
    """Client errors are retried by librdkafka itself unless they are fatal or auth errors."""
    if error.fatal() or error.code() in _FATAL_KAFKA_CODES:
        return FailureClass.FATAL
    return FailureClass.TRANSIENT


def classify(error: BaseException) -> FailureClass:
    """The whole decision table: any exception the consumer can meet -> its class."""
    if isinstance(error, PoisonMessage):
        return FailureClass.POISON
    if isinstance(error, TransientError):
        return FailureClass.TRANSIENT
    if isinstance(error, FatalError):
        return FailureClass.FATAL
    if isinstance(error, KafkaException) and error.args and isinstance(error.args[0], KafkaError):
        return classify_kafka_error(error.args[0])
    if isinstance(error, sa_exc.SQLAlchemyError):
        return classify_db_error(error)
    # An exception we did not plan for is a bug: stop, commit nothing, let the
    # orchestrator restart us, rather than guess and risk skipping data.
    return FailureClass.FATAL
