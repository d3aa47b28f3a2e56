"""Stage types are units: a toy ``copy`` stage, registered from this test alone (its class and
one registry entry), parses, is checked with the recipe, runs, and is reused by fingerprint."""

from __future__ import annotations

import copy
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

import compression.pipeline as pipeline
from compression.layout import STAGE_FILE
from compression.recipe import RecipeError, load_recipe
from compression.stages import STAGES, StageContext, StageType


@dataclass
class CopyConfig:
    note: str = ""
    refuse: bool = False  # the check refuses the input (as a bad width would)

    def validate(self) -> None:
        if self.note == "bad":
            raise ValueError("note must not be 'bad'")


class CopyStage(StageType):
    """Writes its input unchanged; counts what it is asked, to show what the recipe does."""

    Config = CopyConfig

    def __init__(self) -> None:
        self.checked: list[int] = []  # the input's number of copies, per check
        self.ran: list[str] = []

    def check(self, cfg: CopyConfig, config):
        if cfg.refuse:
            raise ValueError(f"copy refuses a model of hidden_size {config.hidden_size}")
        self.checked.append(getattr(config, "copies", 0))
        out = copy.deepcopy(config)
        out.copies = self.checked[-1] + 1  # what the next stage's check must receive
        return out

    def run(self, ctx: StageContext, src: Path, dst: Path) -> dict:
        self.ran.append(ctx.name)
        shutil.copytree(src, dst)
        return {"from": str(src), "note": ctx.config.note}


@pytest.fixture
def copy_stage(monkeypatch) -> CopyStage:
    stage = CopyStage()
    monkeypatch.setitem(STAGES, "copy", stage)
    return stage


def recipe_file(tiny_demo, tmp_path: Path, stages: list[dict]) -> Path:
    p = tmp_path / "recipe.yaml"
    raw = {
        "teacher": str(tiny_demo / "teacher"),
        "data": str(tiny_demo / "data"),
        "output": str(tmp_path / "out"),
        "evaluation": {"split": "test", "throughput": False},
        "stages": stages,
    }
    p.write_text(yaml.safe_dump(raw))
    return p


def test_a_registered_stage_type_runs_through_a_recipe(copy_stage, tiny_demo, tmp_path):
    stages = [
        {"name": "copied", "type": "copy", "note": "first"},
        {"name": "copied-again", "type": "copy"},
    ]
    recipe = load_recipe(recipe_file(tiny_demo, tmp_path, stages))
    # the chain is checked before anything runs: each check gets the previous one's output
    assert copy_stage.checked == [0, 1]
    assert copy_stage.ran == []

    result = pipeline.run_recipe(recipe)
    assert copy_stage.ran == ["copied", "copied-again"]
    info = json.loads((recipe.output / "copied" / STAGE_FILE).read_text())
    assert info["type"] == "copy" and info["summary"]["note"] == "first"
    assert info["fingerprint"] == recipe.fingerprint("copied")
    weights = "model.safetensors"
    assert (recipe.output / "copied-again" / weights).read_bytes() == (
        tiny_demo / "teacher" / weights
    ).read_bytes()
    assert [r["name"] for r in result["report"]["stages"]] == ["teacher", "copied", "copied-again"]

    # finished stages are reused; changed settings rerun that stage and everything downstream
    assert pipeline.run_recipe(recipe, report=False)["stage_seconds"] == {}
    stages[1]["note"] = "changed"
    recipe = load_recipe(recipe_file(tiny_demo, tmp_path, stages))
    assert set(pipeline.run_recipe(recipe, report=False)["stage_seconds"]) == {"copied-again"}
    stages[0]["note"] = "changed"
    recipe = load_recipe(recipe_file(tiny_demo, tmp_path, stages))
    result = pipeline.run_recipe(recipe, report=False)
    assert set(result["stage_seconds"]) == {"copied", "copied-again"}


@pytest.mark.parametrize(
    "stage, message",
    [
        ({"note": "bad"}, r"stages\[0\] \(c\): note must not be 'bad'"),
        ({"nots": 1}, r"stages\[0\] \(c\): unknown key\(s\) \['nots'\]; allowed: note, refuse"),
        ({"refuse": True}, "stage c: copy refuses a model of hidden_size"),
    ],
)
def test_a_registered_stage_type_is_checked_with_the_recipe(
    copy_stage, tiny_demo, tmp_path, stage, message
):
    path = recipe_file(tiny_demo, tmp_path, [{"name": "c", "type": "copy", **stage}])
    with pytest.raises(RecipeError, match=message):
        load_recipe(path)
    assert copy_stage.ran == []


def test_unregistered_types_are_refused_naming_the_registered_ones(tiny_demo, tmp_path):
    path = recipe_file(tiny_demo, tmp_path, [{"name": "c", "type": "copy"}])
    with pytest.raises(
        RecipeError, match="unknown stage type 'copy'; choose one of calibrate, distill"
    ):
        load_recipe(path, check_paths=False)
