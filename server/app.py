"""The FastAPI app: endpoints, error mapping, request limits, metrics and logging.

Schemas live in ``server/protocol.py``; batching and admission in ``server/scheduler.py``;
the model behind ``server/engines``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import time
import uuid
from contextlib import asynccontextmanager

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from ranking.request import EncodedRequest
from server.engines import Engine, create_engine
from server.metrics import ServerMetrics
from server.protocol import (
    ErrorResponse,
    ModelCard,
    ModelList,
    RankRequest,
    RankResponse,
    RankResult,
    RerankDocument,
    RerankRequest,
    RerankResponse,
    RerankResult,
    RerankUsage,
    ScoreRequest,
    ScoreResponse,
    Usage,
)
from server.scheduler import DeadlineExceeded, Overloaded, Scheduler, ShuttingDown
from server.settings import ServerSettings

log = logging.getLogger("slimrank.server")
access = logging.getLogger("slimrank.access")


class ApiError(Exception):
    """An error with an HTTP status and a stable ``type``; rendered as ErrorResponse."""

    def __init__(self, status: int, type_: str, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.type, self.message, self.headers = status, type_, message, headers or {}


def error_response(
    status: int, type_: str, message: str, headers: dict | None = None
) -> JSONResponse:
    return JSONResponse(
        ErrorResponse(error={"type": type_, "message": message}).model_dump(),
        status_code=status,
        headers=headers,
    )


SCORING_PATHS = ("/v1/rank", "/v1/score", "/v1/rerank")
ERRORS = {code: {"model": ErrorResponse} for code in (400, 404, 413, 422, 429, 503, 504)}


class BodySizeLimit:
    """ASGI middleware: refuse bodies over ``max_bytes`` with 413 (declared or streamed)."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        too_big = error_response(
            413, "payload_too_large", f"request body exceeds {self.max_bytes} bytes"
        )
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await too_big(scope, receive, send)
        seen = 0

        async def limited_receive():
            nonlocal seen
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > self.max_bytes:
                    raise ApiError(
                        413, "payload_too_large", f"request body exceeds {self.max_bytes} bytes"
                    )
            return msg

        return await self.app(scope, limited_receive, send)


async def _cancel_on_disconnect(request: Request, work):
    """Runs ``work``; if the client disconnects first, cancels it (queued work is then dropped)."""

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
    raise ApiError(499, "client_disconnected", "client closed the connection")


def create_app(settings: ServerSettings, engine: Engine | None = None) -> FastAPI:
    metrics = ServerMetrics()
    state = {"ready": False, "error": None}

    async def load(app: FastAPI) -> None:
        eng = app.state.engine
        t0 = time.perf_counter()
        try:
            await eng.start()
            await eng.warmup()
        except Exception as exc:  # noqa: BLE001 - reported, then the process exits
            state["error"] = f"{type(exc).__name__}: {exc}"
            log.error("model failed to load: %s", state["error"])
            if os.environ.get("SLIMRANK_EXIT_ON_LOAD_ERROR", "1") == "1":
                os.kill(os.getpid(), signal.SIGTERM)
            return
        info = eng.info
        metrics.set_model(eng.model_name, info.format, eng.name, info.params)
        state["ready"] = True
        metrics.ready.set(1)
        log.info(
            "ready: model=%s format=%s engine=%s params=%s load+warmup=%.1fs",
            eng.model_name,
            info.format,
            eng.name,
            info.params,
            time.perf_counter() - t0,
        )

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.engine = engine or create_engine(settings)
        app.state.scheduler = Scheduler(
            app.state.engine,
            metrics,
            settings.max_batch_tokens,
            settings.max_wait_ms / 1000,
            settings.max_queue_items,
        )
        app.state.scheduler.start()
        loader = asyncio.create_task(load(app))
        yield
        loader.cancel()
        await app.state.scheduler.drain()
        await app.state.engine.stop()

    app = FastAPI(
        title="slimrank ranking server",
        version="0.1.0",
        description="Scores (query, item) pairs with a compressed ranking LLM: "
        "score = P(yes) / (P(yes) + P(no)).",
        lifespan=lifespan,
    )
    app.state.metrics = metrics
    app.state.settings = settings
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)

    # ---- errors: one JSON shape, 4xx for the client's fault ---------------------------------------
    @app.exception_handler(ApiError)
    async def _api_error(_, exc: ApiError):
        return error_response(exc.status, exc.type, exc.message, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(_, exc: RequestValidationError):
        errs = exc.errors()
        if any(e.get("type") == "json_invalid" for e in errs):
            return error_response(
                400, "invalid_json", f"body is not valid JSON: {errs[0].get('msg')}"
            )
        parts = []
        for e in errs[:5]:
            loc = ".".join(str(x) for x in e.get("loc", ()) if x != "body")
            parts.append(f"{loc or 'body'}: {e.get('msg')}")
        return error_response(422, "invalid_request", "; ".join(parts))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_, exc: StarletteHTTPException):
        kind = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return error_response(exc.status_code, kind, str(exc.detail))

    @app.exception_handler(Exception)
    async def _internal(_, exc: Exception):
        log.exception("internal error")
        return error_response(500, "internal_error", f"{type(exc).__name__}: {exc}")

    # ---- per-request accounting ----------------------------------------------------------------------
    @app.middleware("http")
    async def _account(request: Request, call_next):
        path = request.url.path
        if not path.startswith("/v1/") or request.method != "POST":
            return await call_next(request)
        if path not in SCORING_PATHS:
            path = "other"  # bounded label values: random paths must not grow the series count
        t0 = time.perf_counter()
        metrics.in_flight.inc()
        request.state.log = {}
        status = 500
        try:
            try:
                response = await call_next(request)
            except ApiError as exc:  # raised below the exception handlers (body limit)
                response = error_response(exc.status, exc.type, exc.message, exc.headers)
            status = response.status_code
            return response
        finally:
            dt = time.perf_counter() - t0
            metrics.in_flight.dec()
            metrics.requests.labels(path, str(status)).inc()
            metrics.request_duration.labels(path).observe(dt)
            access.info(
                json.dumps(
                    {
                        "endpoint": path,
                        "status": status,
                        "latency_ms": round(dt * 1000, 2),
                        **getattr(request.state, "log", {}),
                    }
                )
            )

    # ---- the scoring path shared by the three dialects ----------------------------------------------
    async def score(request: Request, query: str, items: list[str], model: str | None):
        if not state["ready"]:
            msg = state["error"] or "model is loading"
            raise ApiError(503, "not_ready", msg, {"Retry-After": "5"})
        eng: Engine = app.state.engine
        if model is not None and model != eng.model_name:
            raise ApiError(
                404,
                "model_not_found",
                f"model {model!r} is not served here (serving {eng.model_name!r})",
            )
        if len(items) > settings.max_items:
            raise ApiError(
                422,
                "too_many_items",
                f"{len(items)} items; the limit is max_items={settings.max_items}",
            )
        for i, it in enumerate(items):
            if not it:
                raise ApiError(422, "invalid_request", f"items[{i}] is empty")
        q_ids = eng.task.encode_query(eng.tokenizer, query)
        if len(q_ids) > settings.max_query_tokens:
            raise ApiError(
                422,
                "query_too_long",
                f"query is {len(q_ids)} tokens; the limit is max_query_tokens={settings.max_query_tokens}",
            )
        i_ids = eng.task.encode_items(eng.tokenizer, items)
        for i, ids in enumerate(i_ids):
            if len(ids) > settings.max_item_tokens:
                raise ApiError(
                    422,
                    "item_too_long",
                    f"items[{i}] is {len(ids)} tokens with the question; the limit is "
                    f"max_item_tokens={settings.max_item_tokens}",
                )
        enc = EncodedRequest(q_ids, i_ids)
        try:
            scores, timing = await _cancel_on_disconnect(
                request, app.state.scheduler.submit(enc, settings.request_timeout_s)
            )
        except Overloaded as exc:
            raise ApiError(
                429, "overloaded", str(exc), {"Retry-After": str(int(exc.retry_after))}
            ) from None
        except DeadlineExceeded as exc:
            raise ApiError(504, "deadline_exceeded", str(exc)) from None
        except ShuttingDown as exc:
            raise ApiError(503, "shutting_down", str(exc)) from None
        request.state.log = {
            "items": enc.n_items,
            "queue_ms": round(timing["queue_s"] * 1000, 2),
            "prefill_ms": round(timing["prefill_s"] * 1000, 2),
            "batch": timing["batch"],
        }
        usage = Usage(
            prompt_tokens=enc.prompt_tokens,
            computed_tokens=enc.computed_tokens,
            items=enc.n_items,
            total_tokens=enc.prompt_tokens,
        )
        return np.asarray(scores, dtype=np.float64), usage

    @app.post("/v1/rank", response_model=RankResponse, responses=ERRORS, tags=["scoring"])
    async def rank(body: RankRequest, request: Request) -> RankResponse:
        """Native API: one query, N candidate items -> items sorted by score (best first)."""
        scores, usage = await score(request, body.query, body.items, body.model)
        order = np.argsort(-scores, kind="stable")[: body.top_k]
        return RankResponse(
            model=app.state.engine.model_name,
            results=[RankResult(index=int(i), score=float(scores[i])) for i in order],
            usage=usage,
        )

    @app.post("/v1/score", response_model=ScoreResponse, responses=ERRORS, tags=["scoring"])
    async def score_api(body: ScoreRequest, request: Request) -> ScoreResponse:
        """SGLang-compatible scoring: a probability per item per label token id.

        Only the model's own label tokens can be asked for (this server computes just those
        rows of the LM head), with ``apply_softmax=true`` (normalised over them)."""
        eng: Engine = app.state.engine
        if body.item_first:
            raise ApiError(
                422,
                "unsupported",
                "item_first=true is not supported: the query is the shared prefix",
            )
        if not body.apply_softmax:
            raise ApiError(
                422,
                "unsupported",
                "apply_softmax=false is not supported: only the label rows are computed, "
                "so probabilities are normalised over the label tokens",
            )
        yes, no = eng.label_ids if eng.label_ids else (None, None)
        wanted = body.label_token_ids or [yes, no]
        if state["ready"] and sorted(wanted) != sorted([yes, no]):
            raise ApiError(
                422,
                "unknown_label_tokens",
                f"label_token_ids {wanted} are not this model's label tokens [{yes}, {no}] (yes, no)",
            )
        scores, usage = await score(request, body.query, body.items, body.model)
        rows = [[float(s) if t == yes else float(1 - s) for t in wanted] for s in scores]
        return ScoreResponse(scores=rows, model=eng.model_name, usage=usage)

    @app.post("/v1/rerank", response_model=RerankResponse, responses=ERRORS, tags=["scoring"])
    async def rerank(body: RerankRequest, request: Request) -> RerankResponse:
        """Cohere / Jina / vLLM-compatible rerank."""
        scores, usage = await score(request, body.query, body.documents, body.model)
        order = np.argsort(-scores, kind="stable")[: body.top_n]
        return RerankResponse(
            id=f"rerank-{uuid.uuid4().hex}",
            model=app.state.engine.model_name,
            results=[
                RerankResult(
                    index=int(i),
                    relevance_score=float(scores[i]),
                    document=RerankDocument(text=body.documents[i])
                    if body.return_documents
                    else None,
                )
                for i in order
            ],
            usage=RerankUsage(prompt_tokens=usage.prompt_tokens, total_tokens=usage.prompt_tokens),
        )

    @app.get("/v1/models", response_model=ModelList, tags=["info"])
    async def models() -> ModelList:
        eng: Engine = app.state.engine
        info = eng.info
        labels = [eng.task.yes, eng.task.no] if eng.task else []
        return ModelList(
            data=[
                ModelCard(
                    id=eng.model_name,
                    format=info.format if info else "loading",
                    engine=eng.name,
                    parameters=info.params if info else None,
                    max_items=settings.max_items,
                    label_tokens=labels,
                )
            ]
        )

    @app.get("/health", tags=["info"])
    async def health():
        """The process is alive (not necessarily ready)."""
        return {"status": "ok"}

    @app.get("/ready", tags=["info"], responses={503: {"model": ErrorResponse}})
    async def ready():
        """200 once the model is loaded and warmed up; 503 before (or if loading failed)."""
        if state["ready"]:
            return {"status": "ready", "model": app.state.engine.model_name}
        return error_response(
            503, "not_ready", state["error"] or "model is loading", {"Retry-After": "5"}
        )

    @app.get("/metrics", tags=["info"])
    async def prometheus_metrics():
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app
