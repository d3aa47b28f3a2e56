"""HTTP plumbing around the routes: API keys, the body-size limit, per-request metrics and the
access log line, ``Connection: close`` while draining, and cancelling a request's work when its
client goes away.

The access log holds no request text (member data): endpoint, status, latency, counts only.
``--log-request-text`` (debug) adds the body at DEBUG level to a separate logger."""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from typing import TypeVar

from fastapi import Request
from starlette.routing import Match

from server.arrival import reset_arrival, set_arrival
from server.errors import ApiError, error_response
from server.metrics import ServerMetrics
from server.request_ids import RequestIds, from_headers, reset, set_current

access = logging.getLogger("slimrank.access")
request_text = logging.getLogger("slimrank.request_text")  # --log-request-text only

SCORING_TAG = "scoring"  # the OpenAPI tag of the routes that score: counted and logged
T = TypeVar("T")

# the access-log fields of the request being handled (None outside one)
_access_fields: ContextVar[dict | None] = ContextVar("access_fields", default=None)


def note_access(**fields) -> None:
    """Adds fields to the current request's access-log line (no-op outside a request)."""
    current = _access_fields.get()
    if current is not None:
        current.update(fields)


OPEN_PATHS = ("/health", "/ready")  # probes: orchestrators send no key
ADMIN_PREFIX = "/admin/"  # the admin API checks its own key, never a client key
VERSION_HEADER = b"x-model-version"  # name:version of the model version that answered


def bearer_matches(headers: list[tuple[bytes, bytes]], keys: list[bytes]) -> bool:
    """Whether ``Authorization: Bearer K`` carries one of ``keys``. Each key is compared in
    constant time and every key is tried, so the time taken says nothing about which came
    close."""
    auth = dict(headers).get(b"authorization", b"")
    scheme, _, token = auth.partition(b" ")
    if scheme.lower() != b"bearer" or not token.strip():
        return False
    token = token.strip()
    ok = False
    for key in keys:
        ok |= hmac.compare_digest(token, key)
    return ok


class ApiKeyAuth:
    """ASGI middleware: every path but the probes (``/metrics`` if public, and the admin API,
    which has its own key) needs ``Authorization: Bearer KEY`` with one of ``keys``;
    otherwise 401 in the error shape."""

    def __init__(self, app, keys: list[str], metrics_public: bool = False):
        self.app = app
        self.keys = [k.encode() for k in keys]
        self.open = OPEN_PATHS + (("/metrics",) if metrics_public else ())

    def allowed(self, headers: list[tuple[bytes, bytes]]) -> bool:
        return bearer_matches(headers, self.keys)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] in self.open:
            return await self.app(scope, receive, send)
        if scope["path"].startswith(ADMIN_PREFIX):  # its own key (server/admin.py)
            return await self.app(scope, receive, send)
        if not self.allowed(scope.get("headers") or []):
            resp = error_response(
                401,
                "unauthorized",
                "missing or invalid API key: send 'Authorization: Bearer <key>'",
                {"WWW-Authenticate": "Bearer"},
            )
            return await resp(scope, receive, send)
        return await self.app(scope, receive, send)


class CloseWhenDraining:
    """ASGI middleware: while the server drains, every response carries ``Connection: close``,
    so clients reconnect (to another replica) instead of reusing this one's connections."""

    def __init__(self, app, draining: Callable[[], bool]):
        self.app, self.draining = app, draining

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_closing(msg):
            if msg["type"] == "http.response.start" and self.draining():
                headers = [(k, v) for k, v in msg.get("headers", []) if k.lower() != b"connection"]
                msg = {**msg, "headers": [*headers, (b"connection", b"close")]}
            await send(msg)

        return await self.app(scope, receive, send_closing)


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


def scoring_endpoint(scope) -> str | None:
    """The endpoint label of a request: the path of the scoring route it matches (any method:
    a 405 on a scoring path is counted there), ``"other"`` for a POST that matches no route
    (bounded: random paths must not grow the series count), None for everything else (probes,
    ``/metrics``, ``/v1/models``: not scoring traffic). Taken from the app's own routes, so a
    new scoring route is counted without editing a list."""
    router = getattr(scope.get("app"), "router", None)
    for route in getattr(router, "routes", ()):
        match, _ = route.matches(scope)
        if match != Match.NONE:
            return route.path if SCORING_TAG in (getattr(route, "tags", None) or ()) else None
    return "other" if scope.get("method") == "POST" else None


class RequestAccounting:
    """ASGI middleware: every request gets its ids (``server.request_ids``: ``X-Request-Id``
    and ``traceparent``), answered in ``X-Request-Id``. For every scoring request
    (``scoring_endpoint``) also: the request metrics (count by endpoint, status and model
    version, duration with the request's exemplar, in flight), one JSON access-log line, and the
    response headers ``X-Model-Version`` (the version that answered) and, as TEI sends them,
    ``X-Queue-Time``, ``X-Tokenization-Time``, ``X-Inference-Time``, ``X-Total-Time`` (ms)."""

    def __init__(self, app, metrics: ServerMetrics, log_request_text: bool = False):
        self.app, self.metrics, self.log_text = app, metrics, log_request_text

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        ids = from_headers(scope.get("headers") or [])
        ids_token = set_current(ids)
        try:
            path = scoring_endpoint(scope)
            if path is None:
                return await self.app(scope, receive, _with_headers(send, lambda: _id_headers(ids)))
            await self._scoring(scope, receive, send, path, ids)
        finally:
            reset(ids_token)

    async def _scoring(self, scope, receive, send, path: str, ids: RequestIds) -> None:
        status = 500  # unless a response starts
        fields: dict = {}
        t0 = time.perf_counter()

        def headers() -> list[tuple[bytes, bytes]]:
            out = _id_headers(ids)
            if "version" in fields:
                out.append((VERSION_HEADER, f"{fields['model']}:{fields['version']}".encode()))
            for name, key in TIMING_HEADERS:
                if key in fields:
                    out.append((name, str(fields[key]).encode()))
            out.append((b"x-total-time", f"{(time.perf_counter() - t0) * 1000:.2f}".encode()))
            return out

        async def send_and_note(msg):
            nonlocal status
            if msg["type"] == "http.response.start":
                status = msg["status"]
            await send(msg)

        if self.log_text:
            receive = _logging_receive(receive, path)
        token = _access_fields.set(fields)
        arrived = set_arrival(t0)
        m = self.metrics
        m.in_flight.inc()
        try:
            await self.app(scope, receive, _with_headers(send_and_note, headers))
        finally:
            _access_fields.reset(token)
            reset_arrival(arrived)
            dt = time.perf_counter() - t0
            m.in_flight.dec()
            mv = (fields.get("model", ""), fields.get("version", ""))
            m.requests.labels(path, str(status), *mv).inc()
            m.request_duration.labels(path, *mv).observe(dt, exemplar=ids.exemplar())
            line = {"endpoint": path, "status": status, "latency_ms": round(dt * 1000, 2)}
            line["request_id"] = ids.request_id
            if ids.trace_id:
                line["trace_id"] = ids.trace_id
            access.info(json.dumps({**line, **fields}))


# (response header, access-log field) of the per-request timings, in milliseconds
TIMING_HEADERS = (
    (b"x-queue-time", "queue_ms"),
    (b"x-tokenization-time", "tokenize_ms"),
    (b"x-inference-time", "prefill_ms"),
)


def _id_headers(ids: RequestIds) -> list[tuple[bytes, bytes]]:
    out = [(b"x-request-id", ids.request_id.encode())]
    if ids.replaced:
        out.append((b"x-request-id-replaced", b"true"))
    return out


def _with_headers(send, extra: Callable[[], list[tuple[bytes, bytes]]]):
    """``send`` with ``extra()``'s headers added to the response's start (replacing any of the
    same names the app set)."""

    async def sending(msg):
        if msg["type"] == "http.response.start":
            add = extra()
            names = {k for k, _ in add}
            kept = [(k, v) for k, v in msg.get("headers", []) if k.lower() not in names]
            msg = {**msg, "headers": [*kept, *add]}
        await send(msg)

    return sending


def _logging_receive(receive, path: str):
    """--log-request-text: the body to the ``slimrank.request_text`` logger at DEBUG."""

    async def logged():
        msg = await receive()
        if msg["type"] == "http.request" and msg.get("body"):
            request_text.debug("%s body: %s", path, msg["body"].decode("utf-8", "replace"))
        return msg

    return logged


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
