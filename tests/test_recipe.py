"""Recipe validation: every malformed recipe fails before any work, naming the problem."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from compression.recipe import RecipeError, load_recipe


def write(tmp_path: Path, recipe: dict) -> Path:
    p = tmp_path / "recipe.yaml"
    p.write_text(yaml.safe_dump(recipe))
    return p


@pytest.fixture
def base(tiny_demo, tmp_path) -> dict:
    return {
        "teacher": str(tiny_demo / "teacher"),
        "data": str(tiny_demo / "data"),
        "output": str(tmp_path / "out"),
        "stages": [
            {
                "name": "distilled",
                "type": "distill",
                "student": {"intermediate_size": 64},
                "steps": 5,
            },
            {"name": "pruned", "type": "prune", "intermediate_size": 32},
            {"name": "int8", "type": "quantize", "scheme": "int8"},
        ],
    }


def test_valid_recipe_parses_with_default_sources(base, tmp_path):
    r = load_recipe(write(tmp_path, base))
    assert [s.name for s in r.stages] == ["distilled", "pruned", "int8"]
    assert [s.source for s in r.stages] == ["teacher", "distilled", "pruned"]
    assert r.stages[0].config.steps == 5
    # fingerprints chain: changing an upstream stage changes everything downstream
    before = {s.name: r.fingerprint(s.name) for s in r.stages}
    base["stages"][0]["steps"] = 6
    r2 = load_recipe(write(tmp_path, base))
    assert all(r2.fingerprint(n) != f for n, f in before.items())


def test_the_shipped_demo_recipe_parses():
    r = load_recipe(Path(__file__).resolve().parents[1] / "recipes/demo.yaml", check_paths=False)
    names = [s.name for s in r.stages if not s.ablation]
    assert names == ["distilled", "pruned", "redistilled", "fp8", "int8", "int4", "int8-calibrated"]
    assert {s.compare_to for s in r.stages if s.ablation} >= {
        "distilled", "redistilled", "int4", "int8-calibrated"
    }  # fmt: skip


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda r: r["stages"].append({"name": "x", "type": "sparsify"}), "unknown stage type"),
        (lambda r: r["stages"][0].update(stepz=3), r"unknown key\(s\) \['stepz'\]"),
        (lambda r: r["stages"][2].update(scheme="int3"), "unknown scheme 'int3'"),
        (lambda r: r["stages"][1].update({"from": "nowhere"}), "not an earlier stage"),
        (lambda r: r["stages"].append({"name": "pruned", "type": "prune"}), "duplicate"),
        (lambda r: r.update(teacher="/does/not/exist"), "does not exist"),
        (lambda r: r.update(data="/does/not/exist"), "does not exist"),
        (lambda r: r.update(extra=1), r"unknown top-level key\(s\) \['extra'\]"),
        (lambda r: r.pop("stages"), "missing 'stages'"),
        (lambda r: r["stages"][0].update(alpha=1.5), "alpha"),
        (
            lambda r: r["stages"][0].update(optimizer="sgd"),
            "unknown optimizer 'sgd': choose one of adamw, muon",
        ),
        (lambda r: r["stages"][0].update(student={"hidden_sise": 8}), "hidden_sise"),
        (lambda r: r["stages"][1].update(intermediate_size=100000), "intermediate"),
        (lambda r: r["stages"][1].update(gradual_steps=0), "gradual_steps must be >= 1"),
        (
            lambda r: r["stages"][1].update(distill_optimizer="sgd"),
            "unknown distill_optimizer 'sgd'",
        ),
        (
            lambda r: r["stages"].append({"name": "p2", "type": "prune"}),
            "stage p2: prune a bf16/fp32 checkpoint, not a quantized one",
        ),
        (lambda r: r.update(ablations=[{"name": "a", "type": "quantize"}]), "must say 'from'"),
        (
            lambda r: r["stages"][2].update(scheme="int4", group_size=48),
            "group_size 48 does not divide hidden_size",
        ),
    ],
)
def test_bad_recipes_fail_before_any_work(base, tmp_path, mutate, message):
    mutate(base)
    with pytest.raises(RecipeError, match=message):
        load_recipe(write(tmp_path, base))
    assert not (tmp_path / "out").exists()


def test_unsupported_architecture_for_the_pruner(base, tiny_demo, tmp_path):
    fake = tmp_path / "gpt2-teacher"
    shutil.copytree(tiny_demo / "teacher", fake)
    cfg = json.loads((fake / "config.json").read_text())
    cfg.update(architectures=["GPT2LMHeadModel"], model_type="gpt2")
    (fake / "config.json").write_text(json.dumps(cfg))
    base["teacher"] = str(fake)
    base["stages"] = [{"name": "pruned", "type": "prune", "intermediate_size": 32}]
    with pytest.raises(RecipeError, match="GPT2LMHeadModel"):
        load_recipe(write(tmp_path, base))


@pytest.mark.slow  # the stage subcommands as subprocesses: about 19 s
def test_stage_commands_run_on_their_own(tiny_demo, tmp_path):
    """`python -m compression prune|quantize ...`: one stage from the command line; bad
    settings fail with exit code 2 and a message, before any work."""
    import subprocess
    import sys

    from ranking.checkpoint import inspect_checkpoint

    def cli(*args):
        return subprocess.run(
            [sys.executable, "-m", "compression", *args], capture_output=True, text=True
        )

    common = ["--model", str(tiny_demo / "teacher"), "--data", str(tiny_demo / "data")]
    r = cli(
        "prune",
        *common,
        "--out",
        str(tmp_path / "p"),
        "--set",
        "intermediate_size=64",
        "--set",
        "calibration_samples=8",
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads((tmp_path / "p" / "config.json").read_text())["intermediate_size"] == 64
    assert inspect_checkpoint(tmp_path / "p").format == "bf16"
    r = cli("prune", *common, "--out", str(tmp_path / "q"), "--set", "intermediate_size=4096")
    assert r.returncode == 2 and "intermediate_size=4096" in r.stderr
    assert not (tmp_path / "q").exists()
    r = cli("quantize", *common, "--out", str(tmp_path / "q"), "--scheme", "int3")
    assert r.returncode == 2 and "unknown scheme 'int3'" in r.stderr


def test_gradual_prune_plan_reaches_the_target_in_equal_steps():
    from compression.stages.prune import gradual_steps

    start = {"intermediate_size": 768, "heads_per_group": 3, "kv_groups": 2}
    target = {"intermediate_size": 384, "heads_per_group": 1, "kv_groups": None, "drop_layers": 3}
    plan = gradual_steps(start, target, 2)
    assert [p["intermediate_size"] for p in plan] == [576, 384]
    assert [p["heads_per_group"] for p in plan] == [2, 1]
    assert all("kv_groups" not in p for p in plan)  # None: left alone
    assert sum(p["drop_layers"] for p in plan) == 3
    one = gradual_steps(start, target, 1)
    assert one == [{"intermediate_size": 384, "heads_per_group": 1, "drop_layers": 3}]
