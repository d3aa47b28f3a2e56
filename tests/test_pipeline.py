"""The compression pipeline end to end on the tiny demo: every stage writes a loadable
checkpoint, the report is complete, runs resume, an interrupted stage leaves nothing that looks
finished, and the compressed students serve with matching scores in both engines."""

from __future__ import annotations

import copy
import json
import shutil

import pytest
import yaml

import compression.pipeline as pipeline
from compression.recipe import load_recipe
from compression.stages import STAGES, StageType
from compression.stages.quantize import QuantizeStage
from compression.train import NonFiniteLoss
from ranking.checkpoint import inspect_checkpoint
from ranking.manifest import verify_manifest

pytestmark = pytest.mark.slow

MAIN = ["distilled", "pruned", "redistilled", "fp8", "int8", "int4"]
ABLATIONS = [
    "distilled-hard",
    "int4-rtn",
    "pruned-gradual",
    "redistilled-gradual",
    "gen-single",
    "gen-two-stage",
]


def tiny_recipe(tiny_demo, out) -> dict:
    student = {"intermediate_size": 128, "num_hidden_layers": 2}
    return {
        "teacher": str(tiny_demo / "teacher"),
        "data": str(tiny_demo / "data"),
        "output": str(out),
        "evaluation": {"split": "test", "throughput_requests": 2},
        "stages": [
            {
                "name": "distilled",
                "type": "distill",
                "student": student,
                "steps": 12,
                "batch_queries": 8,
                "lr": 3e-3,
                "warmup_steps": 2,
                "token_kd_weight": 0.5,
            },
            # tiny widths: head_dim 32 (vLLM-CPU's minimum) and int4 groups of 32 divide them
            {
                "name": "pruned",
                "type": "prune",
                "intermediate_size": 64,
                "heads_per_group": 1,
                "calibration_samples": 16,
            },
            {
                "name": "redistilled",
                "type": "distill",
                "steps": 6,
                "batch_queries": 8,
                "warmup_steps": 2,
            },
            {
                "name": "fp8",
                "type": "quantize",
                "from": "redistilled",
                "scheme": "fp8",
                "num_samples": 16,
            },
            {
                "name": "int8",
                "type": "quantize",
                "from": "redistilled",
                "scheme": "int8",
                "num_samples": 16,
            },
            {
                "name": "int4",
                "type": "quantize",
                "from": "redistilled",
                "scheme": "int4",
                "num_samples": 16,
                "group_size": 32,
            },
        ],
        "ablations": [
            {
                "name": "distilled-hard",
                "type": "distill",
                "from": "teacher",
                "compare_to": "distilled",
                "student": student,
                "steps": 12,
                "batch_queries": 8,
                "alpha": 0.0,
                "warmup_steps": 2,
            },
            {
                "name": "int4-rtn",
                "type": "quantize",
                "from": "redistilled",
                "compare_to": "int4",
                "scheme": "int4-rtn",
                "num_samples": 16,
                "group_size": 32,
            },
            {
                "name": "pruned-gradual",
                "type": "prune",
                "from": "distilled",
                "intermediate_size": 64,
                "heads_per_group": 1,
                "calibration_samples": 16,
                "gradual_steps": 2,
                "distill_steps": 3,
            },
            {
                "name": "redistilled-gradual",
                "type": "distill",
                "from": "pruned-gradual",
                "compare_to": "redistilled",
                "steps": 3,
                "batch_queries": 8,
                "warmup_steps": 1,
            },
            {
                "name": "gen-single",
                "type": "distill-generative",
                "from": "pruned",
                "mode": "single",
                "steps": 4,
                "batch_queries": 4,
                "max_new_tokens": 6,
                "eval_examples": 16,
            },
            {
                "name": "gen-two-stage",
                "type": "distill-generative",
                "from": "pruned",
                "compare_to": "gen-single",
                "mode": "two-stage",
                "steps": 4,
                "batch_queries": 4,
                "max_new_tokens": 6,
                "eval_examples": 16,
            },
        ],
    }


@pytest.fixture(scope="module")
def compressed(tiny_demo, tmp_path_factory):
    out = tmp_path_factory.mktemp("compressed")
    path = out / "recipe.yaml"
    path.write_text(yaml.safe_dump(tiny_recipe(tiny_demo, out / "run")))
    recipe = load_recipe(path)
    result = pipeline.run_recipe(recipe, ablations=True)
    return recipe, result


def test_every_stage_is_a_finished_loadable_checkpoint(compressed):
    recipe, _ = compressed
    formats = {}
    for name in MAIN + ABLATIONS:
        d = recipe.output / name
        assert (d / "stage.json").is_file(), name
        verify_manifest(d)  # every file, stage.json included, as the stage wrote it
        formats[name] = inspect_checkpoint(d).format
    assert formats["fp8"] == "fp8" and formats["int8"] == "int8" and formats["int4"] == "int4"
    assert formats["distilled"] == "bf16" and formats["pruned"] == "bf16"
    assert not list(recipe.output.glob(".*"))  # no temporary folders left behind
    pruned = json.loads((recipe.output / "pruned" / "config.json").read_text())
    assert pruned["intermediate_size"] == 64 and pruned["num_attention_heads"] == 1
    assert pruned["head_dim"] == 32


def test_report_has_every_stage_and_the_ablations(compressed):
    recipe, result = compressed
    report = json.loads((recipe.output / "report.json").read_text())
    names = [r["name"] for r in report["stages"]]
    assert names[0] == "teacher"
    assert set(MAIN) | {"distilled-hard", "int4-rtn", "redistilled-gradual"} <= set(names)
    for r in report["stages"]:
        for key in (
            "name",
            "format",
            "auc",
            "auc_delta",
            "logloss",
            "params",
            "bytes",
            "items_per_s",
            "ece",
            "brier",
            "reliability",
        ):
            assert key in r, (r["name"], key)
        assert 0.0 <= r["auc"] <= 1.0 and r["bytes"] > 0 and r["items_per_s"] > 0
        assert 0.0 <= r["ece"] <= 1.0 and 0.0 <= r["brier"] <= 1.0
        assert sum(r["reliability"]["count"]) > 0
        assert sum(r["profile"]["shares"].values()) == pytest.approx(1.0, abs=1e-6)
    teacher = report["stages"][0]
    assert teacher["auc_delta"] == 0.0
    by = {r["name"]: r for r in report["stages"]}
    assert by["int8"]["bytes"] < by["redistilled"]["bytes"] < teacher["bytes"]
    assert by["int4"]["bytes"] < by["int8"]["bytes"]
    assert report["checks"]["int8_bytes_ratio"] == pytest.approx(
        teacher["bytes"] / by["int8"]["bytes"]
    )
    pairs = {(a["ablation"], a["baseline"]) for a in report["ablations"]}
    assert {
        ("distilled-hard", "distilled"),
        ("int4-rtn", "int4"),
        ("redistilled-gradual", "redistilled"),
        ("gen-two-stage", "gen-single"),
    } <= pairs
    gen = {g["name"]: g for g in report["generative"]}
    assert gen["gen-two-stage"]["mode"] == "two-stage" and gen["gen-single"]["val_kl"] > 0
    assert all(g["val_kl_onpolicy"] > 0 for g in gen.values())
    md = (recipe.output / "report.md").read_text()
    assert "| int8 | int8 |" in md and "## Ablations" in md
    assert "## Where scoring time goes" in md and "| int8 | " in md.split("## Where")[1]
    assert (recipe.output / "report.png").stat().st_size > 10_000


def test_rerun_reuses_every_finished_stage(compressed, monkeypatch):
    recipe, _ = compressed

    class Boom(StageType):
        def __init__(self, real: StageType):
            self.data_splits = real.data_splits  # the fingerprint covers the splits it reads

        def run(self, ctx, src, dst):
            raise AssertionError("a finished stage was run again")

    for kind, real in list(STAGES.items()):
        monkeypatch.setitem(STAGES, kind, Boom(real))
    result = pipeline.run_recipe(recipe, ablations=True, report=False)
    assert result["stage_seconds"] == {}


def test_interrupted_stage_leaves_nothing_that_looks_finished(compressed, tmp_path, monkeypatch):
    recipe = copy.deepcopy(compressed[0])  # the module-scoped fixture stays untouched
    # a copy of the finished run, with the int8 stage and everything after it removed
    out = tmp_path / "run"
    shutil.copytree(recipe.output, out)
    recipe.output = out
    for name in ("int8", "int4"):
        shutil.rmtree(out / name)
    real = STAGES["quantize"]

    class CrashMidway(QuantizeStage):
        def run(self, ctx, src, dst):
            dst.mkdir(parents=True)
            (dst / "config.json").write_text("{}")  # half-written
            raise KeyboardInterrupt

    monkeypatch.setitem(STAGES, "quantize", CrashMidway())
    with pytest.raises(KeyboardInterrupt):
        pipeline.run_recipe(recipe, report=False)
    assert not (out / "int8").exists()
    assert (out / "redistilled" / "stage.json").is_file()  # finished stages are kept

    class Fail(StageType):
        def __init__(self, real: StageType):
            self.data_splits = real.data_splits  # the fingerprint covers the splits it reads

        def run(self, ctx, src, dst):
            raise AssertionError("only the unfinished stages should run")

    monkeypatch.setitem(STAGES, "distill", Fail(STAGES["distill"]))
    monkeypatch.setitem(STAGES, "prune", Fail(STAGES["prune"]))
    monkeypatch.setitem(STAGES, "quantize", real)
    result = pipeline.run_recipe(recipe, report=False)
    assert set(result["stage_seconds"]) == {"int8", "int4"}
    assert inspect_checkpoint(out / "int8").format == "int8"
    assert not list(out.glob(".*"))


def test_non_finite_loss_discards_the_stage_and_keeps_earlier_ones(
    compressed, tmp_path, monkeypatch
):
    recipe = copy.deepcopy(compressed[0])  # the module-scoped fixture stays untouched
    out = tmp_path / "run"
    shutil.copytree(recipe.output, out)
    recipe.output = out
    for name in ("int8", "int4"):
        shutil.rmtree(out / name)

    class NanStage(QuantizeStage):
        def run(self, ctx, src, dst):
            import torch

            from compression.train import TrainConfig, train

            dst.mkdir(parents=True)
            (dst / "config.json").write_text("{}")  # half-written
            model = torch.nn.Linear(2, 1)
            cfg = TrainConfig(steps=3, batch_queries=1, warmup_steps=1)
            train(model, [0, 1], cfg, lambda m, b: m(torch.ones(1, 2)).sum() * float("nan"))

    monkeypatch.setitem(STAGES, "quantize", NanStage())
    with pytest.raises(NonFiniteLoss, match="step 1"):
        pipeline.run_recipe(recipe, report=False)
    assert not (out / "int8").exists() and not list(out.glob(".*"))  # the temp folder is gone
    verify_manifest(out / "redistilled")  # the finished stages are intact


def test_changed_settings_rerun_that_stage_and_everything_downstream(compressed, tmp_path):
    recipe = copy.deepcopy(compressed[0])  # the module-scoped fixture stays untouched
    out = tmp_path / "run"
    shutil.copytree(recipe.output, out)
    recipe.output = out
    stage = recipe.stage("redistilled")  # as if the YAML changed
    stage.spec["steps"] = stage.config.steps = 4
    result = pipeline.run_recipe(recipe, report=False)
    assert set(result["stage_seconds"]) == {"redistilled", "fp8", "int8", "int4"}


def test_compressed_students_serve_with_matching_scores_in_both_engines(compressed, tmp_path):
    """INT8 and INT4 pruned students in the real server: vLLM-CPU vs the torch engine."""
    from compression.verify import verify_serving
    from ranking.support import Machine, unsupported_reason

    recipe, _ = compressed
    ckpts = [recipe.output / "int8", recipe.output / "int4"]
    rows = verify_serving(ckpts, recipe.data, tmp_path, n_queries=2)
    # INT4 on vLLM only where the support table says vLLM has its kernel (not an AVX2-only CPU)
    int4_vllm = "skipped" if unsupported_reason("vllm", "int4", "X", Machine.here()) else "ok"
    assert [(r["checkpoint"], r["engine"], r["status"]) for r in rows] == [
        ("int8", "torch", "ok"),
        ("int8", "vllm", "ok"),
        ("int4", "torch", "ok"),
        ("int4", "vllm", int4_vllm),
    ], rows


def test_quantized_checkpoints_carry_the_expected_compressed_tensors_config(compressed):
    recipe, _ = compressed

    def qconfig(name):
        cfg = json.loads((recipe.output / name / "config.json").read_text())
        q = cfg["quantization_config"]
        assert q["quant_method"] == "compressed-tensors"
        assert "lm_head" in q["ignore"]  # scoring reads two rows of lm_head: never quantized
        (group,) = q["config_groups"].values()
        return q, group

    q, g = qconfig("fp8")
    assert (g["weights"]["type"], g["weights"]["num_bits"]) == ("float", 8)
    assert g["input_activations"]["dynamic"] is True and g["input_activations"]["num_bits"] == 8
    q, g = qconfig("int8")
    assert (g["weights"]["type"], g["weights"]["num_bits"]) == ("int", 8)
    assert g["weights"]["strategy"] == "channel" and g["input_activations"]["num_bits"] == 8
    q, g = qconfig("int4")
    assert (g["weights"]["type"], g["weights"]["num_bits"]) == ("int", 4)
    assert g["weights"]["strategy"] == "group" and g["weights"]["group_size"] == 32
    assert g.get("input_activations") is None  # W4A16
    assert q["format"] == "pack-quantized"
