"""Request ids and trace ids: following one request from a client's log to the server's.

Each request gets an id: the client's ``X-Request-Id`` when it is usable (1 to 100 printable
ASCII characters, no spaces), else a fresh uuid4 hex, and the response says it replaced the
client's (``X-Request-Id-Replaced``; the unusable value is never logged). A W3C
``traceparent`` header's trace id is kept. Both live in a context variable for the request's
task: the response header and body, every log line of the request (``RequestIdFilter``), error
bodies, and the latency histograms' exemplars read them from there.
"""

from __future__ import annotations

import logging
import re
import uuid
from contextvars import ContextVar
from dataclasses import dataclass

MAX_ID_CHARS = 100  # an exemplar's labels may hold 128 characters, names included
_USABLE = re.compile(rf"[\x21-\x7e]{{1,{MAX_ID_CHARS}}}")
_TRACEPARENT = re.compile(r"[0-9a-f]{2}-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}")


@dataclass(frozen=True)
class RequestIds:
    request_id: str
    trace_id: str | None = None
    replaced: bool = False  # the client sent an X-Request-Id that could not be used

    def exemplar(self) -> dict[str, str]:
        """The labels of an exemplar: the trace id where there is one, else the request id."""
        if self.trace_id:
            return {"trace_id": self.trace_id}
        return {"request_id": self.request_id}


_current: ContextVar[RequestIds | None] = ContextVar("request_ids", default=None)


def from_headers(headers: list[tuple[bytes, bytes]]) -> RequestIds:
    """The ids of a request with these (ASGI) headers."""
    h = dict(headers)
    sent = h.get(b"x-request-id")
    trace = None
    parent = h.get(b"traceparent", b"").decode("latin-1").strip().lower()
    m = _TRACEPARENT.fullmatch(parent)
    if m and m.group(1) != "0" * 32:
        trace = m.group(1)
    if sent is not None:
        text = sent.decode("latin-1")
        if _USABLE.fullmatch(text):
            return RequestIds(text, trace)
    return RequestIds(uuid.uuid4().hex, trace, replaced=sent is not None)


def set_current(ids: RequestIds | None):
    return _current.set(ids)


def reset(token) -> None:
    _current.reset(token)


def current() -> RequestIds | None:
    return _current.get()


def current_id() -> str | None:
    ids = _current.get()
    return ids.request_id if ids else None


def current_exemplar() -> dict[str, str] | None:
    ids = _current.get()
    return ids.exemplar() if ids else None


class RequestIdFilter(logging.Filter):
    """Puts ``request_id`` on every record (``-`` outside a request), for the log format."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = current_id() or "-"
        return True
