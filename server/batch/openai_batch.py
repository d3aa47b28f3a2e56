"""vLLM's batch format (``vllm run-batch``, the OpenAI batch file): one request per line,
``{"custom_id", "method", "url", "body"}``, answered line for line, in order, as
``{"id", "custom_id", "response": {"status_code", "request_id", "body"}, "error"}``.

Each line goes through the server itself, in this process: the app is built from the same
settings and driven over ASGI (no socket), so a line is validated, scored, calibrated and
refused exactly as the server would answer it; lines run concurrently so the scheduler batches
them. A bad line (not JSON, an unknown url, a body the endpoint refuses) gets its answer (its
``error``, or the endpoint's 4xx in ``response``) and the run goes on. Unlike the pairs format
the output is one file, written to a temporary name and renamed at the end (no resume, as
``vllm run-batch``).
"""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path

from ranking.atomic import partial_path
from server.settings import ServerSettings

URLS = ("/v1/rank", "/v1/score", "/v1/rerank", "/v2/rerank")
IN_FLIGHT = 64  # lines awaiting an answer at once: enough for the scheduler to fill batches


def is_openai_batch(path: Path) -> bool:
    """Whether a JSONL file's first line is a batch request (``custom_id`` and ``body``)."""
    if path.suffix != ".jsonl":
        return False
    with path.open("rb") as f:
        for raw in f:
            if raw.strip():
                try:
                    first = json.loads(raw)
                except ValueError:
                    return False
                return isinstance(first, dict) and "custom_id" in first and "body" in first
    return False


def _error(custom_id, message: str, code: str = "invalid_request") -> dict:
    return {
        "id": f"batch_req_{uuid.uuid4().hex}",
        "custom_id": custom_id,
        "response": None,
        "error": {"code": code, "message": message},
    }


async def _answer(client, line_no: int, raw: bytes) -> dict:
    try:
        req = json.loads(raw)
        if not isinstance(req, dict):
            raise ValueError("a line must be a JSON object")
    except ValueError as exc:
        return _error(None, f"line {line_no}: not a batch request: {exc}")
    cid = req.get("custom_id")
    method, url, body = req.get("method", "POST"), req.get("url"), req.get("body")
    if method != "POST" or url not in URLS:
        return _error(cid, f"line {line_no}: {method} {url} is not one of POST {', '.join(URLS)}")
    if not isinstance(body, dict):
        return _error(cid, f"line {line_no}: body must be a JSON object")
    r = await client.post(url, json=body, headers={"X-Request-Id": f"batch-{line_no}"})
    return {
        "id": f"batch_req_{uuid.uuid4().hex}",
        "custom_id": cid,
        "response": {
            "status_code": r.status_code,
            "request_id": r.headers.get("x-request-id", ""),
            "body": r.json(),
        },
        "error": None,
    }


async def run_openai_batch(settings: ServerSettings, path: Path, output: Path, progress) -> dict:
    """Answers every line of ``path`` into ``output`` (JSONL, same order); returns counts."""
    import httpx

    from server.app import create_app

    app = create_app(settings)
    counts = {"lines": 0, "ok": 0, "refused": 0, "errors": 0}
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = partial_path(output)
    async with app.router.lifespan_context(app):
        service = app.state.service
        while not service.ready:
            if service.load_error:
                raise RuntimeError(f"the model did not load: {service.load_error}")
            await asyncio.sleep(0.05)
        transport = httpx.ASGITransport(app)
        async with httpx.AsyncClient(transport=transport, base_url="http://batch", timeout=None) as client:  # fmt: skip
            window: list[asyncio.Task] = []
            with tmp.open("w") as out, path.open("rb") as f:

                def emit(result: dict) -> None:
                    out.write(json.dumps(result) + "\n")
                    counts["lines"] += 1
                    status = (result["response"] or {}).get("status_code")
                    key = "errors" if result["error"] else ("ok" if status == 200 else "refused")
                    counts[key] += 1
                    progress.update(1)

                for line_no, raw in enumerate(f, start=1):
                    if not raw.strip():
                        continue
                    window.append(asyncio.create_task(_answer(client, line_no, raw)))
                    if len(window) >= IN_FLIGHT:  # answered in order: wait for the oldest
                        emit(await window.pop(0))
                for task in window:
                    emit(await task)
    tmp.replace(output)
    return counts
