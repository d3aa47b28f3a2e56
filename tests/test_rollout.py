"""A model set in a real server process over real HTTP: a vLLM version beside a torch one in
one server (each chosen per entry in the models file), both answering the same request alike,
each metric series per version, and the admin API moving the default label between them."""

from __future__ import annotations

import httpx
import numpy as np
import pytest
import yaml

from tests.serving import ServerProcess, metric_value
from tests.test_service import ITEMS, QUERY

ADMIN = "rollout-admin-key"
TOL = 0.02  # bf16 vLLM against fp32 torch on this CPU


@pytest.fixture(scope="module")
def two_engines(tiny_demo, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("rollout")
    models = tmp / "models.yaml"
    teacher = str(tiny_demo / "teacher")
    models.write_text(
        yaml.safe_dump(
            {
                "default": "ranker@stable",
                "models": [
                    {"name": "ranker", "version": "torch", "path": teacher, "engine": "torch"},
                    {"name": "ranker", "version": "vllm", "path": teacher, "engine": "vllm"},
                ],
                "labels": {"ranker": {"stable": "torch", "canary": "vllm"}},
            }
        )
    )
    with ServerProcess(
        tiny_demo / "teacher", "torch", tmp, env={"SLIMRANK_ADMIN_API_KEY": ADMIN},
        models=str(models), max_expected_latency_ms=60_000,
    ) as srv:  # fmt: skip
        yield srv


def rank(url: str, model: str | None = None) -> httpx.Response:
    body = {"query": QUERY, "items": ITEMS} | ({"model": model} if model else {})
    return httpx.post(url + "/v1/rank", json=body, timeout=60)


def scores(r: httpx.Response) -> np.ndarray:
    out = np.zeros(len(ITEMS))
    for x in r.json()["results"]:
        out[x["index"]] = x["score"]
    return out


@pytest.mark.slow
def test_a_vllm_version_serves_beside_a_torch_version(two_engines):
    url = two_engines.url
    cards = {c["id"]: c for c in httpx.get(url + "/v1/models").json()["data"]}
    assert cards["ranker:torch"]["engine"] == "torch" and cards["ranker:vllm"]["engine"] == "vllm"
    assert all(c["state"] == "ready" and c["memory_bytes"] > 0 for c in cards.values())
    t, v = rank(url), rank(url, "ranker@canary")
    assert t.headers["x-model-version"] == "ranker:torch"
    assert v.headers["x-model-version"] == "ranker:vllm"
    assert np.abs(scores(t) - scores(v)).max() < TOL
    text = httpx.get(url + "/metrics").text
    for version in ("torch", "vllm"):
        labels = f'model="ranker",version="{version}"'
        assert metric_value(text, "slimrank_items_scored_total", labels) >= len(ITEMS)
        assert metric_value(text, "slimrank_model_memory_bytes", labels) > 0


@pytest.mark.slow
def test_admin_moves_the_default_between_engines(two_engines):
    url, auth = two_engines.url, {"Authorization": f"Bearer {ADMIN}"}
    r = httpx.put(url + "/admin/labels/ranker@stable", json={"version": "vllm"}, headers=auth)
    assert r.status_code == 200, r.text
    assert rank(url).headers["x-model-version"] == "ranker:vllm"
    r = httpx.put(url + "/admin/labels/ranker@stable", json={"version": "torch"}, headers=auth)
    assert r.status_code == 200 and rank(url).headers["x-model-version"] == "ranker:torch"
    r = httpx.put(url + "/admin/labels/ranker@stable", json={"version": "vllm"},
                  headers={"Authorization": "Bearer wrong"})  # fmt: skip
    assert r.status_code == 401 and rank(url).headers["x-model-version"] == "ranker:torch"
