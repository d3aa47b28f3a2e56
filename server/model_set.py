"""The model set: every model version the server holds, its labels, and where a request goes.

Below the service and above the schedulers: each version has its own engine, scheduler
(admission, batching) and token caches, so a slow version cannot starve another's queue.
Labels point at versions (one, or weighted arms of an A/B split, plus an optional shadow);
moving a label is one assignment, so a request is routed either before or after it, never
half-way, and requests already routed finish on the version they were routed to.

Rules, after Triton / TF Serving: a label moves only to versions that are ready; a version
that fails to load changes nothing else and keeps its error for ``/v1/models``; unloading
refuses a version a label still points at, and waits for the requests routed to it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import psutil

from ranking.errors import CheckpointError
from ranking.score_calibration import Calibrator, load_calibrator
from ranking.score_drift import load_reference
from server.drift import ScoreDrift
from server.engines import Engine, LoadedModel, ModelSpec
from server.errors import ApiError
from server.metrics import ServerMetrics, VersionMetrics
from server.models_file import (
    STABLE,
    ModelEntry,
    ModelsFile,
    Route,
    check_route,
    parse_ref,
)
from server.routing import choose_arm, shadow_sampled
from server.scheduler import Scheduler
from server.settings import ServerSettings
from server.token_cache import TokenCache

log = logging.getLogger("slimrank.server")

EngineFactory = Callable[[ModelSpec], Engine]


def process_tree_rss() -> int:
    """Resident bytes of this process and its children (vLLM's engine core is a child)."""
    me = psutil.Process(os.getpid())
    total = me.memory_info().rss
    for child in me.children(recursive=True):
        try:
            total += child.memory_info().rss
        except psutil.Error:
            pass
    return total


@dataclass(eq=False)
class ModelVersion:
    """One loaded (or loading, failed, unloading) checkpoint and everything that serves it."""

    entry: ModelEntry
    engine: Engine
    scheduler: Scheduler
    metrics: VersionMetrics
    state: str = "loading"
    model: LoadedModel | None = None
    error: str | None = None
    memory_bytes: int | None = None  # resident memory added while it loaded
    load_seconds: float | None = None
    active: int = 0  # requests (and shadow copies) routed to it and not finished
    calibrator: Calibrator | None = None  # the checkpoint's score calibrator (loaded with it)
    drift: ScoreDrift | None = None  # its returned scores (None: --no-score-monitoring)
    # its own tokenizer's ids: the same member is ranked again within seconds, popular items
    # recur (server/token_cache.py)
    query_tokens: TokenCache = field(default_factory=TokenCache)
    item_tokens: TokenCache = field(default_factory=lambda: TokenCache(max_entries=65536))

    @property
    def name(self) -> str:
        return self.entry.name

    @property
    def version(self) -> str:
        return self.entry.version

    @property
    def key(self) -> str:
        return self.entry.key

    def set_state(self, state: str) -> None:
        self.state = state
        self.metrics.set_state(state)

    def calibrate(self, raw: np.ndarray) -> np.ndarray:
        """The scores a client gets from the model's own: calibrated where the checkpoint has a
        calibrator, and counted in the version's score histogram (drift)."""
        scores = raw if self.calibrator is None else self.calibrator.apply(raw)
        if self.drift is not None:
            self.drift.observe(scores)
        return scores


@dataclass(frozen=True)
class Routed:
    """Where one request goes: the version that answers, the label it came through (None for
    ``name:version``), and the shadow that gets a copy (None: no copy)."""

    version: ModelVersion
    label: str | None
    shadow: ModelVersion | None = None


class ModelSet:
    def __init__(self, settings: ServerSettings, metrics: ServerMetrics, factory: EngineFactory):
        self.settings, self.metrics, self.factory = settings, metrics, factory
        self.versions: dict[str, ModelVersion] = {}  # "name:version" -> version
        self.labels: dict[str, dict[str, Route]] = {}
        self.default_ref = ""
        self._admin = asyncio.Lock()  # loads, unloads and label moves one at a time

    # ---- building ------------------------------------------------------------------------------
    def configure(self, file: ModelsFile) -> list[ModelVersion]:
        """Adds the file's versions (not loaded yet) and its labels."""
        added = [self.add(e) for e in file.models]
        self.default_ref = file.default_ref
        for name, labels in file.labels.items():
            for label, route in labels.items():
                self._put_label(name, label, route)
        return added

    def add(self, entry: ModelEntry) -> ModelVersion:
        s = self.settings
        engine = self.factory(s.spec_for(entry))
        vm = self.metrics.for_version(entry.name, entry.version)
        scheduler = Scheduler(
            engine,
            vm,
            s.max_batch_tokens,
            s.max_wait_ms / 1000,
            s.max_queue_items,
            s.max_expected_latency_ms / 1000,
        )
        v = ModelVersion(entry, engine, scheduler, vm)
        if s.score_monitoring:
            v.drift = ScoreDrift(s.drift_window_s, s.drift_min_scores)
            self.metrics.track_scores(entry.name, entry.version, v.drift)
        v.set_state("loading")
        self.versions[entry.key] = v
        scheduler.start()
        return v

    async def load(self, v: ModelVersion) -> bool:
        """Loads and warms ``v`` up; False (state failed, ``error`` set) if that failed."""
        t0, rss0 = time.perf_counter(), process_tree_rss()
        try:
            v.calibrator = load_calibrator(v.entry.path)  # refused here if fitted elsewhere
            self._load_reference(v)
            model = await v.engine.start()
            await v.engine.warmup(model)
        except Exception as exc:  # noqa: BLE001 - kept for /v1/models, /ready and the log
            v.error = f"{type(exc).__name__}: {exc}"
            v.set_state("failed")
            log.error("%s failed to load: %s", v.key, v.error)
            await self._stop(v)
            return False
        v.model, v.load_seconds = model, time.perf_counter() - t0
        v.memory_bytes = max(0, process_tree_rss() - rss0)
        info = model.info
        v.metrics.set_loaded(info.format, v.engine.name, model.kernel, info.params, v.memory_bytes)
        v.set_state("ready")
        log.info(
            "ready: %s format=%s engine=%s kernel=%s (%s) params=%s memory=%.0fMB "
            "load+warmup=%.1fs",
            v.key,
            info.format,
            v.engine.name,
            model.kernel,
            model.kernel_reason,
            info.params,
            v.memory_bytes / 2**20,
            v.load_seconds,
        )
        return True

    @staticmethod
    def _load_reference(v: ModelVersion) -> None:
        """The checkpoint's score reference for the drift PSI. Monitoring never stops serving:
        a missing or stale reference is logged and the version serves without a PSI."""
        if v.drift is None:
            return
        try:
            v.drift.reference = load_reference(v.entry.path)
        except CheckpointError as exc:
            log.warning("%s: no score drift PSI: %s", v.key, exc)
            return
        if v.drift.reference is None:
            log.info("%s has no score reference: no score drift PSI", v.key)

    async def _stop(self, v: ModelVersion) -> None:
        await v.scheduler.drain(timeout_s=self.settings.request_timeout_s)
        await v.engine.stop()

    async def stop(self) -> None:
        """Shutdown: every version's queued and running requests finish, then its engine stops."""
        await asyncio.gather(*(self._stop(v) for v in self.versions.values()))

    # ---- admin -----------------------------------------------------------------------------
    async def load_version(self, entry: ModelEntry) -> ModelVersion:
        """Admin: adds and loads a version. A ``name:version`` already held is a 409 (a failed
        one may be loaded again); a failed load leaves everything else as it was."""
        async with self._admin:
            old = self.versions.get(entry.key)
            if old is not None and old.state != "failed":
                raise ApiError(
                    409, "conflict", f"{entry.key} is already {old.state}; unload it first"
                )
            if old is not None:
                self._forget(old)
            v = self.add(entry)
            await self.load(v)
            return v

    async def unload_version(self, key: str) -> ModelVersion:
        """Admin: stops serving ``key`` once the requests routed to it have finished. Refused
        while a label (or the default) points at it: move the label first."""
        async with self._admin:
            v = self.get(key)
            users = self._labels_using(v)
            if users:
                raise ApiError(
                    409,
                    "version_in_use",
                    f"{key} is used by {', '.join(users)}: move those labels first",
                )
            v.set_state("unloading")
            deadline = time.perf_counter() + self.settings.request_timeout_s
            while v.active and time.perf_counter() < deadline:
                await asyncio.sleep(0.01)
            await self._stop(v)
            self._forget(v)
            log.info("unloaded %s", key)
            return v

    async def set_label(self, name: str, label: str, route: Route) -> None:
        """Admin: points ``name@label`` at ``route``; every version it names must be ready."""
        async with self._admin:
            versions = {v.version for v in self.versions.values() if v.name == name}
            if not versions:
                raise ApiError(404, "model_not_found", f"model {name!r} is not served here")
            try:
                check_route(name, label, route, versions)
            except ValueError as exc:
                raise ApiError(404, "version_not_found", str(exc)) from None
            for ver in sorted(route.versions()):
                v = self.versions[f"{name}:{ver}"]
                if v.state != "ready":
                    raise ApiError(
                        409,
                        "version_not_ready",
                        f"{v.key} is {v.state}"
                        + (f" ({v.error})" if v.error else "")
                        + ": a label moves only to a ready version",
                    )
            old = self.labels.get(name, {}).get(label)
            self._put_label(name, label, route)
            log.info("label %s@%s: %s -> %s", name, label, _describe(old), _describe(route))

    async def remove_label(self, name: str, label: str) -> None:
        async with self._admin:
            if label not in self.labels.get(name, {}):
                raise ApiError(404, "label_not_found", f"no label {name}@{label}")
            ref = f"{name}@{label}"
            if self.default_ref == ref or (self.default_ref == name and label == STABLE):
                raise ApiError(409, "label_in_use", f"{ref} is the default: it cannot go")
            del self.labels[name][label]
            self._clear_label_gauge(name, label)

    def _put_label(self, name: str, label: str, route: Route) -> None:
        self._clear_label_gauge(name, label)
        self.labels.setdefault(name, {})[label] = route
        total = sum(route.arms.values())
        for ver, w in route.arms.items():
            self.metrics.label_weight.labels(name, label, ver).set(w / total)

    def _clear_label_gauge(self, name: str, label: str) -> None:
        old = self.labels.get(name, {}).get(label)
        for ver in old.arms if old else ():
            try:
                self.metrics.label_weight.remove(name, label, ver)
            except KeyError:
                pass

    def _labels_using(self, v: ModelVersion) -> list[str]:
        users = [
            f"{v.name}@{label}"
            for label, route in self.labels.get(v.name, {}).items()
            if v.version in route.versions()
        ]
        if self.default_ref == v.key:
            users.append("the default")
        return users

    def _forget(self, v: ModelVersion) -> None:
        self.versions.pop(v.key, None)
        self.metrics.remove_version(v.name, v.version)

    # ---- routing -------------------------------------------------------------------------------
    def get(self, key: str) -> ModelVersion:
        v = self.versions.get(key)
        if v is None:
            name = key.partition(":")[0]
            known = sorted(x.version for x in self.versions.values() if x.name == name)
            raise ApiError(
                404,
                "model_not_found",
                f"model version {key!r} is not served here"
                + (f" (versions of {name}: {', '.join(known)})" if known else ""),
            )
        return v

    def resolve(self, ref: str | None, key: str | None = None) -> Routed:
        """The version that answers a request naming ``ref`` (None: the default) with the
        routing key ``key`` (sticky A/B arms and shadow sampling); a 404 names what is
        unknown, a 503 a version that is not ready."""
        name, version, label = parse_ref(ref or self.default_ref)
        if not any(v.name == name for v in self.versions.values()):
            names = sorted({v.name for v in self.versions.values()})
            raise ApiError(
                404,
                "model_not_found",
                f"model {name!r} is not served here (serving {', '.join(names) or 'nothing'})",
            )
        if version is not None:
            return Routed(self._ready(self.get(f"{name}:{version}")), None)
        labels = self.labels.get(name, {})
        if label is None:
            if STABLE in labels:
                label = STABLE
            else:
                mine = [v for v in self.versions.values() if v.name == name]
                if len(mine) == 1:
                    return Routed(self._ready(mine[0]), None)
                raise ApiError(
                    404,
                    "model_not_found",
                    f"model {name!r} has {len(mine)} versions and no {STABLE!r} label: ask for "
                    f"{name}:VERSION or {name}@LABEL",
                )
        route = labels.get(label)
        if route is None:
            raise ApiError(
                404,
                "label_not_found",
                f"no label {name}@{label} (labels of {name}: {', '.join(sorted(labels)) or 'none'})",
            )
        salt = f"{name}@{label}"
        chosen = self._ready(self.get(f"{name}:{choose_arm(route.arms, key, salt)}"))
        shadow = None
        if route.shadow and route.shadow != chosen.version:
            cand = self.versions.get(f"{name}:{route.shadow}")
            if cand is not None and cand.state == "ready":
                if shadow_sampled(route.shadow_percent, key, salt):
                    shadow = cand
        return Routed(chosen, label, shadow)

    def idle(self) -> bool:
        """No version has work queued or running (shadow copies wait for this)."""
        return all(v.scheduler.idle for v in self.versions.values())

    @staticmethod
    def _ready(v: ModelVersion) -> ModelVersion:
        if v.state == "ready":
            return v
        msg = f"{v.key} is {v.state}" + (f": {v.error}" if v.error else "")
        raise ApiError(503, "not_ready", msg, {"Retry-After": "5"})

    def labels_of(self, v: ModelVersion) -> list[str]:
        return sorted(
            label for label, route in self.labels.get(v.name, {}).items() if v.version in route.arms
        )


def _describe(route: Route | None) -> str:
    if route is None:
        return "(none)"
    arms = route.arms
    s = route.version if route.version else ", ".join(f"{v}={w:g}" for v, w in arms.items())
    return s + (f" shadow {route.shadow} {route.shadow_percent:g}%" if route.shadow else "")
