"""Fuzz the ranking server from its own OpenAPI schema, then send the hostile cases.

    python -m loadtest.fuzz --url http://127.0.0.1:8000 --max-examples 1000 \
        --json artifacts/loadtest/fuzz.json [--api-key KEY] [--seed 0]

schemathesis generates requests for every operation in ``/openapi.json``: valid ones (positive
mode) and ones that break the schema (negative mode), about half each, until every scoring
endpoint (an operation the schema tags ``scoring``: ``/v1/rank``, ``/v1/score``, ``/v1/rerank``,
``/v2/rerank``, ...) got at least ``--max-examples``. Hypothesis runs seeded and without its example database, so a run can be repeated. Checks on every answer:
no 5xx, every 4xx in the error shape ``{"error": {"type": str, "message": str}}``, no transport
error. Then ``loadtest.hostile``'s JSON and protocol cases, and last ``GET /health`` must be 200.

Prints a table per endpoint and writes JSON; exits 1 when anything failed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import Counter
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from loadtest import hostile
from loadtest.stats import table, write_json

SCORING_TAG = "scoring"  # the OpenAPI tag of the server's scoring routes (server/app.py)
MAX_ROUNDS = 20  # hypothesis stops early on small input spaces: bounded retries with new seeds
SHOWN_FAILURES = 50  # distinct failures kept in the report


class EndpointStats:
    """Counts for one operation, and its distinct failures (by status and error)."""

    def __init__(self, label: str, scoring: bool):
        self.label = label
        self.scoring = scoring
        self.requests = 0
        self.by_class: Counter[str] = Counter()
        self.server_errors = 0
        self.shape_violations = 0
        self.transport_errors = 0
        self.failures: dict[str, dict] = {}

    def record(self, status: int | None, problem: str | None, request: dict) -> None:
        self.requests += 1
        if status is None:
            self.transport_errors += 1
            self.by_class["error"] += 1
        else:
            self.by_class[f"{status // 100}xx"] += 1
            if status >= 500:
                self.server_errors += 1
            elif problem:
                self.shape_violations += 1
        if problem:
            key = problem[:160]
            if key not in self.failures and len(self.failures) < SHOWN_FAILURES:
                self.failures[key] = {"status": status, "problem": problem, "request": request}

    def summary(self) -> dict[str, Any]:
        return {
            "scoring": self.scoring,
            "requests": self.requests,
            "by_class": dict(sorted(self.by_class.items())),
            "5xx": self.server_errors,
            "shape_violations": self.shape_violations,
            "transport_errors": self.transport_errors,
            "failures": list(self.failures.values()),
        }


def scoring_paths(openapi: dict[str, Any]) -> set[str]:
    """Paths with an operation tagged ``scoring``: read from the schema, so a new scoring route
    gets the full example count without a list here to keep in step."""
    return {
        path
        for path, item in openapi.get("paths", {}).items()
        for op in item.values()
        if isinstance(op, dict) and SCORING_TAG in op.get("tags", ())
    }


def _problem(status: int, content_type: str | None, body: bytes) -> str | None:
    if status >= 500:
        try:
            err = json.loads(body)["error"]
            return f"{status} {err['type']}: {err['message'][:300]}"
        except (ValueError, KeyError, TypeError):
            return f"{status}: {body[:300]!r}"
    if status >= 400:
        return hostile.error_shape_problem(status, content_type, body)
    return None


def _describe(case, sent=None) -> dict:
    """The request as sent (``sent``: the prepared request), short enough to read."""
    if sent is not None:
        body = sent.body
        text = body.decode("utf-8", "backslashreplace") if isinstance(body, bytes) else str(body)
        ctype = sent.headers.get("content-type")
    else:
        text, ctype = json.dumps(case.body, default=repr), None
    return {
        "method": case.method,
        "path": case.formatted_path,
        "query": case.query or None,
        "content_type": ctype,
        "body": text if len(text) <= 400 else text[:400] + f"... ({len(text)} chars)",
    }


def _generate(op, mode, n: int, seed: int, send: Callable[[Any], None]) -> None:
    """Up to ``n`` cases of ``op`` in ``mode``, each passed to ``send`` (never raises for a bad
    answer: it is recorded, so hypothesis does not stop or shrink)."""
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as hseed
    from hypothesis.errors import Unsatisfiable

    @hseed(seed)
    @settings(
        max_examples=n,
        database=None,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
        print_blob=False,
    )
    @given(case=op.as_strategy(generation_mode=mode))
    def run(case) -> None:
        send(case)

    try:
        run()
    except Unsatisfiable:
        pass  # no invalid input exists (an operation without parameters)


def fuzz_schema(
    url: str,
    max_examples: int,
    seed: int = 0,
    api_key: str | None = None,
    timeout_s: float = 60.0,
    progress: bool = True,
) -> dict[str, EndpointStats]:
    """Generated requests for every operation of the server's schema; stats per operation.

    Scoring endpoints get at least ``max_examples`` requests (half valid, half invalid), the
    others a tenth of that (their input space is tiny)."""
    import requests
    import schemathesis
    from schemathesis import GenerationMode

    auth = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    schema = schemathesis.openapi.from_url(url + "/openapi.json", headers=auth, timeout=30)
    scoring = scoring_paths(schema.raw_schema)
    if not scoring:
        raise ValueError(f"no operation tagged {SCORING_TAG!r} in {url}/openapi.json")
    stats: dict[str, EndpointStats] = {}
    session = requests.Session()

    def sender(st: EndpointStats) -> Callable[[Any], None]:
        def send(case) -> None:
            try:
                r = case.call(base_url=url, session=session, headers=auth, timeout=timeout_s)
            except requests.RequestException as exc:
                st.record(None, f"transport error {type(exc).__name__}", _describe(case))
                return
            ctype = (r.headers.get("content-type") or [None])[0]
            st.record(
                r.status_code, _problem(r.status_code, ctype, r.content), _describe(case, r.request)
            )

        return send

    for result in schema.get_all_operations():
        op = result.ok()
        label = f"{op.method.upper()} {op.path}"
        st = stats.setdefault(label, EndpointStats(label, op.path in scoring))
        target = max_examples if st.scoring else max(1, max_examples // 10)
        t0 = time.perf_counter()
        for rnd in range(MAX_ROUNDS):
            before = st.requests
            for k, mode in enumerate((GenerationMode.POSITIVE, GenerationMode.NEGATIVE)):
                want = max(1, (target - st.requests) // (2 - k))
                _generate(op, mode, want, seed * 1_000_003 + rnd * 2 + k, sender(st))
            if st.requests >= target or st.requests == before:
                break
        if progress:
            s = st.summary()
            print(
                f"[fuzz] {label}: {s['requests']} requests in {time.perf_counter() - t0:.0f}s, "
                f"5xx {s['5xx']}, shape violations {s['shape_violations']}",
                flush=True,
            )
    session.close()
    return stats


def alive(url: str) -> bool:
    import httpx

    try:
        return httpx.get(url + "/health", timeout=10).status_code == 200
    except httpx.HTTPError:
        return False


def run_fuzz(
    url: str,
    max_examples: int,
    seed: int = 0,
    api_key: str | None = None,
    protocol_wait_s: float = 15.0,
    hostile_cases: bool = True,
    progress: bool = True,
) -> dict[str, Any]:
    """The whole run (schema fuzzing, hostile cases, liveness); returns the JSON report."""
    t0 = time.perf_counter()
    stats = fuzz_schema(url, max_examples, seed, api_key, progress=progress)
    auth = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    json_rows, proto_rows = [], []
    if hostile_cases:
        json_rows = list(hostile.run_json_cases(url, headers=auth))
        parts = urlsplit(url)
        proto_rows = list(
            hostile.run_protocol_cases(
                parts.hostname, parts.port or 80, wait_s=protocol_wait_s, headers=auth
            )
        )
    up = alive(url)
    endpoints = {k: v.summary() for k, v in sorted(stats.items())}
    short = [k for k, e in endpoints.items() if e["scoring"] and e["requests"] < max_examples]
    failed = {
        "5xx": sum(e["5xx"] for e in endpoints.values()),
        "shape_violations": sum(e["shape_violations"] for e in endpoints.values()),
        "transport_errors": sum(e["transport_errors"] for e in endpoints.values()),
        "hostile": [r["name"] for r in json_rows + proto_rows if not r["ok"]],
        "below_max_examples": short,
    }
    passed = up and not any(failed.values())
    return {
        "url": url,
        "seed": seed,
        "max_examples": max_examples,
        "seconds": round(time.perf_counter() - t0, 1),
        "endpoints": endpoints,
        "hostile": json_rows,
        "protocol": proto_rows,
        "alive_after": up,
        "failed": failed,
        "passed": passed,
    }


def format_fuzz(rep: dict[str, Any]) -> str:
    rows = []
    for label, e in rep["endpoints"].items():
        c = e["by_class"]
        rows.append(
            [label, e["requests"], c.get("2xx", 0), c.get("4xx", 0), e["5xx"],
             e["transport_errors"], e["shape_violations"]]
        )  # fmt: skip
    out = [table(rows, ["endpoint", "requests", "2xx", "4xx", "5xx", "errors", "bad shape"])]
    for key, title in (("hostile", "hostile request"), ("protocol", "protocol case")):
        if rep[key]:
            hrows = [
                [r["name"], r["status"] if r["status"] is not None else "-",
                 "ok" if r["ok"] else f"FAIL: {r['problem'][:90]}"]
                for r in rep[key]
            ]  # fmt: skip
            out.append(table(hrows, [title, "status", "verdict"]))
    for label, e in rep["endpoints"].items():
        for f in e["failures"][:5]:
            out.append(f"{label}: {f['problem'][:200]}\n    request: {f['request']['body'][:200]}")
    out.append(f"server alive after: {'yes' if rep['alive_after'] else 'NO'}")
    out.append("PASS" if rep["passed"] else f"FAIL: {json.dumps(rep['failed'])}")
    return "\n\n".join(out)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m loadtest.fuzz",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--url", required=True, help="server base URL, e.g. http://127.0.0.1:8000")
    p.add_argument("--max-examples", type=int, default=1000, help="per scoring endpoint [1000]")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--api-key",
        default=os.environ.get("SLIMRANK_API_KEY"),
        help="sent as Authorization: Bearer KEY [env SLIMRANK_API_KEY]",
    )
    p.add_argument("--protocol-wait", type=float, default=15.0, help="per raw-socket case (s)")
    p.add_argument("--no-hostile", action="store_true", help="schema fuzzing only")
    p.add_argument("--json", help="write the report here")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    parts = urlsplit(args.url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        print(f"error: --url must look like http://host:port, got {args.url!r}", file=sys.stderr)
        return 2
    url = f"{parts.scheme}://{parts.netloc}"
    if not alive(url):
        print(f"error: no server answering GET {url}/health", file=sys.stderr)
        return 2
    rep = run_fuzz(
        url, args.max_examples, args.seed, args.api_key, args.protocol_wait, not args.no_hostile
    )
    print("\n" + format_fuzz(rep))
    if args.json:
        print(f"wrote {write_json(rep, args.json)}")
    return 0 if rep["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
