"""Connection-level timeouts and limits: uvicorn's httptools protocol with read deadlines.

uvicorn has no header or body read timeout: a client that opens a connection and sends
nothing, trickles its headers a byte at a time, or announces a body it never sends holds a
connection (and its memory) for ever, and a few hundred of them starve normal clients. Here:
- header timer: armed when the connection opens and after each response, cancelled when a
  request's headers are complete. Expiry mid-request: a 408; on an idle connection: a close;
- body timer: armed when the headers announce a body, cancelled when the body is complete.
  Expiry: a 408 (when no response started), then close;
- header size: more than ``max_header_bytes`` of request line and headers -> 431, then close.
Responses are raw bytes in the server's JSON error shape, with ``Connection: close``.
"""

from __future__ import annotations

import asyncio
import json

import httptools
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

STATUS_TEXT = {408: b"Request Timeout", 431: b"Request Header Fields Too Large"}


class _HeaderTooLarge(Exception):
    pass


def raw_error(status: int, type_: str, message: str) -> bytes:
    """A complete HTTP/1.1 response in the error shape that closes the connection."""
    body = json.dumps({"error": {"type": type_, "message": message}}).encode()
    head = (
        b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
        b"connection: close\r\n\r\n" % (status, STATUS_TEXT[status], len(body))
    )
    return head + body


class TimeoutHttpProtocol(HttpToolsProtocol):
    """``uvicorn.Config(http=TimeoutHttpProtocol.configured(settings))``."""

    header_timeout_s = 10.0
    body_timeout_s = 10.0
    max_header_bytes = 65536

    @classmethod
    def configured(cls, settings) -> type[TimeoutHttpProtocol]:
        return type(
            "TimeoutHttpProtocol",
            (cls,),
            {
                "header_timeout_s": settings.header_timeout_s,
                "body_timeout_s": settings.body_timeout_s,
                "max_header_bytes": settings.max_header_bytes,
            },
        )

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._header_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None
        self._header_bytes = 0
        self._mid_request = False  # some bytes of the next request arrived

    # ---- timers ------------------------------------------------------------------------------
    def _arm_header_timer(self) -> None:
        self._cancel(self._header_timer)
        self._header_bytes, self._mid_request = 0, False
        self._header_timer = self.loop.call_later(self.header_timeout_s, self._header_expired)

    @staticmethod
    def _cancel(timer: asyncio.TimerHandle | None) -> None:
        if timer is not None:
            timer.cancel()

    def _header_expired(self) -> None:
        self._header_timer = None
        if self.transport.is_closing():
            return
        if self._mid_request:
            msg = f"request headers not received within {self.header_timeout_s:g}s"
            self.transport.write(raw_error(408, "request_timeout", msg))
        self.transport.close()

    def _body_expired(self) -> None:
        self._body_timer = None
        if self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_started:
            msg = f"request body not received within {self.body_timeout_s:g}s"
            self.cycle.disconnected = True  # the app sees a disconnect; its answer is dropped
            self.transport.write(raw_error(408, "request_timeout", msg))
        self.transport.close()

    # ---- protocol hooks ----------------------------------------------------------------------
    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._arm_header_timer()

    def connection_lost(self, exc) -> None:
        self._cancel(self._header_timer)
        self._cancel(self._body_timer)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self._unset_keepalive_if_required()
        if self._header_timer is not None:
            self._mid_request = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            if self._header_bytes > self.max_header_bytes:  # raised by _count via the parser
                msg = f"request headers exceed {self.max_header_bytes} bytes"
                self.transport.write(raw_error(431, "headers_too_large", msg))
                self.transport.close()
                return
            self.logger.warning("Invalid HTTP request received.")
            self.send_400_response("Invalid HTTP request received.")
            return
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()

    def _count(self, n: int) -> None:
        self._header_bytes += n
        if self._header_bytes > self.max_header_bytes:
            raise _HeaderTooLarge()

    def on_url(self, url: bytes) -> None:
        self._count(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + 4)
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._cancel(self._header_timer)
        self._header_timer = None
        super().on_headers_complete()
        headers = dict(self.headers)
        length = headers.get(b"content-length", b"0")
        chunked = b"chunked" in headers.get(b"transfer-encoding", b"").lower()
        if chunked or (length.strip().isdigit() and int(length) > 0):
            self._body_timer = self.loop.call_later(self.body_timeout_s, self._body_expired)

    def on_message_complete(self) -> None:
        self._cancel(self._body_timer)
        self._body_timer = None
        super().on_message_complete()

    def on_response_complete(self) -> None:
        pipelined = bool(self.pipeline)  # the next request's headers are already in
        super().on_response_complete()
        if not pipelined and not self.transport.is_closing():
            self._arm_header_timer()
