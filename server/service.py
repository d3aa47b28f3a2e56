"""The ranking service: everything between a parsed request and its response.

It routes the request to a model version (``server/model_set.py``: labels, A/B arms, the
shadow), applies the request limits, tokenizes with that version's own task
(``ranking.task``), submits to its scheduler (admission, batching, deadlines), offers the
shadow its copy and builds the response of each dialect.
Errors are ``ApiError`` (status + stable type), so the routes stay HTTP-only.
"""

from __future__ import annotations

import logging
import time
import uuid
from contextlib import contextmanager
from dataclasses import replace

import numpy as np

from ranking.request import EncodedRequest
from server.errors import ApiError
from server.metrics import ServerMetrics
from server.middleware import note_access
from server.model_set import ModelSet, ModelVersion, Routed
from server.protocol import (
    LabelCard,
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
from server.request_ids import current_id
from server.scheduler import DeadlineExceeded, Overloaded, ShuttingDown
from server.settings import ServerSettings
from server.shadow import DEFAULT_K, ShadowCopy, ShadowMirror

log = logging.getLogger("slimrank.server")


def ranking_order(raw: np.ndarray) -> np.ndarray:
    """Items by the model's own score, best first, ties in request order. A calibrator is
    monotone, so this is the order of the calibrated scores, with the raw score breaking the
    ties a calibrator's flat ends make."""
    return np.argsort(-raw, kind="stable")


class RankingService:
    """Lifecycle: ``start()`` (schedulers, shadow worker) -> ``load()`` (every version of the
    models file, warmed up; ready after) -> requests ... -> ``stop()`` (drain: no new
    requests, queued and running ones finish)."""

    def __init__(self, settings: ServerSettings, model_set: ModelSet, metrics: ServerMetrics):
        self.settings, self.model_set, self.metrics = settings, model_set, metrics
        self.shadows = ShadowMirror(
            metrics, settings.shadow_queue, settings.request_timeout_s, model_set.idle
        )
        self.ready = False
        self.draining = False
        self.load_error: str | None = None

    # ---- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        self.shadows.start()

    async def load(self) -> bool:
        """Loads the versions of the models file one after another (each one's memory is
        measured alone); False (with ``load_error`` set) if one failed."""
        for v in list(self.model_set.versions.values()):
            if not await self.model_set.load(v):
                self.load_error = f"{v.key}: {v.error}"
                return False
        self.ready = True
        self.metrics.ready.set(0 if self.draining else 1)
        return True

    async def stop(self) -> None:
        await self.shadows.stop()
        await self.model_set.stop()

    def begin_drain(self) -> None:
        """First SIGTERM: /ready turns 503 and new requests get 503 ``shutting_down``; admitted
        ones finish (``server/lifecycle.py`` shuts the server down after the drain window)."""
        self.draining = True
        self.metrics.ready.set(0)
        for v in self.model_set.versions.values():
            v.scheduler.stop_admitting()
        log.info("draining: new requests get 503, admitted ones finish")

    def engine_dead(self) -> ApiError | None:
        """A version's engine died after loading (e.g. vLLM's engine-core process is gone)."""
        for v in self.model_set.versions.values():
            if v.state == "ready" and not v.engine.is_alive():
                return ApiError(
                    503,
                    "engine_unavailable",
                    f"the scoring engine of {v.key} is not running; restart the server",
                )
        return None

    def check_alive(self) -> None:
        dead = self.engine_dead()
        if dead is not None:
            for x in self.model_set.versions.values():
                if x.state == "ready" and not x.engine.is_alive():
                    x.scheduler.fail_all(dead)
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
        routed = self.model_set.resolve(None)
        return {"status": "ready", "model": routed.version.name, "version": routed.version.version}

    @contextmanager
    def routed(self, ref: str | None, key: str | None):
        """Resolves a request's model (after the readiness checks) and counts it as routed to
        that version until the block ends, so that unloading the version waits for it. The
        access log line and the response header name the version."""
        self.check_ready()
        r = self.model_set.resolve(ref, key)
        v = r.version
        note_access(model=v.name, version=v.version)
        v.active += 1
        try:
            yield r
        finally:
            v.active -= 1

    # ---- the dialects ------------------------------------------------------------------------
    async def rank(self, req: RankRequest, key: str | None = None) -> RankResponse:
        with self.routed(req.model, key or req.user) as r:
            v = r.version

            def encode(x: ModelVersion) -> EncodedRequest:
                return self.encode(x, req.query, req.items, req.instruction)

            raw, usage = await self._submit(v, encode(v))
            scores = v.calibrate(raw)
            self._mirror(r, encode, scores, req.top_k)
        order = ranking_order(raw)[: req.top_k]
        return RankResponse(
            model=v.name,
            version=v.version,
            request_id=current_id() or "",
            results=[
                RankResult(index=int(i), score=float(scores[i]), score_raw=float(raw[i]))
                for i in order
            ],
            usage=usage,
        )

    async def score(self, req: ScoreRequest, key: str | None = None) -> ScoreResponse:
        """SGLang's scoring: a probability per item per asked label id. The engines compute
        only the asked rows of the LM head, and the full-vocabulary normaliser only for
        ``apply_softmax=false``. Not shadowed: its label ids belong to one tokenizer."""
        if req.item_first:
            raise ApiError(
                422,
                "unsupported",
                "item_first=true is not supported: the query is the shared prefix",
            )
        with self.routed(req.model, key or req.user) as r:
            v = r.version
            m = v.model
            wanted = tuple(req.label_token_ids or m.label_ids)
            for i, t in enumerate(wanted):
                self._check_token_id(v, t, f"label_token_ids[{i}]")
            if not m.any_label_ids and (
                not req.apply_softmax or sorted(wanted) != sorted(m.label_ids)
            ):
                raise ApiError(
                    422,
                    "unsupported",
                    f"label_token_ids {list(wanted)} with apply_softmax={req.apply_softmax}: "
                    f"this engine scores with a classifier head and answers only the model's "
                    f"label tokens {list(m.label_ids)} with apply_softmax=true (serve with "
                    "--vllm-scoring logprobs for any label ids)",
                )
            items = [req.items] if isinstance(req.items, str) else req.items
            if isinstance(req.query, str):
                if any(not isinstance(it, str) for it in items):
                    raise ApiError(
                        422,
                        "invalid_request",
                        "items: token ids with a text query; send both as text or both as "
                        "token ids",
                    )
                enc = self.encode(v, req.query, items, req.instruction)
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
                enc = self.encode_ids(v, req.query, items)
            enc = replace(enc, label_ids=wanted, full_vocab=not req.apply_softmax)
            scores, usage = await self._submit(v, enc)
        rows = [[float(p) for p in row] for row in scores]
        return ScoreResponse(scores=rows, model=v.name, request_id=current_id() or "", usage=usage)

    async def rerank(self, req: RerankRequest, key: str | None = None) -> RerankResponse:
        docs = req.texts()
        with self.routed(req.model, key or req.user) as r:
            v = r.version

            def encode(x: ModelVersion) -> EncodedRequest:
                return self.encode(x, req.query, docs, req.instruction, field="documents")

            enc = encode(v)
            limit = getattr(req, "max_tokens_per_doc", None)
            if limit is not None:
                for i, d in enumerate(docs):
                    n = len(v.model.tokenizer.encode(d, add_special_tokens=False))
                    if n > limit:
                        raise ApiError(
                            422,
                            "item_too_long",
                            f"documents[{i}] is {n} tokens; max_tokens_per_doc={limit} "
                            "(documents are not truncated)",
                        )
            raw, usage = await self._submit(v, enc)
            scores = v.calibrate(raw)
            self._mirror(r, encode, scores, req.top_n or None)
        order = ranking_order(raw)[: req.top_n or None]
        fields = dict(
            id=current_id() or uuid.uuid4().hex,
            model=v.name,
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

    def _mirror(self, r: Routed, encode, scores: np.ndarray, top_k: int | None) -> None:
        """The shadow's copy of this request, if its label mirrors it (never waits)."""
        if r.shadow is not None:
            k = top_k or DEFAULT_K
            copy = ShadowCopy(r.version, r.shadow, encode, scores, k, current_id() or "")
            self.shadows.offer(copy)

    def card(self, v: ModelVersion) -> ModelCard:
        m = v.model
        return ModelCard(
            id=v.key,
            name=v.name,
            version=v.version,
            state=v.state,
            error=v.error,
            labels=self.model_set.labels_of(v),
            format=m.info.format if m else v.state,
            engine=v.engine.name,
            kernel=m.kernel if m else "",
            kernel_reason=m.kernel_reason if m else "",
            parameters=m.info.params if m else None,
            memory_bytes=v.memory_bytes,
            load_seconds=round(v.load_seconds, 2) if v.load_seconds else None,
            max_items=self.settings.max_items,
            label_tokens=[m.task.yes, m.task.no] if m else [],
            calibrator=v.calibrator.method if v.calibrator else None,
            score_reference=v.drift is not None and v.drift.reference is not None,
        )

    def models(self) -> ModelList:
        """Every version with its state and labels, every label and the default."""
        ms = self.model_set
        cards = [self.card(v) for v in ms.versions.values()]
        labels = [
            LabelCard(
                model=name,
                label=label,
                arms=route.arms,
                shadow=route.shadow,
                shadow_percent=route.shadow_percent if route.shadow else None,
            )
            for name, by_label in ms.labels.items()
            for label, route in by_label.items()
        ]
        return ModelList(data=cards, labels=labels, default=ms.default_ref)

    # ---- shared by the dialects --------------------------------------------------------------
    @staticmethod
    def _check_token_id(v: ModelVersion, token: int, where: str) -> None:
        vocab = v.model.vocab_size
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
        v: ModelVersion,
        query: str,
        items: list[str],
        instruction: str | None = None,
        field: str = "items",
    ) -> EncodedRequest:
        """Checks the limits and tokenizes with ``v``'s prompt template. Nothing is truncated:
        over a limit is a 422 naming it (``field``: the dialect's name for the items)."""
        t0 = time.perf_counter()
        m = v.model
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
        q_ids = v.query_tokens.get(
            query, lambda q: m.task.encode_query(m.tokenizer, q, instruction), instruction
        )
        i_ids = v.item_tokens.get_many(items, lambda t: m.task.encode_items(m.tokenizer, t))
        self._check_lengths(q_ids, i_ids, field)
        note_access(tokenize_ms=round((time.perf_counter() - t0) * 1000, 2))
        return EncodedRequest(q_ids, i_ids)

    def encode_ids(
        self, v: ModelVersion, query: list[int], items: list[list[int]]
    ) -> EncodedRequest:
        """A prompt given as token ids (SGLang's /v1/score): used as given, query + item, after
        the same checks; every id must be in the model's vocabulary."""
        self._check_item_count(len(items))
        self._check_lengths(query, items)
        for i, t in enumerate(query):
            self._check_token_id(v, t, f"query[{i}]")
        for i, ids in enumerate(items):
            for j, t in enumerate(ids):
                self._check_token_id(v, t, f"items[{i}][{j}]")
        return EncodedRequest(list(query), [list(x) for x in items])

    async def _submit(self, v: ModelVersion, enc: EncodedRequest) -> tuple[np.ndarray, Usage]:
        try:
            scores, timing = await v.scheduler.submit(enc, self.settings.request_timeout_s)
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
            rid = current_id() or uuid.uuid4().hex
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
