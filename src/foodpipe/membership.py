"""Static group membership: the ``group.instance.id`` of this consumer process.

A static member that restarts within its session timeout takes back its partitions
without a rebalance. Two live processes with the same id fence each other instead:
the classic protocol fences the one already in the group, the ``consumer`` protocol
refuses the newcomer (``UNRELEASED_INSTANCE_ID``). So the id must be unique per
replica and stable across that replica's restarts.

``KAFKA_GROUP_INSTANCE_ID=auto`` gives ``<hostname>-<n>``:

- In Compose every replica is its own container with its own host name (the container
  id), kept across ``restart:`` but new for each ``--scale`` replica; n is 0.
- On one host (the native stack) several consumers share the host name, so each
  process takes the lowest slot n whose lock file no other live process holds. The
  lock is an ``flock`` the kernel drops when the process dies, even by SIGKILL, so a
  crashed consumer that is started again gets its old slot, hence its old id, back.
"""

from __future__ import annotations

import fcntl
import os
import socket
import tempfile
from pathlib import Path
from typing import IO

from foodpipe.errors import FatalError
from foodpipe.settings import Settings

#: The value of KAFKA_GROUP_INSTANCE_ID that asks for a derived id.
AUTO = "auto"
#: More consumers of one group on one host than this is a mistake, not a deployment.
MAX_SLOTS = 64


class NoFreeSlot(FatalError):
    """Every ``auto`` slot of the group on this host is held by a live process."""


class InstanceId:
    """A claimed ``group.instance.id`` (or None: dynamic membership).

    Keep the object alive as long as the consumer runs: it holds the slot's lock.
    """

    def __init__(self, value: str | None, lock: IO[str] | None = None) -> None:
        self.value = value
        self._lock = lock

    def release(self) -> None:
        if self._lock is not None:
            self._lock.close()  # closing the file drops the flock
            self._lock = None


def claim_instance_id(settings: Settings, lock_dir: Path | None = None) -> InstanceId:
    """The id this process joins its group with, per ``KAFKA_GROUP_INSTANCE_ID``."""
    wanted = settings.kafka_group_instance_id
    if not wanted:
        return InstanceId(None)
    if wanted != AUTO:
        return InstanceId(wanted)
    host = socket.gethostname().split(".")[0] or "localhost"
    folder = lock_dir or Path(tempfile.gettempdir()) / "foodpipe-instance-ids"
    folder.mkdir(parents=True, exist_ok=True)
    for slot in range(MAX_SLOTS):
        name = f"{settings.kafka_consumer_group}.{host}-{slot}.lock"
        handle = (folder / name).open("a", encoding="utf-8")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            continue
        handle.truncate(0)
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        return InstanceId(f"{host}-{slot}", handle)
    raise NoFreeSlot(
        f"KAFKA_GROUP_INSTANCE_ID=auto: all {MAX_SLOTS} slots of group"
        f" {settings.kafka_consumer_group} on {host} are taken (lock files in {folder});"
        " stop some consumers or set KAFKA_GROUP_INSTANCE_ID per process"
    )
