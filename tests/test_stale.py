"""Stale results: stage fingerprints and the report's evaluation cache key on content.

A toy recipe of copy stages (no model, no training) over a toy teacher folder and data folder:
changing a split reruns exactly the stages that read it and their downstream; a teacher
retrained at the same path reruns everything; rewriting the same bytes reruns nothing.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

import compression.pipeline as pipeline
import compression.report as report
from compression.recipe import Recipe, Stage
from compression.stages import STAGES, StageContext, StageType


@dataclass
class NoConfig:
    pass


class CopyReading(StageType):
    """Copies its input; declares which splits it reads (as a real stage reads them)."""

    Config = NoConfig

    def __init__(self, splits: tuple[str, ...], ran: list[str]) -> None:
        self.data_splits = splits
        self.ran = ran

    def run(self, ctx: StageContext, src: Path, dst: Path) -> dict:
        self.ran.append(ctx.name)
        shutil.copytree(src, dst)
        return {}


def write_split(folder: Path, split: str, label: int = 1) -> None:
    rows = [{"query_id": f"{split}-q", "query": "q", "item": "i", "label": label}]
    (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture
def toy(tmp_path, monkeypatch):
    """(recipe, list of stage names run). Stages:
    teacher -> a (reads train) -> b (reads nothing);  teacher -> c (reads nothing) -> d (reads
    validation)."""
    ran: list[str] = []
    monkeypatch.setitem(STAGES, "reads-train", CopyReading(("train",), ran))
    monkeypatch.setitem(STAGES, "reads-val", CopyReading(("validation",), ran))
    monkeypatch.setitem(STAGES, "reads-none", CopyReading((), ran))
    teacher, data = tmp_path / "teacher", tmp_path / "data"
    teacher.mkdir()
    data.mkdir()
    (teacher / "model.safetensors").write_bytes(b"weights v1")
    (teacher / "config.json").write_text("{}")
    for split in ("train", "validation", "test"):
        write_split(data, split)
    stages = [
        Stage("a", "reads-train", "teacher", NoConfig()),
        Stage("b", "reads-none", "a", NoConfig()),
        Stage("c", "reads-none", "teacher", NoConfig()),
        Stage("d", "reads-val", "c", NoConfig()),
    ]
    recipe = Recipe(tmp_path / "r.yaml", teacher, data, tmp_path / "out", stages, {})
    pipeline.run_recipe(recipe, report=False)
    assert ran == ["a", "b", "c", "d"]
    ran.clear()
    return recipe, ran


def rerun(recipe: Recipe, ran: list[str]) -> set[str]:
    ran.clear()
    pipeline.run_recipe(recipe, report=False)
    return set(ran)


def test_unchanged_content_is_reused_even_when_files_are_rewritten(toy):
    recipe, ran = toy
    assert rerun(recipe, ran) == set()
    # the same bytes written again (new mtime), and files the report leaves beside the teacher
    (recipe.teacher / "model.safetensors").write_bytes(b"weights v1")
    write_split(recipe.data, "train")
    (recipe.teacher / "eval-test.json").write_text("{}")
    (recipe.teacher / "learning_curve.png").write_bytes(b"png")
    assert rerun(recipe, ran) == set()


@pytest.mark.parametrize(
    "split, expected",
    [("train", {"a", "b"}), ("validation", {"d"}), ("test", set())],
)
def test_changed_data_reruns_the_stages_that_read_it_and_their_downstream(toy, split, expected):
    recipe, ran = toy
    write_split(recipe.data, split, label=0)
    assert rerun(recipe, ran) == expected
    assert rerun(recipe, ran) == set()


def test_data_moved_to_parquet_with_other_bytes_reruns_its_readers(toy):
    recipe, ran = toy
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa

    (recipe.data / "train.jsonl").unlink()
    pq.write_table(
        pa.Table.from_pylist([{"query_id": "t", "query": "q", "item": "i", "label": 1}]),
        recipe.data / "train.parquet",
    )
    assert rerun(recipe, ran) == {"a", "b"}


def test_a_teacher_retrained_at_the_same_path_reruns_everything(toy):
    recipe, ran = toy
    (recipe.teacher / "model.safetensors").write_bytes(b"weights v2")
    assert rerun(recipe, ran) == {"a", "b", "c", "d"}


def test_the_evaluation_cache_keys_on_weights_and_split_content(tmp_path, monkeypatch):
    ckpt, data = tmp_path / "ckpt", tmp_path / "data"
    ckpt.mkdir()
    data.mkdir()
    (ckpt / "model.safetensors").write_bytes(b"weights v1")
    write_split(data, "test")
    calls: list[int] = []

    class Info:
        format, params = "bf16", 1

    def fake_evaluate(path, data_dir, split):
        calls.append(1)
        return {"auc": 0.5 + len(calls) / 100}, np.zeros(1), Info()

    monkeypatch.setattr(report, "evaluate_checkpoint", fake_evaluate)
    monkeypatch.setattr(report, "checkpoint_bytes", lambda p: 10)
    first = report.quality(ckpt, data, "test")[0]
    assert report.quality(ckpt, data, "test")[0] == first and len(calls) == 1
    # same bytes rewritten: still cached; the cache files themselves do not count
    (ckpt / "model.safetensors").write_bytes(b"weights v1")
    assert report.quality(ckpt, data, "test")[0] == first and len(calls) == 1
    # new weights of the same size (an mtime/size key could miss this within a tick)
    (ckpt / "model.safetensors").write_bytes(b"weights v2")
    assert report.quality(ckpt, data, "test")[0]["auc"] != first["auc"] and len(calls) == 2
    # a rebuilt test split
    write_split(data, "test", label=0)
    report.quality(ckpt, data, "test")
    assert len(calls) == 3
    report.quality(ckpt, data, "test")
    assert len(calls) == 3
