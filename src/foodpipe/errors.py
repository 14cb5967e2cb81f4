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
