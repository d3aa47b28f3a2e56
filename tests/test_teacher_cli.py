"""A teacher on any data folder (``python -m compression teacher``), and the MovieLens recipe
checked against the shape that command trains."""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict
from pathlib import Path

from transformers import LlamaConfig

from compression.__main__ import main
from compression.recipe import load_recipe
from compression.stages import STAGES
from compression.teacher import PRESETS

ROOT = Path(__file__).resolve().parents[1]


def test_the_movielens_recipe_fits_the_movielens_teacher_shape():
    recipe = load_recipe(ROOT / "recipes/movielens.yaml", check_paths=False)
    names = [s.name for s in recipe.stages]
    assert names == ["distilled", "pruned", "redistilled", "int8", "int4"]
    cfg = PRESETS["movielens"]()
    configs = {"teacher": LlamaConfig(vocab_size=cfg.vocab_size, **asdict(cfg.model))}
    for s in recipe.stages:  # the recipe's own check, on the preset's shape (no checkpoint)
        configs[s.name] = STAGES[s.type].check(s.config, configs[s.source])


def test_a_teacher_trains_on_a_data_folder_and_is_reused_until_its_data_changes(
    tiny_demo, tmp_path, capsys
):
    data = tmp_path / "data"
    shutil.copytree(tiny_demo / "data", data)
    out = tmp_path / "teacher"
    args = ["teacher", "--data", str(data), "--out", str(out), "--preset", "tiny", "--steps", "2"]
    assert main(args) == 0
    capsys.readouterr()
    first = json.loads((out / "training_summary.json").read_text())
    assert not first["reused"] and 0.0 <= first["test"]["auc"] <= 1.0
    assert first["test"]["auc_lo"] <= first["test"]["auc"] <= first["test"]["auc_hi"]
    assert main(args) == 0
    assert "[teacher] reused:" in capsys.readouterr().out
    # the same train split with one label flipped: trained again
    lines = (data / "train.jsonl").read_text().splitlines()
    row = json.loads(lines[0])
    row["label"] = 1 - row["label"]
    (data / "train.jsonl").write_text("\n".join([json.dumps(row), *lines[1:]]) + "\n")
    assert main(args) == 0
    assert "[teacher] trained:" in capsys.readouterr().out


def test_a_folder_without_a_tokenizer_is_refused_by_name(tmp_path, capsys):
    (tmp_path / "data").mkdir()
    args = ["teacher", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "t")]
    assert main(args) == 2
    assert "no tokenizer/ in" in capsys.readouterr().err


def test_the_demo_teacher_starts_tied_with_its_residual_branches_at_zero():
    """The demo preset's init: one embedding table for input and head, and every block's
    o_proj / down_proj at zero (the model starts as embeddings + head); the tiny and MovieLens
    presets keep the untied, default-initialised teacher."""
    import torch

    from compression.teacher import ModelShape, make_teacher_model
    from tests.chat_tokenizer import chat_tokenizer

    tok = chat_tokenizer()
    shape = ModelShape(hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                       num_key_value_heads=1, intermediate_size=128)  # fmt: skip
    assert shape.tie_word_embeddings and shape.zero_init_residual  # the demo's defaults
    model = make_teacher_model(shape, tok)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    for layer in model.model.layers:
        assert not layer.self_attn.o_proj.weight.any() and not layer.mlp.down_proj.weight.any()
        assert layer.mlp.up_proj.weight.std() > 0  # the rest keeps its random init
    ids = torch.tensor([[1, 5, 7]])
    model.eval()
    with torch.no_grad():
        h = model.model(input_ids=ids).last_hidden_state
        e = model.model.norm(model.model.embed_tokens(ids))
    torch.testing.assert_close(h, e)  # identity blocks
    for preset in ("tiny", "movielens"):
        m = PRESETS[preset]().model
        assert not m.tie_word_embeddings and not m.zero_init_residual


def test_a_teacher_learns_from_the_baseline_s_out_of_fold_probabilities(tmp_path, capsys):
    """``--baseline-weight``: the train targets mix labels with LightGBM's out-of-fold
    probabilities; the weight is part of what makes a teacher reusable."""
    from compression.data.movielens import MovieLensConfig, build_movielens
    from tests.ml_mini import write_mini_movielens

    source = write_mini_movielens(tmp_path / "src", n_users=150, per_user=30)
    data = tmp_path / "data"
    cfg = MovieLensConfig(history=5, items_per_query=5, min_history=3, val_share=0.15,
                          test_share=0.2, vocab_size=300)  # fmt: skip
    build_movielens(data, cfg, source=source)
    out = tmp_path / "teacher"
    args = ["teacher", "--data", str(data), "--out", str(out), "--preset", "tiny", "--steps", "2"]
    assert main([*args, "--baseline-weight", "0.5"]) == 0
    assert "0.5 x label + 0.5 x LightGBM out of fold" in capsys.readouterr().out
    summary = json.loads((out / "training_summary.json").read_text())
    assert summary["baseline_targets"]["weight"] == 0.5
    assert summary["baseline_targets"]["folds"] == 5
    assert summary["config"]["baseline_weight"] == 0.5
    assert main(args) == 0  # labels only: another teacher
    assert "[teacher] trained:" in capsys.readouterr().out
    assert "baseline_targets" not in json.loads((out / "training_summary.json").read_text())

    assert main([*args, "--baseline-weight", "1.5"]) == 2
    assert "--baseline-weight must be in [0, 1], got 1.5" in capsys.readouterr().err
