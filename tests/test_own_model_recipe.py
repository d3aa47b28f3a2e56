"""A team's own model through the whole pipeline: a tiny Qwen3 with a chat template, imported
with the ``qwen3-reranker`` preset, then pruned (OSSCAR), re-distilled from itself and quantized
to INT8 by a recipe, on a data folder in the contract's shape. The INT8 student must serve with
matching scores in both engines and keep the teacher's ranking."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import yaml

import compression.pipeline as pipeline
from compression.importer import import_model
from compression.recipe import load_recipe
from ranking.checkpoint import load_tokenizer_and_task
from tests.tiny_families import ITEMS, QUERIES, build_tiny, relevant

pytestmark = pytest.mark.slow

JOBS = ["nurse", "musician", "teacher", "chef", "pilot"]
TOPICS = ["music", "travel", "cooking", "jazz", "guitar", "France", "Germany"]


def _write_folder(out, seed: int = 0):
    """Train / validation / test splits of (query, item, label) rows: the tiny models' own
    queries and items plus profile-shaped queries, labelled by the toy relevance they learnt."""
    rng = random.Random(seed)
    queries = list(QUERIES)
    while len(queries) < 36:
        a, b = rng.sample(TOPICS, 2)
        q = f"member profile: {rng.choice(JOBS)}, expert level. interests: {a}, {b}."
        if q not in queries:
            queries.append(q)
    rng.shuffle(queries)
    items = ITEMS + [f"item: a video about {t}." for t in TOPICS]
    splits = {"train": queries[:24], "validation": queries[24:30], "test": queries[30:]}
    out.mkdir(parents=True)
    for split, qs in splits.items():
        with open(out / f"{split}.jsonl", "w") as f:
            for qi, q in enumerate(qs):
                for item in rng.sample(items, 8):
                    row = {"query_id": f"{split}-{qi}", "query": q, "item": item,
                           "label": int(relevant(q, item))}  # fmt: skip
                    f.write(json.dumps(row) + "\n")
    return out


@pytest.fixture(scope="module")
def own_model_compressed(tmp_path_factory):
    root = tmp_path_factory.mktemp("own")
    hf = build_tiny("qwen3", root / "hf")
    teacher = import_model(hf, "qwen3-reranker", root / "teacher").out
    data = _write_folder(root / "data")
    recipe = {
        "teacher": str(teacher),
        "data": str(data),
        "output": str(root / "compressed"),
        "evaluation": {"split": "test", "throughput_requests": 2},
        "stages": [
            # tiny widths: head_dim 32 (vLLM-CPU's minimum); half the MLP neurons go
            {"name": "pruned", "type": "prune", "intermediate_size": 64,
             "heads_per_group": 2, "calibration_samples": 16},
            {"name": "redistilled", "type": "distill", "steps": 20, "batch_queries": 8,
             "lr": 1e-3, "warmup_steps": 2, "token_kd_weight": 0.5},
            {"name": "int8", "type": "quantize", "scheme": "int8", "num_samples": 16},
        ],
    }  # fmt: skip
    path = root / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    loaded = load_recipe(path)
    result = pipeline.run_recipe(loaded)
    return loaded, result, teacher


def test_recipe_prunes_distils_and_quantizes_an_imported_qwen3(own_model_compressed):
    recipe, result, teacher = own_model_compressed
    report = json.loads((recipe.output / "report.json").read_text())
    rows = {r["name"]: r for r in report["stages"]}
    assert {"teacher", "pruned", "redistilled", "int8"} <= set(rows), sorted(rows)
    # every stage keeps the imported template: the same prompts, the same label tokens
    _, teacher_task = load_tokenizer_and_task(teacher)
    for name in ("pruned", "redistilled", "int8"):
        _, task = load_tokenizer_and_task(recipe.output / name)
        assert task == teacher_task, name
    cfg = json.loads((recipe.output / "pruned" / "config.json").read_text())
    assert cfg["intermediate_size"] == 64
    assert "quantization_config" in json.loads((recipe.output / "int8" / "config.json").read_text())
    print({n: round(r["auc"], 4) for n, r in rows.items()})
    # the imported model ranks: there is a ranking to keep
    assert rows["teacher"]["auc"] > 0.65, rows
    for name in ("redistilled", "int8"):
        assert np.isfinite(rows[name]["auc"]), rows[name]
        # keeps most of the teacher's ranking (48 test pairs: an AUC step is about 0.002)
        assert rows[name]["auc"] >= rows["teacher"]["auc"] - 0.08, (name, rows)


def test_imported_int8_student_serves_alike_in_both_engines(own_model_compressed, tmp_path):
    from compression.verify import verify_serving

    recipe, _, _ = own_model_compressed
    rows = verify_serving([recipe.output / "int8"], recipe.data, tmp_path, n_queries=2)
    assert [(r["engine"], r["status"]) for r in rows] == [("torch", "ok"), ("vllm", "ok")], rows
