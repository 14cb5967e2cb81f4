"""Fault injection for tests and for learning. Off unless ``FOODPIPE_FAULT`` is set;
never set it in production.

The fault-injection suite (``tests/fault``) must kill the consumer at one precise moment:
*after* a batch's database transaction (and its dead letters) are committed and
*before* its offsets are. Nothing outside the process can see that moment reliably (it
lasts microseconds and logs nothing), so the consumer offers one hook:

``FOODPIPE_FAULT=crash-after-db-commit:N``
    After the Nth batch written (rows and dead letters), log one line and SIGKILL this
    process before the offset commit. Its rows are in PostgreSQL, its offsets are not
    committed: the next owner of the partitions must be redelivered the batch and the
    idempotent write must absorb it.

The SIGKILL experiment of ``docs/KeyPoints/consumer.md`` uses it for the same reason: a
``kill -KILL`` typed by hand almost never lands in that window, so a learner would never
see the redelivery that at-least-once allows. The hook only chooses when the process
dies; what is written and committed, and in which order, is the same as without it.

It is read once at start-up by the composition root (:mod:`foodpipe.consumer.app`) and is
deliberately not a :class:`~foodpipe.settings.Settings` field: it is not configuration
and must not appear in ``.env.example`` or Compose files.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Mapping

from foodpipe.errors import FatalError
from foodpipe.log import get_logger

ENV_VAR = "FOODPIPE_FAULT"
CRASH_AFTER_DB_COMMIT = "crash-after-db-commit"


class FaultSpecError(FatalError):
    """``FOODPIPE_FAULT`` is set to something this build does not understand."""

    exit_code = 2


def after_db_commit_hook(environ: Mapping[str, str] | None = None) -> Callable[[], None] | None:
    """The hook the consumer loop calls between the DB commit and the offset commit."""
    spec = (environ if environ is not None else os.environ).get(ENV_VAR, "").strip()
    if not spec:
        return None
    kind, _, count_text = spec.partition(":")
    if kind != CRASH_AFTER_DB_COMMIT or not count_text.isdigit() or int(count_text) < 1:
        raise FaultSpecError(
            f"{ENV_VAR}={spec!r} is not understood; the only fault is"
            f" {CRASH_AFTER_DB_COMMIT}:N (N >= 1), and only tests set it"
        )
    target = int(count_text)
    log = get_logger("consumer.fault")
    log.warning("fault injection armed", fault=spec)
    seen = 0

    def hook() -> None:
        nonlocal seen
        seen += 1
        if seen >= target:
            log.warning("fault injection: SIGKILL after the DB commit, before the offset commit")
            os.kill(os.getpid(), signal.SIGKILL)

    return hook
