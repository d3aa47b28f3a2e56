"""The model set in-process (fake engines over ASGI): the models file and its errors, routing
(name, name:version, name@label), sticky A/B arms, the admin API (keys, load, unload, label
moves, a failed load), a label swap under load, shadow scoring and per-version metrics. The
same with real checkpoints over real HTTP: ``test_rollout.py``."""

from __future__ import annotations

import asyncio
from collections import Counter

import httpx
import numpy as np
import pytest

from server.app import create_app
from server.models_file import ModelsFileError, load_models_file
from server.routing import choose_arm
from server.settings import ServerSettings
from server.shadow import agreement
from tests.fake_engine import FakeEngine
from tests.serving import metric_value
from tests.test_service import ITEMS, QUERY, metrics_text, wait_until

ADMIN = "admin-secret"
AUTH = {"Authorization": f"Bearer {ADMIN}"}
FILE = """
default: ranker
models:
  - {name: ranker, version: teacher, path: teacher-dir}
  - {name: ranker, version: int8, path: int8-dir}
  - {name: ranker, version: int4, path: int4-dir}
labels:
  ranker:
    stable: teacher
    canary: int8
    ab:
      split: {teacher: 70, int8: 30}
    mirror:
      version: teacher
      shadow: int8
      shadow_percent: 100
"""


def write(tmp_path, text: str = FILE):
    p = tmp_path / "models.yaml"
    p.write_text(text)
    return p


def app_for(tmp_path, text: str = FILE, delays: dict[str, float] | None = None, **settings):
    """An app serving the file with fake engines; ``delays``: per checkpoint path, seconds a
    batch takes. Returns (app, engines by path)."""
    engines: dict[str, FakeEngine] = {}

    def factory(spec):
        engines[spec.path] = FakeEngine(spec, delay_s=(delays or {}).get(spec.path, 0.0))
        return engines[spec.path]

    s = ServerSettings(models=str(write(tmp_path, text)), **settings)
    return create_app(s, factory), engines


class serving:
    """The app's lifespan and an ASGI client, as ``tests.test_service.serving`` but for a
    set (every version ready)."""

    def __init__(self, app):
        self.app = app

    async def __aenter__(self) -> httpx.AsyncClient:
        self._life = self.app.router.lifespan_context(self.app)
        await self._life.__aenter__()
        await wait_until(lambda: self.app.state.service.ready)
        self._client = httpx.AsyncClient(
            transport=httpx.ASGITransport(self.app), base_url="http://test"
        )
        return self._client

    async def __aexit__(self, *exc):
        await self._client.aclose()
        await self._life.__aexit__(*exc)


async def rank(c, model: str | None = None, **extra) -> httpx.Response:
    body = {"query": QUERY, "items": ITEMS} | ({"model": model} if model else {}) | extra
    return await c.post("/v1/rank", json=body)


def answered(r: httpx.Response) -> str:
    return r.headers["x-model-version"]


# ---- the models file ---------------------------------------------------------------------------
BAD_FILES = [
    (FILE.replace("version: int8, path", "version: teacher, path"), "ranker:teacher appears twice"),
    (FILE.replace("path: int4-dir}", "path: int4-dir, engine: tensorrt}"), "engine"),
    (FILE.replace("teacher: 70", "teacher: -70"), "weight of 'teacher' is negative"),
    (FILE.replace("teacher: 70, int8: 30", "teacher: 0, int8: 0"), "the weights sum to 0"),
    (FILE.replace("canary: int8", "canary: int9"), "ranker@canary points at ranker:int9"),
    (FILE.replace("default: ranker", "default: ranker@nope"), "not a label"),
    (FILE.replace("  ranker:\n    stable", "  other:\n    stable"), "'other' is not a model name"),
    ("models: []", "models"),
    ("models: [{name: 'a:b', version: '1', path: x}]", "name"),
    ("{not yaml", "not valid YAML"),
]


@pytest.mark.parametrize(("text", "needle"), BAD_FILES)
def test_bad_models_files_name_the_problem(tmp_path, text, needle):
    with pytest.raises(ModelsFileError, match="models file") as exc:
        load_models_file(write(tmp_path, text))
    assert needle in str(exc.value)


def test_cli_refuses_a_bad_models_file_before_the_port_opens(tmp_path, capsys):
    from server.__main__ import main

    bad = write(tmp_path, FILE.replace("canary: int8", "canary: int9"))
    assert main(["--models", str(bad)]) == 2
    assert "ranker@canary points at ranker:int9" in capsys.readouterr().err


def test_cli_refuses_a_set_that_does_not_fit_in_memory(tiny_demo, tmp_path, capsys):
    from server.__main__ import main

    teacher = tiny_demo / "teacher"
    text = f"models:\n  - {{name: r, version: a, path: {teacher}}}\n"
    text += f"  - {{name: r, version: b, path: {teacher}}}\nlabels: {{r: {{stable: a}}}}\n"
    assert main(["--models", str(write(tmp_path, text)), "--max-memory-gb", "0.01"]) == 2
    err = capsys.readouterr().err
    assert "more than the 0.01 GB of --max-memory-gb" in err and "r:a" in err and "r:b" in err


# ---- routing -----------------------------------------------------------------------------------
async def test_requests_reach_the_version_they_name(tmp_path):
    app, _ = app_for(tmp_path)
    async with serving(app) as c:
        assert answered(await rank(c)) == "ranker:teacher"  # default -> ranker -> stable
        assert answered(await rank(c, "ranker")) == "ranker:teacher"
        assert answered(await rank(c, "ranker@canary")) == "ranker:int8"
        r = await rank(c, "ranker:int4")
        assert answered(r) == "ranker:int4" and r.json()["version"] == "int4"
        assert r.json()["model"] == "ranker"
        for ref, status, kind, needle in [
            ("ranker:int9", 404, "model_not_found", "versions of ranker: int4, int8, teacher"),
            ("ranker@nope", 404, "label_not_found", "labels of ranker: ab, canary, mirror"),
            ("other", 404, "model_not_found", "serving ranker"),
        ]:
            r = await rank(c, ref)
            assert r.status_code == status, ref
            err = r.json()["error"]
            assert err["type"] == kind and needle in err["message"], err
        listing = (await c.get("/v1/models")).json()
        cards = {m["id"]: m for m in listing["data"]}
        assert set(cards) == {"ranker:teacher", "ranker:int8", "ranker:int4"}
        assert cards["ranker:teacher"]["labels"] == ["ab", "mirror", "stable"]
        assert all(m["state"] == "ready" for m in cards.values())
        assert listing["default"] == "ranker"


def test_split_shares_within_one_point_of_the_weights_and_sticky():
    arms = {"teacher": 90.0, "int8": 10.0}
    keys = [f"member-{i}" for i in range(10_000)]
    first = [choose_arm(arms, k, "ranker@ab") for k in keys]
    share = Counter(first)
    assert abs(share["int8"] / len(keys) - 0.10) < 0.01, share
    assert abs(share["teacher"] / len(keys) - 0.90) < 0.01, share
    # a key never changes arm while the weights stay (and the salt, the label, stays)
    assert [choose_arm(dict(arms), k, "ranker@ab") for k in keys] == first
    # any weights: each arm's share is binomial around its weight (sd 0.46 points at 30%)
    three = {"a": 50.0, "b": 30.0, "c": 20.0}
    share3 = Counter(choose_arm(three, k, "x@y") for k in keys)
    for arm, w in three.items():
        p = w / 100
        assert abs(share3[arm] / len(keys) - p) < 4 * (p * (1 - p) / len(keys)) ** 0.5, share3
    # another experiment (label) reshuffles the members: arms are independent across labels
    other = [choose_arm(arms, k, "ranker@other") for k in keys]
    assert 0.75 < np.mean([a == b for a, b in zip(first, other, strict=True)]) < 0.9


async def test_a_member_keeps_one_arm_through_the_server(tmp_path):
    app, _ = app_for(tmp_path)
    async with serving(app) as c:
        seen: dict[str, set[str]] = {}
        for i in range(40):
            member = f"m{i % 10}"
            if i % 2:  # the header or the body's user field: the same key
                r = await rank(c, "ranker@ab", user=member)
            else:
                r = await c.post(
                    "/v1/rerank",
                    json={"query": QUERY, "documents": ITEMS, "model": "ranker@ab"},
                    headers={"x-routing-key": member},
                )
            assert r.status_code == 200
            seen.setdefault(member, set()).add(answered(r))
        assert all(len(v) == 1 for v in seen.values()), seen
        assert {x for v in seen.values() for x in v} == {"ranker:teacher", "ranker:int8"}


# ---- the admin API -----------------------------------------------------------------------------
async def test_admin_api_is_off_without_its_key(tmp_path):
    app, _ = app_for(tmp_path)
    async with serving(app) as c:
        r = await c.put("/admin/labels/ranker@stable", json={"version": "int8"}, headers=AUTH)
        assert r.status_code == 404


async def test_admin_api_refuses_a_wrong_key_and_changes_nothing(tmp_path):
    app, _ = app_for(tmp_path, admin_api_key=ADMIN, api_keys=["client-key"])
    async with serving(app) as c:
        client = {"Authorization": "Bearer client-key"}
        for headers in ({}, {"Authorization": "Bearer wrong"}, client):
            r = await c.put(
                "/admin/labels/ranker@stable", json={"version": "int8"}, headers=headers
            )
            assert r.status_code == 401 and r.json()["error"]["type"] == "unauthorized"
            r = await c.delete("/admin/models/ranker:int4", headers=headers)
            assert r.status_code == 401
        r = await c.post("/v1/rank", json={"query": QUERY, "items": ITEMS}, headers=client)
        assert answered(r) == "ranker:teacher"
        # the admin key opens only the admin API
        assert (await c.post("/v1/rank", json={"query": QUERY, "items": ITEMS}, headers=AUTH)
                ).status_code == 401  # fmt: skip
        assert (await c.get("/admin/models", headers=AUTH)).status_code == 200


async def test_labels_move_only_to_ready_versions_and_back(tmp_path):
    app, _ = app_for(tmp_path, admin_api_key=ADMIN)
    async with serving(app) as c:
        r = await c.put("/admin/labels/ranker@stable", json={"version": "int8"}, headers=AUTH)
        assert r.status_code == 200, r.text
        assert answered(await rank(c)) == "ranker:int8"
        r = await c.put("/admin/labels/ranker@stable", json={"version": "nine"}, headers=AUTH)
        assert r.status_code == 404 and "ranker:nine" in r.json()["error"]["message"]
        r = await c.put(
            "/admin/labels/ranker@stable", json={"split": {"teacher": -1, "int8": 2}}, headers=AUTH
        )
        assert r.status_code == 422 and "negative" in r.json()["error"]["message"]
        assert answered(await rank(c)) == "ranker:int8"  # unchanged by the refused moves
        r = await c.put("/admin/labels/ranker@stable", json={"version": "teacher"}, headers=AUTH)
        assert r.status_code == 200 and answered(await rank(c)) == "ranker:teacher"  # rollback
        # a new label, then gone
        r = await c.put("/admin/labels/ranker@exp", json={"version": "int4"}, headers=AUTH)
        assert r.status_code == 200 and answered(await rank(c, "ranker@exp")) == "ranker:int4"
        assert (await c.delete("/admin/labels/ranker@exp", headers=AUTH)).status_code == 200
        assert (await rank(c, "ranker@exp")).status_code == 404
        r = await c.delete("/admin/labels/ranker@stable", headers=AUTH)
        assert r.status_code == 409  # the default goes through it


async def test_unload_refuses_a_labelled_version_and_waits_for_routed_requests(tmp_path):
    app, engines = app_for(tmp_path, delays={"int4-dir": 0.3}, admin_api_key=ADMIN)
    async with serving(app) as c:
        r = await c.delete("/admin/models/ranker:int8", headers=AUTH)
        assert r.status_code == 409 and "ranker@canary" in r.json()["error"]["message"]
        slow = asyncio.create_task(rank(c, "ranker:int4"))
        await wait_until(lambda: engines["int4-dir"].running)
        r = await c.delete("/admin/models/ranker:int4", headers=AUTH)
        assert r.status_code == 200
        assert (await slow).status_code == 200  # routed before the unload: it finished
        assert engines["int4-dir"].stopped
        r = await rank(c, "ranker:int4")
        assert r.status_code == 404
        ids = [m["id"] for m in (await c.get("/v1/models")).json()["data"]]
        assert "ranker:int4" not in ids
        assert 'version="int4"' not in metrics_text(app).split("slimrank_queue_items")[1][:400]


async def test_a_failed_load_changes_nothing_and_says_why(tmp_path, tiny_demo):
    """Loads through the admin API run the real checks and the real engine: a checkpoint
    whose weights cannot load stays listed as failed, and no label can point at it."""
    import shutil

    from server.engines import create_engine

    broken = tmp_path / "broken"
    shutil.copytree(tiny_demo / "teacher", broken)
    (broken / "model.safetensors").write_bytes(b"not safetensors")
    s = ServerSettings(models=str(write(tmp_path)), admin_api_key=ADMIN, verify_checkpoint=False)
    fakes = {}

    def factory(spec):
        if spec.path.endswith("-dir"):
            fakes[spec.path] = FakeEngine(spec)
            return fakes[spec.path]
        return create_engine(spec)

    app = create_app(s, factory)
    async with serving(app) as c:
        entry = {"name": "ranker", "version": "broken", "path": str(broken), "engine": "torch"}
        r = await c.post("/admin/models", json=entry, headers=AUTH)
        assert r.status_code == 422 and r.json()["error"]["type"] == "load_failed"
        assert "ranker:broken" in r.json()["error"]["message"]
        cards = {m["id"]: m for m in (await c.get("/v1/models")).json()["data"]}
        assert cards["ranker:broken"]["state"] == "failed" and cards["ranker:broken"]["error"]
        r = await c.put("/admin/labels/ranker@stable", json={"version": "broken"}, headers=AUTH)
        assert r.status_code == 409 and r.json()["error"]["type"] == "version_not_ready"
        assert answered(await rank(c)) == "ranker:teacher"
        # not a checkpoint at all: refused before anything is added
        r = await c.post("/admin/models", json={**entry, "version": "x", "path": str(tmp_path)},
                         headers=AUTH)  # fmt: skip
        assert r.status_code == 422 and "ranker:x" not in {
            m["id"] for m in (await c.get("/v1/models")).json()["data"]
        }
        # a real checkpoint loads, takes the label, answers
        good = {**entry, "version": "real", "path": str(tiny_demo / "teacher")}
        r = await c.post("/admin/models", json=good, headers=AUTH)
        assert r.status_code == 200, r.text
        card = r.json()
        assert card["state"] == "ready" and card["memory_bytes"] > 0 and card["load_seconds"] > 0
        r = await c.put("/admin/labels/ranker@stable", json={"version": "real"}, headers=AUTH)
        assert r.status_code == 200
        r = await rank(c)
        assert r.status_code == 200 and answered(r) == "ranker:real"
        r = await c.post("/admin/models", json=good, headers=AUTH)
        assert r.status_code == 409  # already loaded


async def test_swapping_the_default_label_under_load_loses_nothing(tmp_path):
    """Requests arrive all the time while the default label goes teacher -> int8 -> teacher:
    every one is answered 200, by one version or the other, none fails."""
    delays = {"teacher-dir": 0.01, "int8-dir": 0.01}
    app, _ = app_for(tmp_path, delays=delays, admin_api_key=ADMIN)
    async with serving(app) as c:
        stop = asyncio.Event()
        results: list[httpx.Response] = []

        async def traffic():
            pending = []
            while not stop.is_set():
                pending.append(asyncio.create_task(rank(c)))
                await asyncio.sleep(0.005)
            results.extend(await asyncio.gather(*pending))

        runner = asyncio.create_task(traffic())
        for target in ("int8", "teacher", "int8", "teacher"):
            await asyncio.sleep(0.1)
            r = await c.put("/admin/labels/ranker@stable", json={"version": target}, headers=AUTH)
            assert r.status_code == 200
        await asyncio.sleep(0.1)
        stop.set()
        await runner
        statuses = Counter(r.status_code for r in results)
        assert statuses == {200: len(results)}, statuses
        by_version = Counter(answered(r) for r in results)
        assert set(by_version) == {"ranker:teacher", "ranker:int8"}, by_version


# ---- shadow scoring ----------------------------------------------------------------------------
def test_agreement_figures():
    p = np.array([0.9, 0.8, 0.1, 0.2])
    diff, overlap = agreement(p, p + 0.1, k=2)
    assert diff == pytest.approx(0.1) and overlap == 1.0
    diff, overlap = agreement(p, p[::-1].copy(), k=2)
    assert diff == pytest.approx(0.7) and overlap == 0.0
    assert agreement(p, p, k=10) == (0.0, 1.0)  # k beyond the items: all of them


async def test_shadow_gets_a_copy_and_its_answer_is_never_returned(tmp_path):
    app, engines = app_for(tmp_path)
    async with serving(app) as c:
        for _ in range(5):
            r = await rank(c, "ranker@mirror")
            assert answered(r) == "ranker:teacher"
        pair = 'model="ranker",primary="teacher",shadow="int8"'
        await wait_until(
            lambda: (
                metric_value(
                    metrics_text(app), "slimrank_shadow_requests_total", pair + ',outcome="scored"'
                )
                == 5
            )  # fmt: skip
        )
        text = metrics_text(app)
        assert metric_value(text, "slimrank_shadow_score_diff_count", pair) == 5
        # the same fake model: no difference, full overlap
        assert metric_value(text, "slimrank_shadow_score_diff_sum", pair) == 0
        assert metric_value(text, "slimrank_shadow_topk_overlap_sum", pair) == 5
        # the primary's own series only count what it answered
        assert metric_value(text, "slimrank_items_scored_total", 'version="teacher"') == 20
        assert metric_value(text, "slimrank_items_scored_total", 'version="int8"') == 20
        requests = [x for x in text.splitlines() if x.startswith("slimrank_requests_total")]
        assert not [x for x in requests if 'version="int8"' in x]  # no request answered by it


async def test_a_full_shadow_queue_drops_copies_and_never_delays_the_primary(tmp_path):
    app, engines = app_for(tmp_path, delays={"int8-dir": 0.5}, shadow_queue=1)
    async with serving(app) as c:
        rs = await asyncio.gather(*(rank(c, "ranker@mirror") for _ in range(6)))
        assert all(r.status_code == 200 and answered(r) == "ranker:teacher" for r in rs)
        text = metrics_text(app)
        pair = 'primary="teacher",shadow="int8"'
        dropped = metric_value(text, "slimrank_shadow_requests_total", pair + ',outcome="dropped"')
        assert dropped >= 4, text  # one in the shadow's engine, one queued, the rest dropped


async def test_every_serving_series_is_per_version(tmp_path):
    app, _ = app_for(tmp_path)
    async with serving(app) as c:
        await rank(c)
        await rank(c, "ranker@canary")
        await rank(c, "ranker@canary")
        text = metrics_text(app)
        for name in ("slimrank_items_scored_total", "slimrank_request_prefill_seconds_count",
                     "slimrank_queue_wait_seconds_count", "slimrank_batch_size_items_count"):  # fmt: skip
            assert metric_value(text, name, 'model="ranker",version="int8"') > 0, name
        two = 'endpoint="/v1/rank",status="200",model="ranker",version="int8"'
        assert metric_value(text, "slimrank_requests_total", two) == 2
        duration = 'endpoint="/v1/rank",model="ranker",version="int8"'
        assert metric_value(text, "slimrank_request_duration_seconds_count", duration) == 2
        assert metric_value(text, "slimrank_model_state", 'version="int4",state="ready"') == 1
        assert metric_value(text, "slimrank_label_weight", 'label="ab",version="int8"') == 0.3
        # refused before a version was chosen: counted with empty model and version
        await rank(c, "ranker:nine")
        text = metrics_text(app)
        assert metric_value(text, "slimrank_requests_total", 'status="404",version=""') == 1
