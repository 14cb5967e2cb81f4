"""Order ids ``ORD-YYYYMMDD-NNNNN``, unique across restarts and concurrent producers.

How uniqueness is achieved: a hi/lo block allocator over a small state file
------------------------------------------------------------------------------
All producers of a topic share one state directory (``PRODUCER_STATE_DIR``; in Compose
a named volume mounted into every producer container). It holds ``order-ids.json``,
``{"days": {"20250110": 12001, ...}}``: per UTC day, the next number nobody owns yet.

To get ids, an allocator takes an exclusive ``fcntl.flock`` on ``order-ids.lock``,
reads the next free number ``n`` for its day, writes ``n + block`` (to a temporary
file, fsync, atomic rename, fsync of the directory), and unlocks. The numbers
``n .. n+block-1`` are now its own, and it hands them out from memory with no further
I/O. Hence:

- **Concurrent instances** (threads with their own allocator, processes, containers
  sharing the volume) never get overlapping blocks: the read-modify-write happens
  under the lock.
- **Restarts** continue after the last block any instance reserved, because the
  reservation is on disk (and fsynced) *before* any id of the block is used.
- **A crash** leaves the unused rest of its block as a gap. Gaps are harmless; a
  duplicate is impossible.

Blocks adapt to the rate: a block that lasted under a second doubles the next one (up
to ``max_block``), a block that lasted over a minute halves it (down to ``min_block``).
At 10 orders/s that is one small file write every ~10 s and tiny gaps on restart; at
50,000/s it is a few writes a second.

Days and overflow
-----------------
The date is the UTC day of the order's ``created_at``, and each day counts from 00001.
The counters of different days are independent, so a producer whose clock is a little
behind another's cannot reuse a number. Counters older than ``RETAIN_DAYS`` before the
newest day are pruned; asking for such a day (a clock that far behind) is refused
rather than risk reissuing a pruned day's numbers.

Five digits cover 99,999 orders a day (under 3 hours at 10/s). Past that the numeric
part **widens**: ``ORD-20250110-99999`` is followed by ``ORD-20250110-100000``, up to
nine digits (999,999,999 a day, which is what the contract's ``ORDER_ID_PATTERN``
accepts). Ids stay unique but no longer sort lexicographically past 99,999, so order by
``created_at``, not by ``order_id``. Exhausting nine digits within one day raises
:class:`OrderIdError`.

Limits: ``flock`` is honoured by local filesystems (a Docker volume on one host) and
NFSv4, not by every network filesystem; producers on different hosts must share a
filesystem with working POSIX locks, or they could collide.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from foodpipe.errors import FatalError

STATE_FILE = "order-ids.json"
LOCK_FILE = "order-ids.lock"
FIRST_NUMBER = 1
#: The contract's pattern allows 5 to 9 digits.
MAX_NUMBER = 999_999_999
RETAIN_DAYS = 35


class OrderIdError(FatalError):
    """The id state cannot be used safely (unwritable, corrupt, exhausted)."""


def format_order_id(day: date, number: int) -> str:
    return f"ORD-{day:%Y%m%d}-{number:05d}"


class OrderIdAllocator:
    """Hands out order ids from blocks reserved in ``state_dir``.

    Thread-safe. Several allocators (in threads or processes) may share ``state_dir``.
    """

    def __init__(
        self,
        state_dir: Path,
        *,
        min_block: int = 100,
        max_block: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not 1 <= min_block <= max_block:
            raise ValueError("need 1 <= min_block <= max_block")
        self._dir = Path(state_dir)
        self._min_block = min_block
        self._max_block = max_block
        self._clock = clock
        self._block_size = min_block
        self._lock = threading.Lock()
        self._day: date | None = None
        self._prefix = ""
        self._next = 0
        self._end = 0  # exclusive
        self._block_started = 0.0
        #: How many blocks this allocator reserved (for tests and stats).
        self.blocks_reserved = 0
        self._prepare_dir()

    @property
    def block_size(self) -> int:
        """Size of the next block this allocator will reserve."""
        return self._block_size

    def next_id(self, created_at: datetime) -> str:
        """A fresh id dated with the UTC day of ``created_at`` (which must be aware)."""
        if created_at.tzinfo is UTC:  # the producer's own clock: the cheap path
            day = created_at.date()
        else:
            offset = created_at.utcoffset()
            if offset is None:
                raise ValueError("created_at must be timezone-aware")
            day = (created_at.replace(tzinfo=None) - offset).date()
        with self._lock:
            if day != self._day or self._next >= self._end:
                self._reserve(day)
            number = self._next
            self._next += 1
            return f"{self._prefix}{number:05d}"

    # -- reservation -----------------------------------------------------------------

    def _reserve(self, day: date) -> None:
        now = self._clock()
        if day == self._day and self.blocks_reserved:
            lasted = now - self._block_started
            if lasted < 1.0:
                self._block_size = min(self._block_size * 2, self._max_block)
            elif lasted > 60.0:
                self._block_size = max(self._block_size // 2, self._min_block)
        start, end = self._reserve_on_disk(day, self._block_size)
        self._day = day
        self._prefix = f"ORD-{day:%Y%m%d}-"
        self._next, self._end = start, end
        self._block_started = now
        self.blocks_reserved += 1

    def _reserve_on_disk(self, day: date, size: int) -> tuple[int, int]:
        key = f"{day:%Y%m%d}"
        with self._locked():
            days = self._read_state()
            if key not in days and days:
                newest = max(datetime.strptime(k, "%Y%m%d").date() for k in days)
                if day < newest - timedelta(days=RETAIN_DAYS):
                    raise OrderIdError(
                        f"refusing to allocate order ids for {day}: it is more than "
                        f"{RETAIN_DAYS} days before {newest}, the newest day in "
                        f"{self._state_path}; check the system clock"
                    )
            start = days.get(key, FIRST_NUMBER)
            if start > MAX_NUMBER:
                raise OrderIdError(
                    f"order ids for {day} are exhausted ({MAX_NUMBER:,} issued); "
                    "the id format allows at most 9 digits a day"
                )
            end = min(start + size, MAX_NUMBER + 1)
            days[key] = end
            self._write_state(_prune(days))
            return start, end

    # -- files -----------------------------------------------------------------------

    @property
    def _state_path(self) -> Path:
        return self._dir / STATE_FILE

    def _prepare_dir(self) -> None:
        try:
            self._dir.mkdir(parents=True, exist_ok=True)
            (self._dir / LOCK_FILE).touch(exist_ok=True)
        except OSError as exc:
            raise OrderIdError(
                f"cannot use order-id state directory {self._dir}: {exc.strerror}; "
                "set PRODUCER_STATE_DIR to a writable directory"
            ) from None

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        # A fresh open per reservation: flock locks belong to the open file description,
        # so two allocators in one process exclude each other just like two processes.
        with open(self._dir / LOCK_FILE, "a+b") as lock_file:
            fcntl.flock(lock_file.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock_file.fileno(), fcntl.LOCK_UN)

    def _read_state(self) -> dict[str, int]:
        try:
            raw = self._state_path.read_bytes()
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise OrderIdError(f"cannot read {self._state_path}: {exc.strerror}") from None
        try:
            data: Any = json.loads(raw)
            days = data["days"]
            if not isinstance(days, dict) or not all(
                isinstance(v, int) and len(k) == 8 and k.isdigit() for k, v in days.items()
            ):
                raise TypeError
            for key in days:
                datetime.strptime(key, "%Y%m%d")
        except (ValueError, TypeError, KeyError):
            # Never "repair" by starting over: that would reissue ids already in Kafka.
            raise OrderIdError(
                f"order-id state {self._state_path} is corrupt; restore it, or set its "
                "counters above every id already issued (never delete it while orders "
                "of those days may still exist)"
            ) from None
        return dict(days)

    def _write_state(self, days: dict[str, int]) -> None:
        payload = json.dumps({"days": days}, sort_keys=True).encode()
        try:
            fd, tmp = tempfile.mkstemp(dir=self._dir, prefix=".order-ids.", suffix=".tmp")
            try:
                with os.fdopen(fd, "wb") as handle:
                    handle.write(payload)
                    handle.flush()
                    os.fsync(handle.fileno())
                os.replace(tmp, self._state_path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
            # The rename must be durable too, or a power cut could bring back the old
            # counter after ids of the new block were sent.
            dir_fd = os.open(self._dir, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError as exc:
            raise OrderIdError(
                f"cannot write order-id state {self._state_path}: {exc.strerror}; "
                "set PRODUCER_STATE_DIR to a writable directory"
            ) from None


def _prune(days: dict[str, int]) -> dict[str, int]:
    newest = max(datetime.strptime(k, "%Y%m%d").date() for k in days)
    horizon = f"{newest - timedelta(days=RETAIN_DAYS):%Y%m%d}"
    return {k: v for k, v in days.items() if k >= horizon}
