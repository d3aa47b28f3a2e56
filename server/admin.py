"""The admin API: load and unload model versions, move labels (``/admin/...``).

Off unless ``--admin-api-key`` is set; every call needs ``Authorization: Bearer <admin key>``
(client keys do not open it, and the admin key opens nothing else). A wrong or missing key is
a 401 and changes nothing. Calls run one at a time (the model set's lock); a load answers once
the version is ready or has failed, so a script can move a label right after it.
"""

from __future__ import annotations

import logging

from fastapi import APIRouter, Depends, Request

from ranking.manifest import ManifestMissing, verify_manifest
from server.engines import check_supported
from server.errors import ERROR_RESPONSES, ApiError
from server.memory import check_fits
from server.middleware import ADMIN_PREFIX, bearer_matches
from server.models_file import ModelEntry, Route
from server.protocol import ModelCard, ModelList
from server.service import RankingService

ADMIN_TAG = "admin"
log = logging.getLogger("slimrank.server")


def _service(request: Request) -> RankingService:
    return request.app.state.service


def admin_router(admin_key: str) -> APIRouter:
    keys = [admin_key.encode()]

    def authorized(request: Request) -> None:
        if not bearer_matches(request.scope.get("headers") or [], keys):
            raise ApiError(
                401,
                "unauthorized",
                "missing or invalid admin key: send 'Authorization: Bearer <admin key>'",
                {"WWW-Authenticate": "Bearer"},
            )

    router = APIRouter(
        prefix=ADMIN_PREFIX.rstrip("/"),
        tags=[ADMIN_TAG],
        dependencies=[Depends(authorized)],
        responses=ERROR_RESPONSES,
    )

    @router.get("/models", response_model=ModelList)
    async def list_models(request: Request) -> ModelList:
        return _service(request).models()

    @router.post("/models", response_model=ModelCard)
    async def load(entry: ModelEntry, request: Request) -> ModelCard:
        """Loads a version and answers when it is ready (200) or has failed (422 naming why;
        it stays listed as failed, and nothing else changes). Checked first, before any
        weight loads: the format against the engine, the manifest, and the memory it would
        take."""
        service = _service(request)
        spec = service.settings.spec_for(entry)
        try:
            check_supported(entry.path, spec.engine)
            if service.settings.verify_checkpoint:
                try:
                    verify_manifest(entry.path)
                except ManifestMissing as exc:
                    log.warning("%s: checkpoint not verified: %s", entry.key, exc)
            check_fits([(entry.key, spec)], service.settings.max_memory_gb)
        except MemoryError as exc:
            raise ApiError(409, "insufficient_memory", str(exc)) from None
        except Exception as exc:  # noqa: BLE001 - the checkpoint or engine named in the message
            raise ApiError(422, "load_failed", f"{entry.key}: {exc}") from None
        v = await service.model_set.load_version(entry)
        if v.state != "ready":
            raise ApiError(422, "load_failed", f"{entry.key}: {v.error}")
        return service.card(v)

    @router.delete("/models/{key:path}")
    async def unload(key: str, request: Request) -> dict:
        """Unloads ``name:version`` once the requests routed to it have finished; 409 while a
        label still points at it."""
        await _service(request).model_set.unload_version(key)
        return {"unloaded": key}

    @router.put("/labels/{ref:path}")
    async def set_label(ref: str, route: Route, request: Request) -> dict:
        """Points ``name@label`` at one version, weighted arms (``split``) and optionally a
        shadow; 409 unless every version it names is ready. Moving it back is the rollback."""
        name, label = _label_ref(ref)
        await _service(request).model_set.set_label(name, label, route)
        shown = route.model_dump(exclude_none=True)
        if not route.shadow:
            shown.pop("shadow_percent")
        return {"label": ref, "route": shown}

    @router.delete("/labels/{ref:path}")
    async def remove_label(ref: str, request: Request) -> dict:
        name, label = _label_ref(ref)
        await _service(request).model_set.remove_label(name, label)
        return {"removed": ref}

    return router


def _label_ref(ref: str) -> tuple[str, str]:
    name, at, label = ref.partition("@")
    if not at or not name or not label:
        raise ApiError(422, "invalid_request", f"{ref!r}: a label is written name@label")
    return name, label
