"""When the request being handled reached the server.

Admission (``server.scheduler``) promises a request its scores within a budget of its arrival,
not of the moment it reaches the queue: reading, parsing and tokenizing come first, and under
load they wait behind other requests on the event loop. The HTTP middleware sets the arrival;
code running outside a request (tests, batch scoring) has none, and then "now" stands in.
"""

from __future__ import annotations

import time
from contextvars import ContextVar

_arrived: ContextVar[float | None] = ContextVar("arrived", default=None)


def set_arrival(t: float):
    """Marks ``t`` (``time.perf_counter()``) as the current request's arrival; returns the token
    for ``reset_arrival``."""
    return _arrived.set(t)


def reset_arrival(token) -> None:
    _arrived.reset(token)


def arrival() -> float:
    """The current request's arrival (``time.perf_counter()``), or now outside a request."""
    t = _arrived.get()
    return time.perf_counter() if t is None else t
