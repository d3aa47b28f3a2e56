"""The FastAPI app: routes only, and the process lifecycle (load, warm up, drain).

Each route parses its schema (``server/protocol.py``), calls the ranking service
(``server/service.py``: limits, tokenization, scheduling, responses) and returns its answer.
Errors are in ``server/errors.py``, per-request plumbing in ``server/middleware.py``.
"""

from __future__ import annotations

import asyncio
import os
import signal
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.openmetrics import exposition as openmetrics

from server.admin import admin_router
from server.engines import Engine, create_engine
from server.errors import ERROR_RESPONSES, install_error_handlers
from server.metrics import ServerMetrics
from server.middleware import (
    SCORING_TAG,
    ApiKeyAuth,
    BodySizeLimit,
    CloseWhenDraining,
    RequestAccounting,
    cancel_on_disconnect,
)
from server.model_set import EngineFactory, ModelSet
from server.protocol import (
    ErrorResponse,
    ModelList,
    RankRequest,
    RankResponse,
    RerankRequest,
    RerankResponse,
    RerankV2Request,
    RerankV2Response,
    ScoreRequest,
    ScoreResponse,
)
from server.service import RankingService
from server.settings import ServerSettings


def _service(request: Request) -> RankingService:
    return request.app.state.service


def _key(request: Request) -> str | None:
    """The request's A/B routing key header (the body's ``user`` when absent)."""
    return request.headers.get(request.app.state.settings.routing_key_header)


async def _load(service: RankingService, exit_on_error: bool) -> None:
    """Loads the model behind /ready; a model that cannot load ends the process (so that an
    orchestrator restarts it and shows the error) unless ``exit_on_load_error`` is off."""
    if not await service.load() and exit_on_error:
        os.kill(os.getpid(), signal.SIGTERM)


def begin_drain(app: FastAPI) -> None:
    """The first SIGTERM (``server/lifecycle.py``): stop admitting, /ready 503."""
    service = getattr(app.state, "service", None)
    if service is not None:
        service.begin_drain()


def _draining(app: FastAPI) -> bool:
    service = getattr(app.state, "service", None)
    return service is not None and service.draining


def engine_factory(settings: ServerSettings) -> EngineFactory:
    """Builds each version's engine (with ``fault_batches``: wrapped to fail those batches)."""
    return lambda spec: create_engine(spec, tuple(settings.fault_batches))


def create_app(settings: ServerSettings, engine: Engine | EngineFactory | None = None) -> FastAPI:
    """The app for ``settings``. ``engine`` (tests): an engine for the one model, or a factory
    making each version's engine from its spec."""
    metrics = ServerMetrics()
    if engine is None:
        factory = engine_factory(settings)
    elif isinstance(engine, Engine):
        factory = lambda spec: engine  # noqa: E731
    else:
        factory = engine

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        models = ModelSet(settings, metrics, factory)
        models.configure(settings.models_file())
        service = RankingService(settings, models, metrics)
        app.state.service = service
        service.start()
        loader = asyncio.create_task(_load(service, settings.exit_on_load_error))
        yield
        loader.cancel()
        await service.stop()  # after the drain window: requests in flight finish

    app = FastAPI(
        title="slimrank ranking server",
        version="0.1.0",
        description="Scores (query, item) pairs with a compressed ranking LLM: "
        "score = P(yes) / (P(yes) + P(no)).",
        lifespan=lifespan,
    )
    app.state.metrics = metrics
    app.state.settings = settings
    install_error_handlers(app)
    # outermost last: CloseWhenDraining > RequestAccounting > ApiKeyAuth > BodySizeLimit
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    keys = settings.accepted_keys()
    if keys:
        app.add_middleware(ApiKeyAuth, keys=keys, metrics_public=settings.metrics_public)
    app.add_middleware(
        RequestAccounting, metrics=metrics, log_request_text=settings.log_request_text
    )
    app.add_middleware(CloseWhenDraining, draining=lambda: _draining(app))

    @app.post(
        "/v1/rank", response_model=RankResponse, responses=ERROR_RESPONSES, tags=[SCORING_TAG]
    )
    async def rank(body: RankRequest, request: Request) -> RankResponse:
        """Native API: one query, N candidate items -> items sorted by score (best first)."""
        return await cancel_on_disconnect(request, _service(request).rank(body, _key(request)))

    @app.post(
        "/v1/score", response_model=ScoreResponse, responses=ERROR_RESPONSES, tags=[SCORING_TAG]
    )
    async def score(body: ScoreRequest, request: Request) -> ScoreResponse:
        """SGLang-compatible scoring: a probability per item per label token id.

        Query and items as text (templated) or token ids (used as given); any label ids (only
        those rows of the LM head are computed); ``apply_softmax=false`` (the default, as in
        SGLang): probabilities over the whole vocabulary, else over the asked ids."""
        return await cancel_on_disconnect(request, _service(request).score(body, _key(request)))

    @app.post(
        "/v1/rerank", response_model=RerankResponse, responses=ERROR_RESPONSES, tags=[SCORING_TAG]
    )
    async def rerank(body: RerankRequest, request: Request) -> RerankResponse:
        """Cohere v1 / Jina / vLLM-compatible rerank."""
        return await cancel_on_disconnect(request, _service(request).rerank(body, _key(request)))

    @app.post(
        "/v2/rerank", response_model=RerankV2Response, responses=ERROR_RESPONSES, tags=[SCORING_TAG]
    )
    async def rerank_v2(body: RerankV2Request, request: Request) -> RerankV2Response:
        """Cohere v2 (``cohere.ClientV2``) / vLLM v2 rerank."""
        return await cancel_on_disconnect(request, _service(request).rerank(body, _key(request)))

    @app.get("/v1/models", response_model=ModelList, tags=["info"])
    async def models(request: Request) -> ModelList:
        """Every model version with its state, labels, format, engine, memory; every label
        (its arms and shadow) and the default."""
        return _service(request).models()

    if settings.admin_api_key:
        app.include_router(admin_router(settings.admin_api_key))

    @app.get("/health", tags=["info"], responses={503: {"model": ErrorResponse}})
    async def health(request: Request):
        """The process is alive (not necessarily ready); 503 once its engine has died, so that
        an orchestrator restarts it."""
        dead = _service(request).engine_dead()
        if dead is not None:
            raise dead
        return {"status": "ok"}

    @app.get("/ready", tags=["info"], responses={503: {"model": ErrorResponse}})
    async def ready(request: Request):
        """200 once the models file's versions are loaded and warmed up; 503 before (or if
        one failed to load)."""
        return _service(request).readiness()

    @app.get("/metrics", tags=["info"])
    async def prometheus_metrics(request: Request):
        """Prometheus text; OpenMetrics (with the latency histograms' exemplars: request and
        trace ids) when the scraper asks for it, as Prometheus does with exemplar storage on."""
        if "application/openmetrics-text" in request.headers.get("accept", ""):
            body = openmetrics.generate_latest(metrics.registry)
            return Response(body, media_type=openmetrics.CONTENT_TYPE_LATEST)
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app
