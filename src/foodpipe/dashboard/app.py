"""The dashboard's web app (Starlette): one page, its JSON, and a server-sent event stream.

Routes:

- ``GET /``: the page; ``GET /static/...``: its script, style and the chart library;
- ``GET /events``: server-sent events ``pipeline``, ``business`` and ``audit``, each a
  JSON document, sent when it changes (the latest of each on connect);
- ``GET /api/pipeline``, ``/api/business``, ``/api/audit``: the latest documents;
- ``POST /api/audit``: start an audit (202), or 409 when one is running. The request
  must carry ``X-Foodpipe: audit``: a cross-site form cannot set that header, and a
  cross-site script would need a CORS preflight that this app never answers.

Reading happens once per interval in a worker thread, whatever the number of open
pages: every browser gets the same documents. Nothing here writes to Kafka or
PostgreSQL; the audit only reads.

Errors: an unexpected exception in a reading is logged with its traceback and the page
gets one line saying so; an unexpected exception in a request is logged and the
browser gets a bare 500 (``debug`` is off), never a traceback.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Protocol

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from foodpipe.log import get_logger

STATIC = Path(__file__).resolve().parent / "static"
#: A comment line on an idle stream, so proxies and browsers keep it open.
KEEPALIVE_S = 15.0
INTERNAL_ERROR = "the dashboard failed to read this; its log has the details"
AUDIT_HEADER = "x-foodpipe"
#: A reading that took t seconds is followed by a pause of at least BACKOFF * t.
BACKOFF = 4.0

SECURITY_HEADERS = [
    # Everything the page needs is served from here: no CDN, no inline script.
    (
        b"content-security-policy",
        b"default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
    ),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
]


class Readings(Protocol):
    """What the app reads from (:class:`foodpipe.dashboard.collector.Collector`)."""

    def pipeline(self) -> dict[str, Any]: ...

    def business(self) -> dict[str, Any]: ...

    def run_audit(self) -> dict[str, Any] | None: ...


class Hub:
    """The latest document of each kind, and a wake-up for the streams waiting on them."""

    def __init__(self) -> None:
        self.version = 0
        self.latest: dict[str, tuple[int, str]] = {}
        self._changed = asyncio.Event()

    def publish(self, kind: str, document: dict[str, Any]) -> None:
        self.version += 1
        self.latest[kind] = (self.version, json.dumps(document, sort_keys=True))
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def changed(self, since: int, timeout_s: float) -> bool:
        """Wait until something newer than ``since`` is published (False on timeout)."""
        if self.version > since:
            return True
        try:
            await asyncio.wait_for(self._changed.wait(), timeout_s)
        except TimeoutError:
            return False
        return True

    def document(self, kind: str) -> dict[str, Any] | None:
        entry = self.latest.get(kind)
        return None if entry is None else dict(json.loads(entry[1]))


def answered(document: dict[str, Any]) -> bool:
    """Whether every service answered the reading behind ``document`` (no error field)."""
    parts = [document, *(v for v in document.values() if isinstance(v, dict))]
    return all(part.get("error") is None for part in parts)


class SecurityHeaders:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *SECURITY_HEADERS]
            await send(message)

        await self.app(scope, receive, with_headers)


def create_app(
    collector: Readings,
    *,
    interval_s: float = 2.0,
    business_interval_s: float = 10.0,
    allowed_hosts: list[str] | None = None,
) -> Starlette:
    hub = Hub()
    audit_task: set[asyncio.Task[None]] = set()

    async def refresh(kind: str, read: Callable[[], dict[str, Any]], every_s: float) -> None:
        while True:
            start = time.monotonic()
            try:
                document = await asyncio.to_thread(read)
            except Exception:
                # A bug, not an outage (outages are fields of the document): keep the
                # traceback in the log, tell the page in one line, and keep going.
                get_logger("dashboard").exception("dashboard_read_failed", kind=kind)
                document = {"error": INTERNAL_ERROR, "internal": True}
            hub.publish(kind, document)
            # The refresh interval of a live view, stretched when a reading is slow (the
            # business view scans the last hour: ~4 ms per 1,000 orders), so that the
            # dashboard keeps PostgreSQL busy for at most a fifth of the time. A reading
            # that was slow because a service did not answer is not load: retry on time.
            elapsed = time.monotonic() - start if answered(document) else 0.0
            await asyncio.sleep(max(every_s, BACKOFF * elapsed))

    @asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        tasks = [
            asyncio.create_task(refresh("pipeline", collector.pipeline, interval_s)),
            asyncio.create_task(refresh("business", collector.business, business_interval_s)),
        ]
        try:
            yield
        finally:
            for task in [*tasks, *audit_task]:
                task.cancel()

    async def page(_request: Request) -> Response:
        return FileResponse(STATIC / "index.html", headers={"cache-control": "no-cache"})

    def latest(kind: str) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(_request: Request) -> Response:
            document = hub.document(kind)
            if document is None:
                return JSONResponse({"pending": True}, status_code=503)
            return JSONResponse(document)

        return endpoint

    async def start_audit(request: Request) -> Response:
        if request.headers.get(AUDIT_HEADER) != "audit":
            return JSONResponse({"error": f"send the header {AUDIT_HEADER}: audit"}, 403)
        if audit_task:
            return JSONResponse({"running": True}, status_code=409)
        previous = hub.document("audit") or {}
        hub.publish("audit", {**previous, "running": True})

        async def run() -> None:
            try:
                document = await asyncio.to_thread(collector.run_audit)
            except Exception:
                get_logger("dashboard").exception("dashboard_audit_failed")
                document = {"running": False, "verdict": None, "error": INTERNAL_ERROR}
            if document is not None:
                hub.publish("audit", document)

        task = asyncio.create_task(run())
        audit_task.add(task)
        task.add_done_callback(audit_task.discard)
        return JSONResponse({"running": True}, status_code=202)

    async def events(_request: Request) -> Response:
        async def stream() -> AsyncIterator[str]:
            sent: dict[str, int] = {}
            seen = 0
            yield "retry: 2000\n\n"  # how soon the browser reconnects after a drop
            while True:
                if await hub.changed(seen, KEEPALIVE_S):
                    seen = hub.version
                    for kind, (version, text) in list(hub.latest.items()):
                        if sent.get(kind) != version:
                            sent[kind] = version
                            yield f"event: {kind}\ndata: {text}\n\n"
                else:
                    yield ": keepalive\n\n"
            # No disconnect check here: StreamingResponse cancels this generator when
            # the browser goes away.

        return StreamingResponse(
            stream(),
            media_type="text/event-stream",
            headers={"cache-control": "no-cache", "x-accel-buffering": "no"},
        )

    async def no_icon(_request: Request) -> Response:
        return Response(status_code=204)  # no favicon, and no 404 in the browser's console

    routes = [
        Route("/", page),
        Route("/favicon.ico", no_icon),
        Route("/events", events),
        Route("/api/pipeline", latest("pipeline")),
        Route("/api/business", latest("business")),
        Route("/api/audit", latest("audit"), methods=["GET"]),
        Route("/api/audit", start_audit, methods=["POST"]),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    middleware = [
        Middleware(SecurityHeaders),
        Middleware(
            TrustedHostMiddleware, allowed_hosts=allowed_hosts or ["127.0.0.1", "localhost"]
        ),
    ]
    return Starlette(debug=False, routes=routes, middleware=middleware, lifespan=lifespan)
