"""A running ``foodpipe dashboard`` for the integration and browser tests."""

from __future__ import annotations

import json
import subprocess
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .support import free_port, spawn_foodpipe, stop_process, wait_until


@dataclass
class Dashboard:
    url: str
    process: subprocess.Popen[bytes]
    log: Path

    def get(self, path: str, timeout: float = 10.0) -> tuple[int, Any]:
        """``(status, JSON body)``; the body is ``None`` when it is not JSON."""
        try:
            with urllib.request.urlopen(self.url + path, timeout=timeout) as response:  # noqa: S310
                status, body = response.status, response.read()
        except urllib.error.HTTPError as exc:
            status, body = exc.code, exc.read()
        try:
            return status, json.loads(body)
        except ValueError:
            return status, None

    def document(self, kind: str) -> dict[str, Any] | None:
        status, body = self.get(f"/api/{kind}")
        return body if status == 200 and isinstance(body, dict) else None

    def wait_for(
        self,
        kind: str,
        predicate: Callable[[dict[str, Any]], object],
        message: str,
        timeout: float = 30.0,
    ) -> dict[str, Any]:
        """Poll ``/api/KIND`` until ``predicate(document)`` holds; return that document."""

        def matching() -> dict[str, Any] | None:
            document = self.document(kind)
            return document if document is not None and predicate(document) else None

        return wait_until(matching, timeout=timeout, interval=0.2, message=message)

    def post(self, path: str, headers: Mapping[str, str] | None = None) -> tuple[int, Any]:
        request = urllib.request.Request(  # noqa: S310
            self.url + path, data=b"", method="POST", headers=dict(headers or {})
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"null")

    def run_audit(self, timeout: float = 60.0) -> dict[str, Any]:
        status, _ = self.post("/api/audit", {"X-Foodpipe": "audit"})
        assert status == 202, status

        return self.wait_for(
            "audit", lambda d: not d.get("running"), "the audit's verdict", timeout
        )


@contextmanager
def dashboard(
    env: Mapping[str, str], log_dir: Path, *args: str, interval: float = 0.5
) -> Iterator[Dashboard]:
    """``foodpipe dashboard`` on a free port, answering, until the block ends."""
    port = free_port()
    log = log_dir / f"dashboard-{port}.log"
    process = spawn_foodpipe(
        ["dashboard", "--port", str(port), "--interval", str(interval), *args], env, log
    )
    board = Dashboard(f"http://127.0.0.1:{port}", process, log)

    def answers() -> bool:
        assert process.poll() is None, f"the dashboard exited: {log.read_text()[-2000:]}"
        try:
            return board.document("pipeline") is not None
        except OSError:
            return False

    try:
        wait_until(answers, timeout=30, interval=0.1, message="the dashboard's first reading")
        yield board
    finally:
        assert stop_process(process) == 0, log.read_text()[-2000:]
