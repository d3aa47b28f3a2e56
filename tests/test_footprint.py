"""Bytes per part from safetensors headers: they sum to the files' sizes, match the projection
from the config, and a tied LM head costs nothing of its own."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from compression.footprint import (
    PARTS,
    bytes_by_part,
    head_is_tied,
    markdown,
    part_of,
    projected_bytes,
    rows,
)
from ranking.checkpoint import checkpoint_bytes


def save_llama(path, tied: bool, **shape) -> dict:
    config = LlamaConfig(
        vocab_size=96,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        tie_word_embeddings=tied,
        **shape,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).to(torch.bfloat16).save_pretrained(path)
    return json.loads((path / "config.json").read_text())


@pytest.mark.parametrize(
    "name, part",
    [
        ("model.embed_tokens.weight", "embeddings"),
        ("lm_head.weight", "lm_head"),
        ("model.layers.3.self_attn.q_proj.weight_packed", "attention"),
        ("model.layers.3.self_attn.o_proj.weight_scale", "attention"),
        ("model.layers.3.self_attn.k_norm.weight", "norms"),
        ("model.layers.3.input_layernorm.weight", "norms"),
        ("model.layers.3.mlp.down_proj.weight_shape", "mlp"),
        ("model.norm.weight", "norms"),
        ("model.rotary_emb.inv_freq", "other"),
    ],
)
def test_tensor_names_map_to_parts(name, part):
    assert part_of(name) == part


@pytest.mark.parametrize("tied", [False, True])
def test_parts_sum_to_the_file_and_match_the_projection(tmp_path, tied):
    config = save_llama(tmp_path, tied, head_dim=24)  # head_dim != hidden / heads
    measured = bytes_by_part(tmp_path)
    assert list(measured) == list(PARTS)
    assert sum(measured.values()) == checkpoint_bytes(tmp_path)
    projected = projected_bytes(config)
    assert {p: measured[p] for p in PARTS if p != "other"} == {
        p: projected[p] for p in PARTS if p != "other"
    }
    assert 0 < measured["other"] < 0.2 * checkpoint_bytes(tmp_path)  # the header only
    assert head_is_tied(tmp_path) == tied
    assert (measured["lm_head"] == 0) == tied
    assert measured["embeddings"] == 2 * 96 * 32


def test_projection_of_quantized_linears_shrinks_only_the_body():
    config = {
        "vocab_size": 1000,
        "hidden_size": 256,
        "intermediate_size": 512,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
    }
    bf16, int8 = projected_bytes(config), projected_bytes(config, "int8")
    int4_g64, int4_ch = projected_bytes(config, "int4", 64), projected_bytes(config, "int4", 0)
    for p in ("embeddings", "norms", "lm_head"):
        assert bf16[p] == int8[p] == int4_g64[p] == int4_ch[p]
    for p in ("attention", "mlp"):
        assert bf16[p] > int8[p] > int4_g64[p] > int4_ch[p] > bf16[p] / 4
    tied = projected_bytes({**config, "tie_word_embeddings": True}, "int4", 64)
    assert tied["lm_head"] == 0 and tied["embeddings"] == bf16["embeddings"]
    with pytest.raises(ValueError, match="unknown weight format 'int3'"):
        projected_bytes(config, "int3")


def test_markdown_lists_every_checkpoint_and_part(tmp_path):
    save_llama(tmp_path / "a", tied=False)
    save_llama(tmp_path / "b", tied=True)
    table_rows = rows([("untied", tmp_path / "a"), ("tied", tmp_path / "b")])
    table = markdown(table_rows)
    for p in PARTS:
        assert p in table
    assert "| untied |" in table and "| tied |" in table
    assert table.count(") tied") == 1  # only the tied checkpoint's head cell says so
    assert "0.000 MB (0%) tied" in table
    with pytest.raises(FileNotFoundError, match="no .safetensors"):
        bytes_by_part(tmp_path)
