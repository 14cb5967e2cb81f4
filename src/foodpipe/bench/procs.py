"""Real ``foodpipe`` subprocesses, and their peak resident memory.

Peak RSS is the kernel's own high-water mark, ``VmHWM`` in ``/proc/<pid>/status``. It
vanishes with the process, so a thread re-reads it every ``interval_s`` while the
process runs; the last value read before the exit is the peak, give or take what the
process grew in its final interval (``stop()`` reads it once more just before asking
the process to stop, when the work is done).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from foodpipe.settings import Settings


def read_vm_hwm_kib(pid: int) -> int | None:
    """``VmHWM`` of ``pid`` in KiB, or ``None`` once the process is gone."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return None


class PeakRss:
    """Follows one process's ``VmHWM`` from a daemon thread until it exits."""

    def __init__(self, pid: int, interval_s: float = 0.1) -> None:
        self.pid = pid
        self._interval_s = interval_s
        self._peak_kib = 0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._follow, name=f"rss-{pid}", daemon=True)
        self._thread.start()

    def _follow(self) -> None:
        while not self._done.is_set():
            if not self.sample():
                return
            self._done.wait(self._interval_s)

    def sample(self) -> bool:
        """Read once more now; ``False`` when the process is gone."""
        value = read_vm_hwm_kib(self.pid)
        if value is None:
            return False
        self._peak_kib = max(self._peak_kib, value)
        return True

    def stop(self) -> None:
        self._done.set()
        self._thread.join(timeout=5)

    @property
    def peak_mib(self) -> float:
        return self._peak_kib / 1024.0


#: Settings a benchmark child must not receive.
_OWNER_ONLY = frozenset({"DATABASE_ADMIN_URL"})


def child_env(settings: Settings, **overrides: str) -> dict[str, str]:
    """The environment of a ``foodpipe`` child: the bench's settings plus ``overrides``.

    Every setting is passed explicitly (children run with ``--env-file /dev/null``), so
    a child sees exactly what the bench resolved, including values from ``.env``. All
    but the owner's URL: the children (the consumer among them) run as the
    least-privilege role, as in production; only the bench itself creates databases.
    """
    env = {name: value for name, value in os.environ.items() if name not in _OWNER_ONLY}
    for name, value in settings.model_dump().items():
        if value is None or name.upper() in _OWNER_ONLY:
            env.pop(name.upper(), None)
            continue
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        env[name.upper()] = str(value.value if hasattr(value, "value") else value)
    env["LOG_FORMAT"] = "json"
    env.update(overrides)
    return env


class ChildProcess:
    """``argv`` with its output in ``log_path`` and its peak RSS."""

    def __init__(self, argv: Sequence[str], env: Mapping[str, str], log_path: Path) -> None:
        self.log_path = log_path
        self.started = time.monotonic()
        with open(log_path, "ab") as out:
            self.proc = subprocess.Popen(
                list(argv),
                env=dict(env),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        self.rss = PeakRss(self.proc.pid)

    @property
    def running(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout_s: float = 30.0) -> int:
        """SIGTERM (after a last RSS reading), wait, SIGKILL as a last resort."""
        if self.proc.poll() is None:
            self.rss.sample()
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait(timeout=10)
        self.rss.stop()
        return code

    def wait(self, timeout_s: float) -> int:
        try:
            return self.proc.wait(timeout=timeout_s)
        finally:
            if self.proc.poll() is not None:
                self.rss.stop()

    def tail(self, lines: int = 5) -> str:
        text = self.log_path.read_text(encoding="utf-8", errors="replace").strip()
        return " | ".join(text.splitlines()[-lines:])


class FoodpipeProcess(ChildProcess):
    """``python -m foodpipe ARGS`` with its output in ``log_path`` and its peak RSS."""

    def __init__(self, args: Sequence[str], env: Mapping[str, str], log_path: Path) -> None:
        self.args = list(args)
        argv = [sys.executable, "-m", "foodpipe", "--env-file", "/dev/null", *self.args]
        super().__init__(argv, env, log_path)

    def log_events(self) -> Iterator[dict[str, Any]]:
        """The child's JSON log lines, parsed (other lines are skipped)."""
        with open(self.log_path, encoding="utf-8", errors="replace") as log:
            for line in log:
                if line.startswith("{"):
                    try:
                        yield json.loads(line)
                    except ValueError:
                        continue
