"""Teacher outputs stored once: KD from them gives the live teacher's loss (exactly with the
whole vocabulary stored by the torch engine, within vLLM's kernel differences by vLLM), and a
recipe distils from them without loading the teacher."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

import compression.pipeline as pipeline
from compression.losses import token_kd_loss, topk_kd_loss
from compression.recipe import load_recipe
from compression.teacher_outputs import (
    StoredOutputs,
    TeacherOutputsConfig,
    compute_teacher_outputs,
)
from compression.train import RankingObjective
from ranking.checkpoint import load_checkpoint
from ranking.datafolder import read_split
from ranking.dataset import encode_groups


def test_topk_kd_is_the_full_kl_with_the_whole_vocabulary_and_a_lower_bound_below():
    torch.manual_seed(0)
    s, t = torch.randn(6, 50) * 2, torch.randn(6, 50) * 3
    logp = torch.log_softmax(t, dim=-1)
    full = token_kd_loss(s, t)
    vals, ids = logp.topk(50, dim=-1)
    assert topk_kd_loss(s, ids, vals) == pytest.approx(float(full), rel=1e-5)
    for k in (1, 5, 20):
        vals, ids = logp.topk(k, dim=-1)
        assert float(topk_kd_loss(s, ids, vals)) <= float(full) + 1e-6
    assert float(topk_kd_loss(t, *logp.topk(5, dim=-1)[::-1])) == pytest.approx(0, abs=1e-5)


@pytest.fixture(scope="module")
def teacher_and_groups(tiny_demo):
    teacher, tok, task, _ = load_checkpoint(tiny_demo / "teacher", dtype=torch.bfloat16)
    groups = encode_groups(read_split(tiny_demo / "data", "train"), tok, task)
    return teacher, tok, task, groups


def _losses(objectives, student, batch):
    student.train()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        return [float(o(student, batch)) for o in objectives]


def _student(tiny_demo):
    from compression.distill import make_student

    config = load_checkpoint(tiny_demo / "teacher")[0].config
    return make_student(config, {"intermediate_size": 64, "num_hidden_layers": 1}, seed=1)


@pytest.mark.parametrize("top_k", [512, 16])
def test_kd_from_torch_stored_outputs_matches_the_live_teacher(
    tiny_demo, teacher_and_groups, tmp_path, top_k
):
    teacher, tok, task, groups = teacher_and_groups
    cfg = TeacherOutputsConfig(engine="torch", top_k=top_k, max_queries=24, shard_queries=10)
    summary = compute_teacher_outputs(tiny_demo / "teacher", tiny_demo / "data", tmp_path, cfg)
    assert summary["queries"] == 24 and len(summary["shards"]) == 3
    stored = StoredOutputs(tmp_path)
    batch = [g for g in groups if stored.covers(g)][:6]
    assert len(batch) == 6
    common = dict(label_ids=task.label_token_ids(tok), pad_id=tok.pad_token_id or 0,
                  alpha=0.7, temperature=2.0, token_kd_weight=0.5)  # fmt: skip
    live = RankingObjective(teacher=teacher, **common)
    from_disk = RankingObjective(stored=stored, **common)
    answer_only = [RankingObjective(teacher=teacher, **{**common, "token_kd_weight": 0}),
                   RankingObjective(stored=stored, **{**common, "token_kd_weight": 0})]  # fmt: skip
    student = _student(tiny_demo)
    a_live, a_disk = _losses(answer_only, student, batch)
    assert a_disk == pytest.approx(a_live, rel=1e-4)  # answers: exact (log Z cancels)
    l_live, l_disk = _losses([live, from_disk], student, batch)
    print(f"top-{top_k}: live {l_live:.5f} stored {l_disk:.5f}")
    if top_k == 512:  # the whole vocabulary: the same loss
        assert l_disk == pytest.approx(l_live, rel=1e-4)
    else:  # the top-k KL with a tail bounds the full one from below, and is close to it
        assert a_live < l_disk <= l_live + 1e-4
        assert l_disk > a_live + 0.8 * (l_live - a_live)


def test_stored_outputs_for_other_data_are_refused(tiny_demo, teacher_and_groups, tmp_path):
    _, _, _, groups = teacher_and_groups
    cfg = TeacherOutputsConfig(engine="torch", max_queries=4)
    compute_teacher_outputs(tiny_demo / "teacher", tiny_demo / "data", tmp_path, cfg)
    stored = StoredOutputs(tmp_path)
    other = next(g for g in groups if not stored.covers(g))
    with pytest.raises(KeyError, match="no stored teacher outputs"):
        stored.answers([other])
    with pytest.raises(ValueError, match="answers only"):
        stored.topk_rows([other], [(0, -1)])


@pytest.mark.slow
def test_vllm_outputs_agree_with_the_torch_engine(tiny_demo, teacher_and_groups, tmp_path):
    import numpy as np

    _, tok, task, groups = teacher_and_groups
    out = {}
    for engine in ("torch", "vllm"):
        cfg = TeacherOutputsConfig(engine=engine, top_k=8, max_queries=3)
        compute_teacher_outputs(tiny_demo / "teacher", tiny_demo / "data", tmp_path / engine, cfg)
        out[engine] = StoredOutputs(tmp_path / engine)
    batch = [g for g in groups if out["torch"].covers(g)]
    assert all(out["vllm"].covers(g) for g in batch)
    a_t, a_v = (out[e].answers(batch) for e in ("torch", "vllm"))
    p_t, p_v = (torch.softmax(a, dim=-1)[:, 0].numpy() for a in (a_t, a_v))
    print(f"answer: max |P(yes) torch - vllm| {np.abs(p_t - p_v).max():.4f}")
    assert np.abs(p_t - p_v).max() < 0.03  # bf16, two engines' kernels (as serving parity)
    segments = [(r, j) for r in range(len(batch)) for j in range(-1, batch[r].n_items)]
    (i_t, v_t), (i_v, v_v) = (out[e].topk_rows(batch, segments) for e in ("torch", "vllm"))
    assert i_t.shape == i_v.shape
    same_top1 = float((i_t[:, 0] == i_v[:, 0]).float().mean())
    print(f"tokens: {len(i_t)} rows, same top-1 {same_top1:.3f}, "
          f"max |top-1 logprob diff| {float((v_t[:, 0] - v_v[:, 0]).abs().max()):.4f}")  # fmt: skip
    assert same_top1 > 0.95
    common = dict(label_ids=task.label_token_ids(tok), pad_id=tok.pad_token_id or 0,
                  alpha=1.0, token_kd_weight=0.5)  # fmt: skip
    student = _student(tiny_demo)
    l_t, l_v = _losses([RankingObjective(stored=out[e], **common) for e in out], student, batch)
    assert l_v == pytest.approx(l_t, rel=0.02)


@pytest.mark.slow
def test_recipe_distils_from_stored_outputs_without_the_teacher(tiny_demo, tmp_path, monkeypatch):
    import compression.distill as distill_mod

    student = {"intermediate_size": 64, "num_hidden_layers": 1}
    common = {"type": "distill", "from": "teacher", "student": student, "steps": 80,
              "batch_queries": 8, "lr": 3e-3, "warmup_steps": 2, "token_kd_weight": 0.5}  # fmt: skip
    recipe = {
        "teacher": str(tiny_demo / "teacher"),
        "data": str(tiny_demo / "data"),
        "output": str(tmp_path / "run"),
        "evaluation": {"split": "test", "throughput": False},
        "stages": [
            {"name": "outputs", "type": "teacher-outputs", "engine": "torch", "top_k": 16},
            {"name": "from-stored", **common, "teacher_outputs": "outputs"},
            {"name": "live", **common},
        ],
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    loaded = load_recipe(path)
    real_load = distill_mod.load_checkpoint
    loaded_weights = []

    def watch(p, *a, **k):
        loaded_weights.append(str(p))
        return real_load(p, *a, **k)

    monkeypatch.setattr(distill_mod, "load_checkpoint", watch)
    pipeline.run_recipe(loaded)
    # the stored-output stage never loaded the teacher's weights; the live one did
    assert loaded_weights == [str(tiny_demo / "teacher")]
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    rows = {r["name"]: r for r in report["stages"]}
    assert set(rows) == {"teacher", "from-stored", "live"}  # the outputs are not a ranker
    assert rows["from-stored"]["kd_source"] == "stored outputs (outputs, torch)"
    assert rows["live"]["kd_source"] == "the live teacher"
    (outputs,) = report["teacher_outputs"]
    assert outputs["top_k"] == 16 and outputs["bytes"] > 0
    print({n: round(r["auc"], 4) for n, r in rows.items()})
    assert abs(rows["from-stored"]["auc"] - rows["live"]["auc"]) < 0.02
    # a changed outputs stage reruns the stage that reads it
    fp = loaded.fingerprint("from-stored")
    recipe["stages"][0]["top_k"] = 8
    path.write_text(yaml.safe_dump(recipe))
    assert load_recipe(path).fingerprint("from-stored") != fp
    assert load_recipe(path).fingerprint("live") == loaded.fingerprint("live")


def test_recipe_refuses_teacher_outputs_that_are_not_an_earlier_outputs_stage(tmp_path):
    from compression.recipe import RecipeError

    distill = {"name": "d", "type": "distill", "from": "teacher", "teacher_outputs": "outs"}
    for stages in ([distill],  # no such stage
                   [{"name": "outs", "type": "prune", "intermediate_size": 8}, distill]):  # fmt: skip
        path = tmp_path / "r.yaml"
        path.write_text(yaml.safe_dump({"teacher": "t", "data": "d", "output": "o",
                                        "stages": stages}))  # fmt: skip
        with pytest.raises(
            RecipeError, match="'outs' is not an earlier stage of type teacher-outputs"
        ):
            load_recipe(path, check_paths=False)
