"""A student with tied embeddings, INT4 per channel by QuantEase: the LM head costs no bytes,
the bytes match the projection from the config, and both engines serve it with one score."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.slow


def test_tied_per_channel_quantease_int4_serves_in_both_engines(tiny_demo, tmp_path):
    from compression.footprint import bytes_by_part, projected_bytes
    from compression.quantize import QuantizeConfig, quantize_checkpoint
    from compression.verify import TOLERANCE, verify_serving
    from ranking.checkpoint import load_checkpoint, save_checkpoint
    from ranking.datafolder import read_split
    from ranking.dataset import encode_groups
    from ranking.evaluation import score_groups
    from ranking.scorer import TorchScorer
    from ranking.support import Machine, unsupported_reason

    # the tiny teacher with its head tied to its embeddings (the demo student trains this way)
    model, tok, task, _ = load_checkpoint(tiny_demo / "teacher", dtype=torch.float32)
    model.config.tie_word_embeddings = True
    model.lm_head.weight = model.model.embed_tokens.weight
    tied, int4 = tmp_path / "tied", tmp_path / "int4"
    save_checkpoint(model, tok, task, tied)
    cfg = QuantizeConfig("int4-quantease", num_samples=16, group_size=0)
    quantize_checkpoint(tied, int4, cfg, read_split(tiny_demo / "data", "train"))

    config = json.loads((int4 / "config.json").read_text())
    weights = config["quantization_config"]["config_groups"]["group_0"]["weights"]
    assert (weights["strategy"], weights["group_size"], weights["num_bits"]) == ("channel", None, 4)
    assert config["tie_word_embeddings"] is True
    parts, projected = bytes_by_part(int4), projected_bytes(config, "int4", 0)
    assert parts["lm_head"] == 0
    assert {k: v for k, v in parts.items() if k != "other"} == {
        k: v for k, v in projected.items() if k != "other"
    }
    source = bytes_by_part(tied)
    assert parts["attention"] + parts["mlp"] < (source["attention"] + source["mlp"]) / 3

    # the torch engine: the head is the (bf16) embedding table, scores close to the source's
    groups = encode_groups(read_split(tiny_demo / "data", "test"), tok, task)[:20]
    ref = score_groups(TorchScorer(*load_checkpoint(tied)[:3]), groups)
    m, t, k, _ = load_checkpoint(int4)
    assert m.lm_head.weight.data_ptr() == m.model.embed_tokens.weight.data_ptr()
    assert float(np.abs(score_groups(TorchScorer(m, t, k), groups) - ref).mean()) < 0.02

    # vLLM loads the tied, per-channel checkpoint and scores as the torch engine does, where
    # it has an INT4 kernel (the support table: not on an AVX2-only CPU, which it refuses)
    rows = verify_serving([int4], tiny_demo / "data", tmp_path / "logs", n_queries=2)
    by_engine = {r["engine"]: r for r in rows}
    assert by_engine["torch"]["status"] == "ok", rows
    refused = unsupported_reason("vllm", "int4", "LlamaForCausalLM", Machine.here())
    if refused:
        assert by_engine["vllm"]["status"] == "skipped" and "INT4" in by_engine["vllm"]["reason"]
        pytest.skip(f"vLLM half: {refused}")
    assert by_engine["vllm"]["status"] == "ok", rows
    assert by_engine["vllm"]["max_abs_diff"] <= TOLERANCE
