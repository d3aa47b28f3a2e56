"""The ranking service: everything between a parsed request and its response.

It applies the request limits, tokenizes with the model's own task (``ranking.task``), submits
to the scheduler (admission, batching, deadlines) and builds the response of each dialect.
Errors are ``ApiError`` (status + stable type), so the routes stay HTTP-only.
"""

from __future__ import annotations

import logging
import time
import uuid

import numpy as np

from ranking.request import EncodedRequest
from server.engines import Engine
from server.errors import ApiError
from server.metrics import ServerMetrics
from server.middleware import note_access
from server.protocol import (
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


class RankingService:
    """Lifecycle: ``start()`` (scheduler) -> ``load()`` (engine, warm-up; ready after) ->
    requests ... -> ``stop()`` (drain: no new requests, queued and running ones finish)."""

    def __init__(self, settings: ServerSettings, engine: Engine, metrics: ServerMetrics):
        self.settings, self.engine, self.metrics = settings, engine, metrics
        self.scheduler = Scheduler(
            engine,
            metrics,
            settings.max_batch_tokens,
            settings.max_wait_ms / 1000,
            settings.max_queue_items,
            settings.max_queue_wait_ms / 1000,
            tuple(settings.fault_batches),
        )
        self.ready = False
        self.draining = False
        self.load_error: str | None = None

    # ---- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        self.scheduler.start()

    async def load(self) -> bool:
        """Loads and warms up the engine; False (with ``load_error`` set) if that failed."""
        eng = self.engine
        t0 = time.perf_counter()
        try:
            await eng.start()
            await eng.warmup()
        except Exception as exc:  # noqa: BLE001 - reported by /ready and the log
            self.load_error = f"{type(exc).__name__}: {exc}"
            log.error("model failed to load: %s", self.load_error)
            return False
        info = eng.info
        self.metrics.set_model(eng.model_name, info.format, eng.name, info.params)
        self.ready = True
        self.metrics.ready.set(1)
        log.info(
            "ready: model=%s format=%s engine=%s params=%s load+warmup=%.1fs",
            eng.model_name,
            info.format,
            eng.name,
            info.params,
            time.perf_counter() - t0,
        )
        return True

    async def stop(self) -> None:
        await self.scheduler.drain()
        await self.engine.stop()

    def begin_drain(self) -> None:
        """First SIGTERM: /ready turns 503 and new requests get 503 ``shutting_down``; admitted
        ones finish (``server/lifecycle.py`` shuts the server down after the drain window)."""
        self.draining = True
        self.scheduler.stop_admitting()
        log.info("draining: new requests get 503, admitted ones finish")

    def engine_dead(self) -> ApiError | None:
        """The engine died after loading (e.g. vLLM's engine-core process is gone)."""
        if self.ready and not self.engine.is_alive():
            return ApiError(
                503, "engine_unavailable", "the scoring engine is not running; restart the server"
            )
        return None

    def check_alive(self) -> None:
        dead = self.engine_dead()
        if dead is not None:
            self.scheduler.fail_all(dead)
            raise dead

    def check_ready(self) -> None:
        if self.draining:
            raise ApiError(
                503,
                "shutting_down",
                "server is shutting down",
                {"Retry-After": "1", "Connection": "close"},
            )
        self.check_alive()
        if not self.ready:
            msg = self.load_error or "model is loading"
            raise ApiError(503, "not_ready", msg, {"Retry-After": "5"})

    def readiness(self) -> dict:
        self.check_ready()
        return {"status": "ready", "model": self.engine.model_name}

    # ---- the three dialects ------------------------------------------------------------------
    async def rank(self, req: RankRequest) -> RankResponse:
        scores, usage = await self._score(req.query, req.items, req.model)
        order = np.argsort(-scores, kind="stable")[: req.top_k]
        return RankResponse(
            model=self.engine.model_name,
            results=[RankResult(index=int(i), score=float(scores[i])) for i in order],
            usage=usage,
        )

    async def score(self, req: ScoreRequest) -> ScoreResponse:
        """Only the model's own label tokens, normalised over them: the engines compute just
        those rows of the LM head."""
        if req.item_first:
            raise ApiError(
                422,
                "unsupported",
                "item_first=true is not supported: the query is the shared prefix",
            )
        if not req.apply_softmax:
            raise ApiError(
                422,
                "unsupported",
                "apply_softmax=false is not supported: only the label rows are computed, "
                "so probabilities are normalised over the label tokens",
            )
        yes, no = self.engine.label_ids if self.engine.label_ids else (None, None)
        wanted = req.label_token_ids or [yes, no]
        if self.ready and sorted(wanted) != sorted([yes, no]):
            raise ApiError(
                422,
                "unknown_label_tokens",
                f"label_token_ids {wanted} are not this model's label tokens [{yes}, {no}] (yes, no)",
            )
        scores, usage = await self._score(req.query, req.items, req.model)
        rows = [[float(s) if t == yes else float(1 - s) for t in wanted] for s in scores]
        return ScoreResponse(scores=rows, model=self.engine.model_name, usage=usage)

    async def rerank(self, req: RerankRequest) -> RerankResponse:
        scores, usage = await self._score(req.query, req.documents, req.model, field="documents")
        order = np.argsort(-scores, kind="stable")[: req.top_n]
        return RerankResponse(
            id=f"rerank-{uuid.uuid4().hex}",
            model=self.engine.model_name,
            results=[
                RerankResult(
                    index=int(i),
                    relevance_score=float(scores[i]),
                    document=RerankDocument(text=req.documents[i])
                    if req.return_documents
                    else None,
                )
                for i in order
            ],
            usage=RerankUsage(prompt_tokens=usage.prompt_tokens, total_tokens=usage.prompt_tokens),
        )

    def models(self) -> ModelList:
        eng, info = self.engine, self.engine.info
        return ModelList(
            data=[
                ModelCard(
                    id=eng.model_name,
                    format=info.format if info else "loading",
                    engine=eng.name,
                    parameters=info.params if info else None,
                    max_items=self.settings.max_items,
                    label_tokens=[eng.task.yes, eng.task.no] if eng.task else [],
                )
            ]
        )

    # ---- shared by the dialects --------------------------------------------------------------
    def encode(
        self, query: str, items: list[str], model: str | None, field: str = "items"
    ) -> EncodedRequest:
        """Checks readiness, the model name and the limits; tokenizes. Nothing is truncated:
        over a limit is a 422 naming it (``field``: the dialect's name for the items)."""
        self.check_ready()
        eng, s = self.engine, self.settings
        if model is not None and model != eng.model_name:
            raise ApiError(
                404,
                "model_not_found",
                f"model {model!r} is not served here (serving {eng.model_name!r})",
            )
        if len(items) > s.max_items:
            raise ApiError(
                422,
                "too_many_items",
                f"{len(items)} {field}; the limit is max_items={s.max_items}",
            )
        for i, it in enumerate(items):
            if not it:
                raise ApiError(422, "invalid_request", f"{field}[{i}] is empty")
        q_ids = eng.task.encode_query(eng.tokenizer, query)
        if len(q_ids) > s.max_query_tokens:
            raise ApiError(
                422,
                "query_too_long",
                f"query is {len(q_ids)} tokens; the limit is max_query_tokens={s.max_query_tokens}",
            )
        i_ids = eng.task.encode_items(eng.tokenizer, items)
        for i, ids in enumerate(i_ids):
            if len(ids) > s.max_item_tokens:
                raise ApiError(
                    422,
                    "item_too_long",
                    f"{field}[{i}] is {len(ids)} tokens with the question; the limit is "
                    f"max_item_tokens={s.max_item_tokens}",
                )
        return EncodedRequest(q_ids, i_ids)

    async def _score(
        self, query: str, items: list[str], model: str | None, field: str = "items"
    ) -> tuple[np.ndarray, Usage]:
        enc = self.encode(query, items, model, field)
        try:
            scores, timing = await self.scheduler.submit(enc, self.settings.request_timeout_s)
        except Overloaded as exc:
            raise ApiError(
                429, "overloaded", str(exc), {"Retry-After": str(int(exc.retry_after))}
            ) from None
        except DeadlineExceeded as exc:
            raise ApiError(504, "deadline_exceeded", str(exc)) from None
        except ShuttingDown as exc:
            raise ApiError(
                503, "shutting_down", str(exc), {"Retry-After": "1", "Connection": "close"}
            ) from None
        except ApiError:
            raise
        except Exception as exc:  # noqa: BLE001 - the engine failed this batch
            self.check_alive()  # a dead engine: 503 engine_unavailable, the queue failed too
            rid = uuid.uuid4().hex[:16]
            log.error("engine error (request id %s)", rid, exc_info=exc)
            raise ApiError(
                500,
                "engine_error",
                f"the engine failed this request's batch (request id {rid})",
                {"X-Request-Id": rid},
            ) from None
        note_access(
            items=enc.n_items,
            queue_ms=round(timing["queue_s"] * 1000, 2),
            prefill_ms=round(timing["prefill_s"] * 1000, 2),
            batch=timing["batch"],
        )
        usage = Usage(
            prompt_tokens=enc.prompt_tokens,
            computed_tokens=enc.computed_tokens,
            items=enc.n_items,
            total_tokens=enc.prompt_tokens,
        )
        return np.asarray(scores, dtype=np.float64), usage
