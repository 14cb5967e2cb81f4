"""Named failure classes. See the decision table in docs/KeyPoints/consumer.md.

- ``PoisonMessage``: this message can never succeed. It goes to the dead-letter topic
  with its reason, and the offset is committed past it.
- ``TransientError``: the world is temporarily broken (database restarting, broker
  unreachable, lock timeout). Retry with backoff; commit nothing meanwhile.
- ``FatalError``: retrying cannot help (bad configuration, authentication refused,
  dead-letter topic unwritable). One clear log line, then exit non-zero so the
  orchestrator restarts the service.
"""

from __future__ import annotations


class FoodpipeError(Exception):
    """Base class; ``str()`` is a single line meant for a human."""

    exit_code = 1


class PoisonMessage(FoodpipeError):
    """A message that is not a valid order."""

    def __init__(self, error_class: str, reason: str) -> None:
        super().__init__(f"{error_class}: {reason}")
        self.error_class = error_class
        self.reason = reason


class TransientError(FoodpipeError):
    """Retry later; nothing is committed while this persists."""


class FatalError(FoodpipeError):
    """Stop the process with a non-zero exit code."""

    exit_code = 3


class MembershipLost(FatalError):
    """The group never took this consumer back after declaring it dead.

    Its Kafka client is wedged: closing it blocks on a coordinator connection that no
    longer answers, so the process leaves without closing it (nothing is owned, nothing
    is uncommitted that matters: see ``ConsumerService._check_membership``).
    """
