"""Graceful shutdown: the server handles SIGTERM itself before uvicorn does.

uvicorn closes its listening socket on the first SIGTERM, so clients that still route to this
replica (a load balancer has not yet seen /ready turn 503) get refused connections. Here the
first SIGTERM / SIGINT only starts draining: ``/ready`` answers 503, new scoring requests get
503 ``shutting_down`` with ``Connection: close`` and Retry-After, admitted requests finish.
After ``drain_window_s`` uvicorn's own shutdown runs (stop listening, wait up to
``graceful_shutdown_s`` for requests in flight). A second signal exits at once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import uvicorn

log = logging.getLogger("slimrank.server")


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, begin_drain: Callable[[], None], window_s: float):
        super().__init__(config)
        self.begin_drain, self.window_s = begin_drain, window_s
        self.draining = False
        self._loop: asyncio.AbstractEventLoop | None = None

    async def serve(self, sockets=None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame) -> None:
        self._captured_signals.append(sig)  # uvicorn re-raises it once it is done (exit code)
        if self.draining or self._loop is None or self.window_s <= 0:
            if self.draining:  # a second signal: do not wait any longer
                self.force_exit = True
            self.should_exit = True
            return
        self.draining = True
        log.info("signal %s: draining for %.1fs, then shutting down", sig, self.window_s)
        # signal handlers run between the loop's callbacks: hand the work to the loop
        self._loop.call_soon_threadsafe(self.begin_drain)
        self._loop.call_soon_threadsafe(self._loop.call_later, self.window_s, self._shutdown)

    def _shutdown(self) -> None:
        self.should_exit = True
