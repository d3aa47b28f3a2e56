"""The ranking service: everything between a parsed request and its response.

It applies the request limits, tokenizes with the model's own task (``ranking.task``), submits
to the scheduler (admission, batching, deadlines) and builds the response of each dialect.
Errors are ``ApiError`` (status + stable type), so the routes stay HTTP-only.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import replace

import numpy as np

from ranking.request import EncodedRequest
from server.engines import Engine, LoadedModel
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
    RerankMeta,
    RerankRequest,
    RerankResponse,
    RerankResult,
    RerankUsage,
    RerankV2Request,
    RerankV2Response,
    ScoreRequest,
    ScoreResponse,
    Usage,
)
from server.scheduler import DeadlineExceeded, Overloaded, Scheduler, ShuttingDown
from server.settings import ServerSettings
from server.token_cache import TokenCache

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
            settings.max_expected_latency_ms / 1000,
        )
        self.name = engine.spec.name  # the model name requests and responses use
        self.model: LoadedModel | None = None  # set once the engine has loaded it
        self.ready = False
        self.draining = False
        self.load_error: str | None = None
        self.query_tokens = TokenCache()  # the same member is ranked again within seconds
        self.item_tokens = TokenCache(max_entries=65536)  # and popular items recur

    # ---- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        self.scheduler.start()

    async def load(self) -> bool:
        """Loads and warms up the engine; False (with ``load_error`` set) if that failed."""
        eng = self.engine
        t0 = time.perf_counter()
        try:
            model = await eng.start()
            await eng.warmup(model)
        except Exception as exc:  # noqa: BLE001 - reported by /ready and the log
            self.load_error = f"{type(exc).__name__}: {exc}"
            log.error("model failed to load: %s", self.load_error)
            return False
        self.model, info = model, model.info
        self.metrics.set_model(self.name, info.format, eng.name, info.params)
        self.ready = True
        self.metrics.ready.set(0 if self.draining else 1)
        log.info(
            "ready: model=%s format=%s engine=%s kernel=%s (%s) params=%s load+warmup=%.1fs",
            self.name,
            info.format,
            eng.name,
            model.kernel,
            model.kernel_reason,
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
        self.metrics.ready.set(0)
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
        return {"status": "ready", "model": self.name}

    # ---- the dialects ------------------------------------------------------------------------
    async def rank(self, req: RankRequest) -> RankResponse:
        enc = self.encode(req.query, req.items, req.model, req.instruction)
        scores, usage = await self._submit(enc)
        order = np.argsort(-scores, kind="stable")[: req.top_k]
        return RankResponse(
            model=self.name,
            results=[RankResult(index=int(i), score=float(scores[i])) for i in order],
            usage=usage,
        )

    async def score(self, req: ScoreRequest) -> ScoreResponse:
        """SGLang's scoring: a probability per item per asked label id. The engines compute
        only the asked rows of the LM head, and the full-vocabulary normaliser only for
        ``apply_softmax=false``."""
        if req.item_first:
            raise ApiError(
                422,
                "unsupported",
                "item_first=true is not supported: the query is the shared prefix",
            )
        self.check_ready()
        m = self.model
        wanted = tuple(req.label_token_ids or m.label_ids)
        for i, t in enumerate(wanted):
            self._check_token_id(t, f"label_token_ids[{i}]")
        if not m.any_label_ids and (not req.apply_softmax or sorted(wanted) != sorted(m.label_ids)):
            raise ApiError(
                422,
                "unsupported",
                f"label_token_ids {list(wanted)} with apply_softmax={req.apply_softmax}: this "
                f"engine scores with a classifier head and answers only the model's label tokens "
                f"{list(m.label_ids)} with apply_softmax=true (serve with --vllm-scoring "
                "logprobs for any label ids)",
            )
        items = [req.items] if isinstance(req.items, str) else req.items
        if isinstance(req.query, str):
            if any(not isinstance(it, str) for it in items):
                raise ApiError(
                    422,
                    "invalid_request",
                    "items: token ids with a text query; send both as text or both as token ids",
                )
            enc = self.encode(req.query, items, req.model, req.instruction)
        else:
            if any(isinstance(it, str) for it in items):
                raise ApiError(
                    422,
                    "invalid_request",
                    "items: text with a token-id query; send both as text or both as token ids",
                )
            if req.instruction is not None:
                raise ApiError(
                    422,
                    "invalid_request",
                    "instruction: token-id prompts are used as given, "
                    "with no template to put an instruction in",
                )
            enc = self.encode_ids(req.query, items, req.model)
        enc = replace(enc, label_ids=wanted, full_vocab=not req.apply_softmax)
        scores, usage = await self._submit(enc)
        rows = [[float(p) for p in row] for row in scores]
        return ScoreResponse(scores=rows, model=self.name, usage=usage)

    async def rerank(self, req: RerankRequest) -> RerankResponse:
        docs = req.texts()
        enc = self.encode(req.query, docs, req.model, req.instruction, field="documents")
        limit = getattr(req, "max_tokens_per_doc", None)
        if limit is not None:
            for i, d in enumerate(docs):
                n = len(self.model.tokenizer.encode(d, add_special_tokens=False))
                if n > limit:
                    raise ApiError(
                        422,
                        "item_too_long",
                        f"documents[{i}] is {n} tokens; max_tokens_per_doc={limit} (documents "
                        "are not truncated)",
                    )
        scores, usage = await self._submit(enc)
        order = np.argsort(-scores, kind="stable")[: req.top_n or None]
        fields = dict(
            id=f"rerank-{uuid.uuid4().hex}",
            model=self.name,
            results=[
                RerankResult(
                    index=int(i),
                    relevance_score=float(scores[i]),
                    document=RerankDocument(text=docs[i]) if req.return_documents else None,
                )
                for i in order
            ],
            usage=RerankUsage(prompt_tokens=usage.prompt_tokens, total_tokens=usage.prompt_tokens),
        )
        if isinstance(req, RerankV2Request):
            return RerankV2Response(**fields, meta=RerankMeta(billed_units={"search_units": 1}))
        return RerankResponse(**fields)

    def models(self) -> ModelList:
        m = self.model
        return ModelList(
            data=[
                ModelCard(
                    id=self.name,
                    format=m.info.format if m else "loading",
                    engine=self.engine.name,
                    kernel=m.kernel if m else "",
                    kernel_reason=m.kernel_reason if m else "",
                    parameters=m.info.params if m else None,
                    max_items=self.settings.max_items,
                    label_tokens=[m.task.yes, m.task.no] if m else [],
                )
            ]
        )

    # ---- shared by the dialects --------------------------------------------------------------
    def _check_model(self, model: str | None) -> None:
        if model is not None and model != self.name:
            raise ApiError(
                404,
                "model_not_found",
                f"model {model!r} is not served here (serving {self.name!r})",
            )

    def _check_token_id(self, token: int, where: str) -> None:
        vocab = self.model.vocab_size
        if token < 0 or (vocab is not None and token >= vocab):
            raise ApiError(
                422,
                "invalid_token_id",
                f"{where} = {token} is not a token id of this model (valid: 0..{vocab - 1})"
                if vocab is not None
                else f"{where} = {token} is negative",
            )

    def _check_item_count(self, n: int, field: str = "items") -> None:
        if n > self.settings.max_items:
            raise ApiError(
                422,
                "too_many_items",
                f"{n} {field}; the limit is max_items={self.settings.max_items}",
            )

    def _check_lengths(
        self, q_ids: list[int], i_ids: list[list[int]], field: str = "items"
    ) -> None:
        s = self.settings
        if len(q_ids) > s.max_query_tokens:
            raise ApiError(
                422,
                "query_too_long",
                f"query is {len(q_ids)} tokens; the limit is max_query_tokens={s.max_query_tokens}",
            )
        for i, ids in enumerate(i_ids):
            if len(ids) > s.max_item_tokens:
                raise ApiError(
                    422,
                    "item_too_long",
                    f"{field}[{i}] is {len(ids)} tokens with the question; the limit is "
                    f"max_item_tokens={s.max_item_tokens}",
                )

    def encode(
        self,
        query: str,
        items: list[str],
        model: str | None,
        instruction: str | None = None,
        field: str = "items",
    ) -> EncodedRequest:
        """Checks readiness, the model name and the limits; tokenizes with the model's prompt
        template. Nothing is truncated: over a limit is a 422 naming it (``field``: the
        dialect's name for the items)."""
        self.check_ready()
        m = self.model
        self._check_model(model)
        self._check_item_count(len(items), field)
        for i, it in enumerate(items):
            if not it:
                raise ApiError(422, "invalid_request", f"{field}[{i}] is empty")
        if instruction is not None and not getattr(m.task, "has_instruction", False):
            raise ApiError(
                422,
                "invalid_request",
                "instruction: this model's prompt template has no {instruction} placeholder",
            )
        q_ids = self.query_tokens.get(
            query, lambda q: m.task.encode_query(m.tokenizer, q, instruction), instruction
        )
        i_ids = self.item_tokens.get_many(items, lambda t: m.task.encode_items(m.tokenizer, t))
        self._check_lengths(q_ids, i_ids, field)
        return EncodedRequest(q_ids, i_ids)

    def encode_ids(
        self, query: list[int], items: list[list[int]], model: str | None
    ) -> EncodedRequest:
        """A prompt given as token ids (SGLang's /v1/score): used as given, query + item, after
        the same checks; every id must be in the model's vocabulary."""
        self.check_ready()
        self._check_model(model)
        self._check_item_count(len(items))
        self._check_lengths(query, items)
        for i, t in enumerate(query):
            self._check_token_id(t, f"query[{i}]")
        for i, ids in enumerate(items):
            for j, t in enumerate(ids):
                self._check_token_id(t, f"items[{i}][{j}]")
        return EncodedRequest(list(query), [list(x) for x in items])

    async def _submit(self, enc: EncodedRequest) -> tuple[np.ndarray, Usage]:
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
