"""The finetune stage: an imported, untrained base model trained on the ranking data with LoRA
(merged at the end) becomes a teacher that ranks better than chance and loads everywhere."""

from __future__ import annotations

import json

import pytest

from compression.__main__ import main as compression_main
from compression.stages import STAGES
from compression.stages.finetune import FinetuneConfig
from ranking.evaluation import evaluate_checkpoint


def test_finetune_is_a_registered_stage_with_checked_settings():
    stage = STAGES["finetune"]
    assert isinstance(stage.parse({"steps": 5, "lora_rank": 4}), FinetuneConfig)
    with pytest.raises(ValueError, match="lora_rank"):
        stage.parse({"lora_rank": -1})
    with pytest.raises(ValueError, match="unknown key"):
        stage.parse({"lora_rnk": 4})


@pytest.mark.slow
def test_finetune_with_lora_makes_a_teacher(tiny_demo, tmp_path, capsys):
    from tests.tiny_families import untrained_import

    imported = untrained_import("qwen3", tmp_path)
    out = tmp_path / "teacher"
    rc = compression_main([
        "finetune", "--model", str(imported), "--data", str(tiny_demo / "data"),
        "--out", str(out), "--set", "steps=60", "--set", "lora_rank=8", "--set", "lr=0.005",
        "--set", "lora_targets=[q_proj, v_proj, up_proj, down_proj]",
    ])  # fmt: skip
    assert rc == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert 0 < summary["trainable_params"] < summary["params"] / 2
    keys = json.loads((out / "config.json").read_text())
    assert keys["architectures"] == ["Qwen3ForCausalLM"]  # merged: a plain checkpoint
    assert summary["val_auc"] > 0.55  # an untrained model ranks at chance (0.5)
    # merged LoRA, saved in the input's dtype (fp32 here): the saved model is the trained one
    assert keys["torch_dtype" if "torch_dtype" in keys else "dtype"] == "float32"
    after = evaluate_checkpoint(out, tiny_demo / "data", "validation", bootstrap=0)[0]
    assert after["auc"] == pytest.approx(summary["val_auc"], abs=1e-3)
