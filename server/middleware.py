"""HTTP plumbing around the routes: the body-size limit, per-request metrics and the access log
line, and cancelling a request's work when its client goes away."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable
from contextvars import ContextVar
from typing import TypeVar

from fastapi import Request

from server.errors import ApiError, error_response
from server.metrics import ServerMetrics

access = logging.getLogger("slimrank.access")

SCORING_PATHS = ("/v1/rank", "/v1/score", "/v1/rerank")
T = TypeVar("T")

# the access-log fields of the request being handled (None outside one)
_access_fields: ContextVar[dict | None] = ContextVar("access_fields", default=None)


def note_access(**fields) -> None:
    """Adds fields to the current request's access-log line (no-op outside a request)."""
    current = _access_fields.get()
    if current is not None:
        current.update(fields)


class BodySizeLimit:
    """ASGI middleware: refuse bodies over ``max_bytes`` with 413 (declared or streamed)."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    def _error(self) -> ApiError:
        return ApiError(413, "payload_too_large", f"request body exceeds {self.max_bytes} bytes")

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            e = self._error()
            return await error_response(e.status, e.type, e.message)(scope, receive, send)
        seen = 0

        async def limited_receive():
            nonlocal seen
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > self.max_bytes:
                    raise self._error()  # rendered by the ApiError handler
            return msg

        return await self.app(scope, limited_receive, send)


class RequestAccounting:
    """ASGI middleware: for every ``POST /v1/...``, the request metrics (count by endpoint and
    status, duration, in flight) and one JSON access-log line."""

    def __init__(self, app, metrics: ServerMetrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        path = scope.get("path", "")
        if scope["type"] != "http" or scope["method"] != "POST" or not path.startswith("/v1/"):
            return await self.app(scope, receive, send)
        if path not in SCORING_PATHS:
            path = "other"  # bounded label values: random paths must not grow the series count
        status = 500  # unless a response starts

        async def send_and_note(msg):
            nonlocal status
            if msg["type"] == "http.response.start":
                status = msg["status"]
            await send(msg)

        fields: dict = {}
        token = _access_fields.set(fields)
        m = self.metrics
        t0 = time.perf_counter()
        m.in_flight.inc()
        try:
            await self.app(scope, receive, send_and_note)
        finally:
            _access_fields.reset(token)
            dt = time.perf_counter() - t0
            m.in_flight.dec()
            m.requests.labels(path, str(status)).inc()
            m.request_duration.labels(path).observe(dt)
            line = {"endpoint": path, "status": status, "latency_ms": round(dt * 1000, 2)}
            access.info(json.dumps({**line, **fields}))


async def cancel_on_disconnect(request: Request, work: Awaitable[T]) -> T:
    """Runs ``work``; if the client disconnects first, cancels it (queued work is then dropped
    before it costs compute, and its queue capacity freed) and answers 499."""

    async def listen():
        while True:
            msg = await request.receive()
            if msg["type"] == "http.disconnect":
                return

    work_task = asyncio.ensure_future(work)
    listen_task = asyncio.ensure_future(listen())
    done, _ = await asyncio.wait({work_task, listen_task}, return_when=asyncio.FIRST_COMPLETED)
    if work_task in done:
        listen_task.cancel()
        return work_task.result()
    work_task.cancel()
    await asyncio.wait({work_task})  # its queue capacity is free before the answer goes out
    raise ApiError(499, "client_disconnected", "client closed the connection")
