"""Hostile requests: what a careless or malicious client sends, and what the server must answer.

Two kinds, shared by the fuzz script (``loadtest.fuzz``) and the tests:

- ``JSON_CASES``: well-formed HTTP with a hostile body or headers (out-of-vocabulary and
  negative token ids, NUL bytes, lone surrogates, 100k items, deeply nested JSON, huge or
  negative ``top_k`` / ``top_n``, a body far over the limit, a wrong content type). Each names
  the statuses it may get and, for a 4xx, the field the error message must name. Never a 5xx;
  every error in the ``{"error": {"type", "message"}}`` shape.
- ``PROTOCOL_CASES``: broken HTTP that an HTTP client library refuses to send (a lying
  ``content-length``, a body that never ends, headers sent a byte at a time), written on a raw
  socket by ``raw_exchange``. The server must answer a 4xx or close the connection within its
  read timeouts, and stay up.

Bodies are bytes, exactly as sent: ``json.dumps`` would refuse some of them (lone surrogates
are written as JSON escapes, which is legal JSON that Python decodes to an unencodable str).
"""

from __future__ import annotations

import json
import select
import socket
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

QUERY = "member profile: nurse. interests: music, travel."
ITEMS = ["item: jazz piano basics.", "item: island coast notes."]
JSON = {"content-type": "application/json"}
BODY_LIMIT = 2 * 1024 * 1024  # the server's default max_body_bytes


@dataclass(frozen=True)
class HostileCase:
    """One request and the answers it may get; ``field`` must appear in a 4xx's message."""

    name: str
    method: str
    path: str
    body: bytes | None
    headers: dict[str, str] = field(default_factory=lambda: dict(JSON))
    expect: tuple[int, ...] = (422,)
    field: str | None = None


def _json(obj) -> bytes:
    return json.dumps(obj).encode()


def _rank(**over) -> bytes:
    return _json({"query": QUERY, "items": ITEMS, **over})


def _nested(depth: int) -> bytes:
    """``{"query": ..., "items": [[[...]]]}`` nested ``depth`` lists deep."""
    return b'{"query": "q", "items": ' + b"[" * depth + b"]" * depth + b"}"


def _hostile_cases() -> list[HostileCase]:
    many = ["x"] * 100_000
    surrogate = b'{"query": "q\\ud800q", "items": ["a"]}'  # a lone high surrogate, JSON-escaped
    surrogate_item = b'{"query": "q", "items": ["a", "\\udfff"]}'
    over_limit = b'{"query": "' + b"a" * (5 * BODY_LIMIT) + b'", "items": ["a"]}'
    C = HostileCase
    return [
        # token ids: only the two label tokens can be asked for; text fields are not ids
        C("score-label-ids-out-of-vocab", "POST", "/v1/score",
          _rank(label_token_ids=[10**9, 10**9 + 1]), field="label_token_ids"),
        C("score-label-ids-negative", "POST", "/v1/score",
          _rank(label_token_ids=[-1, -2]), field="label_token_ids"),
        C("score-label-ids-beyond-int64", "POST", "/v1/score",
          _rank(label_token_ids=[2**70, -(2**70)]), field="label_token_ids"),
        C("score-label-ids-too-many", "POST", "/v1/score",
          _rank(label_token_ids=list(range(65))), field="label_token_ids"),
        C("rank-query-as-token-ids", "POST", "/v1/rank",
          _json({"query": [1, 2, 10**9], "items": ITEMS}), field="query"),
        C("rank-items-as-negative-token-ids", "POST", "/v1/rank",
          _json({"query": QUERY, "items": [[-1, -5]]}), field="items"),
        # text: NUL bytes may be scored or refused; lone surrogates cannot be encoded: refused
        C("rank-query-nul-bytes", "POST", "/v1/rank",
          _json({"query": "a\u0000b" * 50, "items": ITEMS}), expect=(200, 422), field="query"),
        C("rank-item-nul-bytes", "POST", "/v1/rank",
          _json({"query": QUERY, "items": ["\u0000" * 64]}), expect=(200, 422), field="items"),
        C("rank-query-lone-surrogate", "POST", "/v1/rank", surrogate, field="query"),
        C("rank-item-lone-surrogate", "POST", "/v1/rank", surrogate_item, field="items[1]"),
        C("rerank-document-lone-surrogate", "POST", "/v1/rerank",
          b'{"query": "q", "documents": ["\\ud83d"]}', field="documents[0]"),
        # sizes
        C("rank-100k-items", "POST", "/v1/rank", _json({"query": QUERY, "items": many}),
          field="items"),
        C("rerank-100k-documents", "POST", "/v1/rerank",
          _json({"query": QUERY, "documents": many}), field="documents"),
        C("score-100k-items", "POST", "/v1/score", _json({"query": QUERY, "items": many}),
          field="items"),
        C("rank-deeply-nested-json", "POST", "/v1/rank", _nested(100_000), expect=(400, 422)),
        C("rank-nested-json-1k", "POST", "/v1/rank", _nested(1_000), expect=(400, 422),
          field="items"),
        C("rank-body-far-over-limit", "POST", "/v1/rank", over_limit, expect=(413,)),
        C("rank-query-far-over-token-limit", "POST", "/v1/rank",
          _json({"query": "word " * 50_000, "items": ITEMS}), field="query"),
        # top_k / top_n
        C("rank-top-k-huge", "POST", "/v1/rank", _rank(top_k=10**30), expect=(200, 422),
          field="top_k"),
        C("rank-top-k-negative", "POST", "/v1/rank", _rank(top_k=-3), field="top_k"),
        C("rank-top-k-zero", "POST", "/v1/rank", _rank(top_k=0), field="top_k"),
        C("rank-top-k-float-overflow", "POST", "/v1/rank",
          _rank()[:-1] + b', "top_k": 1e400}', field="top_k"),
        C("rank-top-k-nan", "POST", "/v1/rank", _rank()[:-1] + b', "top_k": NaN}',
          expect=(400, 422), field="top_k"),
        C("rerank-top-n-huge", "POST", "/v1/rerank",
          _json({"query": QUERY, "documents": ITEMS, "top_n": 10**30}), expect=(200, 422),
          field="top_n"),
        C("rerank-top-n-negative", "POST", "/v1/rerank",
          _json({"query": QUERY, "documents": ITEMS, "top_n": -1}), field="top_n"),
        # framing and content type
        C("rank-wrong-content-type", "POST", "/v1/rank", _rank(),
          headers={"content-type": "text/plain"}, expect=(400, 415, 422)),
        C("rank-form-encoded", "POST", "/v1/rank", b"query=a&items=b",
          headers={"content-type": "application/x-www-form-urlencoded"},
          expect=(400, 415, 422)),
        C("rank-invalid-utf8", "POST", "/v1/rank", b'{"query": "\xff\xfe", "items": ["a"]}',
          expect=(400, 422)),
        C("rank-not-json", "POST", "/v1/rank", b"{'query': 'a'", expect=(400,)),
        C("rank-empty-body", "POST", "/v1/rank", b"", expect=(400, 422)),
        C("rank-array-body", "POST", "/v1/rank", _json([QUERY, ITEMS]), expect=(422,)),
        C("rank-unknown-field", "POST", "/v1/rank", _rank(itmes=ITEMS), field="itmes"),
        C("rank-wrong-method", "GET", "/v1/rank", None, headers={}, expect=(405,)),
        C("unknown-path", "POST", "/v1/nope", _rank(), expect=(404,)),
    ]  # fmt: skip


JSON_CASES: list[HostileCase] = _hostile_cases()


# ---- protocol level: a raw socket ---------------------------------------------------------------


@dataclass
class RawResult:
    """What came back on a raw connection: a response, a close, or nothing before the wait."""

    status: int | None  # None: no response
    closed: bool  # the server closed the connection (with or without a response)
    seconds: float  # from the first byte sent to the response or close (or the end of the wait)
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    sent_all: bool = True  # False when the server answered or closed before every chunk went

    @property
    def hung(self) -> bool:
        """Neither an answer nor a close: the server is holding the connection open."""
        return self.status is None and not self.closed


def _parse(buf: bytes) -> tuple[int | None, dict[str, str], bytes]:
    head, sep, body = buf.partition(b"\r\n\r\n")
    if not sep:
        return None, {}, b""
    lines = head.decode("latin-1").split("\r\n")
    try:
        status = int(lines[0].split()[1])
    except (IndexError, ValueError):
        return None, {}, b""
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    return status, headers, body


def _complete(buf: bytes) -> bool:
    status, headers, body = _parse(buf)
    if status is None:
        return False
    n = headers.get("content-length")
    return n is None or len(body) >= int(n)


def raw_exchange(
    host: str, port: int, chunks: Iterable[bytes], gap_s: float = 0.0, wait_s: float = 10.0
) -> RawResult:
    """Sends ``chunks`` with ``gap_s`` between them and waits for a response or a close, all
    within ``wait_s`` of connecting: chunks not sent by then are dropped (an endless body is a
    long list). Stops sending as soon as the server answers or closes."""
    buf, closed, sent_all = b"", False, True
    t0 = time.perf_counter()
    end = t0 + wait_s
    with socket.create_connection((host, port), timeout=wait_s) as s:

        def poll(until: float) -> bool:
            """Reads what arrives until ``until``; True once a full response came or a close."""
            nonlocal buf, closed
            while True:
                ready, _, _ = select.select([s], [], [], max(0.0, until - time.perf_counter()))
                if not ready:
                    return False
                try:
                    data = s.recv(65536)
                except (ConnectionResetError, BrokenPipeError):
                    data = b""
                if not data:
                    closed = True
                    return True
                buf += data
                if _complete(buf):
                    return True

        done = False
        for chunk in chunks:
            if time.perf_counter() >= end:
                sent_all = False
                break
            try:
                s.sendall(chunk)
            except (BrokenPipeError, ConnectionResetError):
                closed, done, sent_all = True, True, False
                break
            if poll(min(end, time.perf_counter() + gap_s)):
                done, sent_all = True, False
                break
        if not done:
            poll(end)
        answered_at = time.perf_counter()
        if not closed and _complete(buf):  # an answer: did the server also close?
            s.settimeout(0.2)
            try:
                closed = s.recv(1) == b""
            except (TimeoutError, ConnectionResetError):
                pass
    status, headers, body = _parse(buf)
    return RawResult(status, closed, answered_at - t0, headers, body, sent_all)


@dataclass(frozen=True)
class ProtocolCase:
    """Broken HTTP on a raw socket; passes with a 4xx/5xx-free answer or a close, never a hang."""

    name: str
    chunks: Callable[[str, int, str], list[bytes]]  # (host, port, extra header lines) -> pieces
    gap_s: float = 0.0
    expect: tuple[int, ...] = (400, 408, 413)


def _request_head(host: str, port: int, extra: str, more: str = "") -> bytes:
    """A POST /v1/rank head; ``extra``: header lines (each ending in CRLF), e.g. the API key."""
    return (
        f"POST /v1/rank HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
        f"{extra}{more}\r\n"
    ).encode()


def _lying_length(host: str, port: int, extra: str) -> list[bytes]:
    body = _rank()
    return [_request_head(host, port, extra, f"Content-Length: {len(body) + 1000}\r\n"), body]


def _short_length(host: str, port: int, extra: str) -> list[bytes]:
    body = _rank()
    return [_request_head(host, port, extra, "Content-Length: 10\r\n") + body]


def _endless_chunked(host: str, port: int, extra: str) -> list[bytes]:
    head = _request_head(host, port, extra, "Transfer-Encoding: chunked\r\n")
    return [head] + [b"1\r\n \r\n"] * 10_000  # a space per chunk, never the final 0-chunk


def _byte_headers(host: str, port: int, extra: str) -> list[bytes]:
    head = _request_head(host, port, extra, "Content-Length: 2\r\n")
    return [bytes([b]) for b in head[:-2]]  # slowloris: a byte at a time, never the blank line


def _idle(host: str, port: int, extra: str) -> list[bytes]:
    return []


def _huge_header(host: str, port: int, extra: str) -> list[bytes]:
    body = _rank()
    padding = f"X-Padding: {'a' * 200_000}\r\nContent-Length: {len(body)}\r\n"
    return [_request_head(host, port, extra, padding) + body]


def _bad_length(host: str, port: int, extra: str) -> list[bytes]:
    return [_request_head(host, port, extra, "Content-Length: -5\r\n") + b"{}"]


PROTOCOL_CASES: list[ProtocolCase] = [
    ProtocolCase("lying-content-length", _lying_length),
    ProtocolCase("short-content-length", _short_length),
    ProtocolCase("negative-content-length", _bad_length),
    ProtocolCase("endless-chunked-body", _endless_chunked, gap_s=0.25),
    ProtocolCase("headers-byte-at-a-time", _byte_headers, gap_s=0.25),
    ProtocolCase("idle-connection", _idle),
    ProtocolCase("huge-header", _huge_header, expect=(400, 413, 431)),
]


def error_shape_problem(status: int, content_type: str | None, body: bytes) -> str | None:
    """Why an error response is not ``{"error": {"type": str, "message": str}}`` (None: it is)."""
    if not (content_type or "").startswith("application/json"):
        return f"{status} with content-type {content_type!r}, not JSON"
    try:
        err = json.loads(body)["error"]
        if not isinstance(err["type"], str) or not isinstance(err["message"], str):
            return f"{status}: error.type / error.message are not strings"
    except (ValueError, KeyError, TypeError):
        return f"{status}: body is not {{'error': {{'type', 'message'}}}}: {body[:120]!r}"
    return None


def json_case_problem(case: HostileCase, status: int, content_type: str | None, body: bytes):
    """Why the answer to ``case`` is wrong (None: it is right)."""
    if status not in case.expect:
        return f"got {status}, expected {'/'.join(map(str, case.expect))}: {body[:200]!r}"
    if status >= 400:
        shape = error_shape_problem(status, content_type, body)
        if shape:
            return shape
        if case.field and status == 422:
            message = json.loads(body)["error"]["message"]
            if case.field not in message:
                return f"the message does not name {case.field!r}: {message[:200]!r}"
    return None


def protocol_case_problem(case: ProtocolCase, res: RawResult) -> str | None:
    if res.hung:
        return f"no answer and no close after {res.seconds:.1f}s (the connection is held open)"
    if res.status is not None and res.status not in case.expect:
        return f"got {res.status}, expected {'/'.join(map(str, case.expect))} or a close"
    return None


def run_json_cases(
    url: str, cases: Iterable[HostileCase] = JSON_CASES, headers: dict | None = None
) -> Iterator[dict]:
    """Sends each case (httpx, one at a time); yields one result row per case."""
    import httpx

    with httpx.Client(base_url=url, timeout=60) as client:
        for case in cases:
            t0 = time.perf_counter()
            try:
                r = client.request(
                    case.method,
                    case.path,
                    content=case.body,
                    headers={**case.headers, **(headers or {})},
                )
                problem = json_case_problem(
                    case, r.status_code, r.headers.get("content-type"), r.content
                )
                status = r.status_code
            except httpx.HTTPError as exc:
                status, problem = None, f"transport error {type(exc).__name__}: {exc}"
            yield {
                "name": case.name,
                "status": status,
                "expected": list(case.expect),
                "seconds": round(time.perf_counter() - t0, 3),
                "ok": problem is None,
                "problem": problem,
            }


def run_protocol_cases(
    host: str,
    port: int,
    cases: Iterable[ProtocolCase] = PROTOCOL_CASES,
    wait_s: float = 10.0,
    headers: dict[str, str] | None = None,
) -> Iterator[dict]:
    """Sends each case on its own raw connection; yields one result row per case."""
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    for case in cases:
        try:
            res = raw_exchange(host, port, case.chunks(host, port, extra), case.gap_s, wait_s)
            problem = protocol_case_problem(case, res)
            row = {"status": res.status, "closed": res.closed, "seconds": round(res.seconds, 3)}
        except OSError as exc:
            problem = f"socket error {type(exc).__name__}: {exc}"
            row = {"status": None, "closed": None, "seconds": None}
        yield {"name": case.name, **row, "ok": problem is None, "problem": problem}
