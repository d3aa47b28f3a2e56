"""Structured pruning on real models: the tiny trained teacher (OSSCAR vs magnitude, identity,
vLLM parity) and tiny random Llama / Qwen2 / Qwen3 models (biases, GQA, tied embeddings,
q_norm/k_norm, sliding-window layer types) pruned, saved and reloaded by transformers."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from compression.calibration import task_prompts
from compression.prune import (
    STATS_FILE,
    PruneConfig,
    prune_checkpoint,
    prune_model,
)
from ranking.checkpoint import load_checkpoint, save_checkpoint
from ranking.datafolder import read_split
from ranking.scorer import TorchScorer
from ranking.task import RankingTask


@pytest.fixture(scope="module")
def rows(tiny_demo):
    return read_split(tiny_demo / "data", "train")


@pytest.fixture(scope="module")
def teacher_prompts(tiny_teacher, rows):
    _, tok, task, _ = tiny_teacher
    return task_prompts(rows, tok, task, 48, seed=1)


@torch.no_grad()
def last_logits(model, prompts):
    out = []
    for p in prompts:
        ids = torch.as_tensor([p])
        out.append(model(input_ids=ids).logits[0, -1])
    return torch.stack(out)


# ---- the tiny trained teacher ------------------------------------------------------------
def test_keep_everything_is_the_identity(tiny_teacher, teacher_prompts):
    model = copy.deepcopy(tiny_teacher[0])
    ref = last_logits(model, teacher_prompts[:8])
    c = model.config
    cfg = PruneConfig(
        intermediate_size=c.intermediate_size,
        heads_per_group=c.num_attention_heads // c.num_key_value_heads,
        kv_groups=c.num_key_value_heads,
    )
    stats = prune_model(model, teacher_prompts, cfg, progress=False)
    assert stats["params_after"] == stats["params_before"]
    torch.testing.assert_close(last_logits(model, teacher_prompts[:8]), ref, rtol=0, atol=0)
    # the same through the selection path: 1.0 as a fraction keeps every neuron
    model2 = copy.deepcopy(tiny_teacher[0])
    from compression import prune as P

    g = P._Gram()
    batches = P._capture(model2, teacher_prompts, 16)
    layer = P._layers(model2)[0]
    P._run_layer(layer, 0, batches, g, layer.mlp.down_proj)
    info = P._prune_mlp(layer.mlp, g, c.intermediate_size, cfg)
    assert info["rel_error"] < 1e-12
    torch.testing.assert_close(last_logits(model2, teacher_prompts[:8]), ref, rtol=0, atol=0)


def test_osscar_reconstructs_better_than_magnitude(tiny_teacher, teacher_prompts):
    dense = tiny_teacher[0]
    ref = torch.log_softmax(last_logits(dense, teacher_prompts), -1)
    errs, kls = {}, {}
    for method in ("osscar", "magnitude"):
        model = copy.deepcopy(dense)
        cfg = PruneConfig(intermediate_size=0.5, heads_per_group=1, method=method)
        stats = prune_model(model, teacher_prompts, cfg, progress=False)
        assert stats["shape"]["intermediate_size"] == 64
        assert stats["shape"]["num_attention_heads"] == 1
        errs[method] = stats["layers"]
        lp = torch.log_softmax(last_logits(model, teacher_prompts), -1)
        kls[method] = float((ref.exp() * (ref - lp)).sum(-1).mean())
    for o, m in zip(errs["osscar"], errs["magnitude"], strict=True):
        for key in ("attention", "mlp"):
            assert o[key]["rel_error"] < m[key]["rel_error"], (key, o, m)
    assert kls["osscar"] < kls["magnitude"], kls


def test_depth_pruning_drops_the_least_important_layer(tiny_teacher, teacher_prompts):
    model = copy.deepcopy(tiny_teacher[0])
    stats = prune_model(model, teacher_prompts, PruneConfig(drop_layers=1), progress=False)
    imp = stats["layer_importance"][0]
    assert stats["dropped_layers"] == [int(np.argmin(imp))]
    assert model.config.num_hidden_layers == 1 and len(model.model.layers) == 1
    assert model.model.layers[0].self_attn.layer_idx == 0
    last_logits(model, teacher_prompts[:2])  # runs


# ---- tiny random models of each family ---------------------------------------------------
def make_model(family: str, vocab: int):
    torch.manual_seed(0)
    common = dict(
        vocab_size=vocab,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=3,
        max_position_embeddings=256,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=2,
    )
    if family == "llama":  # GQA, every optional bias (o_proj and down_proj too), untied
        from transformers import LlamaConfig, LlamaForCausalLM

        cfg = LlamaConfig(
            **common,
            num_attention_heads=8,
            num_key_value_heads=4,
            head_dim=16,
            attention_bias=True,
            mlp_bias=True,
            tie_word_embeddings=False,
        )
        model = LlamaForCausalLM(cfg)
    elif family == "qwen2":  # q/k/v biases, tied embeddings
        from transformers import Qwen2Config, Qwen2ForCausalLM

        cfg = Qwen2Config(
            **common, num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True
        )
        model = Qwen2ForCausalLM(cfg)
    else:  # qwen3: q_norm/k_norm, tied, q/k/v/o biases, a sliding-window layer
        from transformers import Qwen3Config, Qwen3ForCausalLM

        cfg = Qwen3Config(
            **common,
            num_attention_heads=6,
            num_key_value_heads=2,
            head_dim=16,
            attention_bias=True,
            tie_word_embeddings=True,
            use_sliding_window=True,
            sliding_window=8,
            max_window_layers=2,
        )
        model = Qwen3ForCausalLM(cfg)
    with torch.no_grad():  # random non-trivial norms and biases
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1 + 0.2 * torch.randn_like(p))
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn_like(p))
    return model.eval()


CASES = {
    # family: (PruneConfig, expected (heads, kv heads))
    "llama": (
        PruneConfig(intermediate_size=40, heads_per_group=1, kv_groups=2, drop_layers=1),
        (2, 2),
    ),
    "qwen2": (PruneConfig(intermediate_size=0.5, drop_layers=1), (4, 2)),
    "qwen3": (
        PruneConfig(intermediate_size=48, heads_per_group=2, kv_groups=1, drop_layers=1),
        (2, 1),
    ),
}


# Llama stays in the fast tier; the Qwen cases take tens of seconds each on two cores.
FAMILIES = [
    "llama",
    pytest.param("qwen2", marks=pytest.mark.slow),
    pytest.param("qwen3", marks=pytest.mark.slow),
]


@pytest.mark.parametrize("family", FAMILIES)
def test_random_models_prune_save_and_reload(family, tiny_demo, rows, tmp_path):
    tok = AutoTokenizer.from_pretrained(tiny_demo / "data" / "tokenizer")
    task = RankingTask()
    model = make_model(family, len(tok))
    src = save_checkpoint(model, tok, task, tmp_path / "src", dtype=None)
    layer_types = list(model.config.layer_types) if hasattr(model.config, "layer_types") else None
    cfg, (heads, kv) = CASES[family]
    cfg = copy.deepcopy(cfg)
    cfg.calibration_samples = 32
    stats = prune_checkpoint(src, tmp_path / "dst", cfg, rows, progress=False)
    assert stats["calibration_prompts"] == 32

    saved = json.loads((tmp_path / "dst" / "config.json").read_text())
    assert saved["num_hidden_layers"] == 2
    assert saved["num_attention_heads"] == heads and saved["num_key_value_heads"] == kv
    hd = 16  # head_dim is never pruned
    assert saved["head_dim"] == hd
    inter = saved["intermediate_size"]
    assert inter == {"llama": 40, "qwen2": 48, "qwen3": 48}[family]
    assert json.loads((tmp_path / "dst" / STATS_FILE).read_text())["dropped_layers"]
    if layer_types:
        kept = [i for i in range(3) if i not in stats["dropped_layers"]]
        assert saved["layer_types"] == [layer_types[i] for i in kept]

    re = AutoModelForCausalLM.from_pretrained(tmp_path / "dst", dtype=torch.float32).eval()
    assert len(re.model.layers) == 2
    for layer in re.model.layers:
        a, m = layer.self_attn, layer.mlp
        assert a.q_proj.weight.shape == (heads * hd, 64)
        assert a.k_proj.weight.shape == a.v_proj.weight.shape == (kv * hd, 64)
        assert a.o_proj.weight.shape == (64, heads * hd)
        assert m.gate_proj.weight.shape == m.up_proj.weight.shape == (inter, 64)
        assert m.down_proj.weight.shape == (64, inter)
        if family != "llama":
            assert a.q_proj.bias.shape == (heads * hd,) and a.k_proj.bias.shape == (kv * hd,)
        if family == "llama":
            assert a.o_proj.bias.shape == (64,) and m.down_proj.bias.shape == (64,)
            assert m.gate_proj.bias.shape == (inter,)
        if family == "qwen3":
            assert a.q_norm.weight.shape == a.k_norm.weight.shape == (hd,)
    if family != "llama":
        assert re.config.tie_word_embeddings
        assert re.lm_head.weight.data_ptr() == re.model.embed_tokens.weight.data_ptr()

    # the written config describes the pruned model exactly: the same pruning in memory, saved
    # in fp32 and reloaded, gives the same logits; the bf16 checkpoint is close to it
    prompts = task_prompts(rows, tok, task, 4, seed=7)
    got = last_logits(re, prompts)
    assert torch.isfinite(got).all()
    mem = copy.deepcopy(model)
    calib = task_prompts(rows, tok, task, 32, seed=0)
    st = prune_model(mem, calib, cfg, progress=False, label_ids=task.label_token_ids(tok))
    assert st["dropped_layers"] == stats["dropped_layers"]
    ref = last_logits(mem, prompts)
    fp32 = save_checkpoint(mem, tok, task, tmp_path / "fp32", dtype=None)
    exact = AutoModelForCausalLM.from_pretrained(fp32, dtype=torch.float32).eval()
    torch.testing.assert_close(last_logits(exact, prompts), ref, rtol=0, atol=1e-5)
    torch.testing.assert_close(got, ref, rtol=0.05, atol=0.05)
    # and the pruned model still resembles the dense one
    dense = last_logits(model, prompts)
    for a, b in zip(got, dense, strict=True):
        assert float(torch.corrcoef(torch.stack([a, b]))[0, 1]) > 0.5


def test_validate_names_the_problem(tiny_demo):
    from transformers import MistralConfig

    tok = AutoTokenizer.from_pretrained(tiny_demo / "data" / "tokenizer")
    llama = make_model("llama", len(tok)).config
    qwen2 = make_model("qwen2", len(tok)).config
    bad = [
        (PruneConfig(intermediate_size=97), llama, "intermediate_size=97"),
        (PruneConfig(intermediate_size=1.5), llama, "fraction"),
        (PruneConfig(heads_per_group=3), llama, "heads_per_group"),
        (PruneConfig(kv_groups=5), llama, "kv_groups"),
        (PruneConfig(drop_layers=3), llama, "drop_layers"),
        (PruneConfig(method="random"), llama, "method"),
        (PruneConfig(heads_per_group=1), qwen2, "head_dim"),
        (PruneConfig(kv_groups=1), qwen2, "Qwen2ForCausalLM"),
        (PruneConfig(), MistralConfig(architectures=["MistralForCausalLM"]), "MistralForCausalLM"),
    ]
    for cfg, config, match in bad:
        with pytest.raises(ValueError, match=match):
            cfg.validate(config)
    PruneConfig(intermediate_size=0.25, drop_layers=2).validate(qwen2)


# ---- vLLM ----------------------------------------------------------------------------------
VLLM_PROBE = textwrap.dedent(
    """
    import json, os, sys
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt
    path, prompts, ids = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
    llm = LLM(model=path, enforce_eager=True, dtype="bfloat16")
    params = SamplingParams(max_tokens=1, temperature=0.0, logprob_token_ids=ids)
    outs = llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params)
    res = [[o.outputs[0].logprobs[0][i].logprob for i in ids] for o in outs]
    print("RESULT", json.dumps(res))
    """
)


@pytest.mark.slow
def test_vllm_runs_a_pruned_checkpoint(tiny_demo, rows, tmp_path):
    """The pruned tiny teacher (1 of 2 heads, half the MLP, 1 of 2 layers; head_dim 32, the
    smallest vLLM-CPU runs) loads in vLLM and scores like the torch scorer."""
    dst = tmp_path / "pruned"
    cfg = PruneConfig(
        intermediate_size=64, heads_per_group=1, drop_layers=1, calibration_samples=64
    )
    prune_checkpoint(tiny_demo / "teacher", dst, cfg, rows, progress=False)
    model, tok, task, _ = load_checkpoint(dst)
    assert model.config.num_attention_heads == 1 and model.config.head_dim == 32
    test_rows = read_split(tiny_demo / "data", "test")[:6]
    prompts = [
        task.encode_query(tok, r["query"]) + task.encode_item(tok, r["item"]) for r in test_rows
    ]
    ids = list(task.label_token_ids(tok))
    proc = subprocess.run(
        [sys.executable, "-c", VLLM_PROBE, str(dst), json.dumps(prompts), json.dumps(ids)],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"},
    )
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT")]
    assert line, proc.stderr[-3000:]
    lps = json.loads(line[0].split(" ", 1)[1])
    scorer = TorchScorer(model, tok, task)
    got = np.array([1 / (1 + np.exp(lp_no - lp_yes)) for lp_yes, lp_no in lps])
    ref = np.array([scorer.score(r["query"], [r["item"]])[0] for r in test_rows])
    assert np.abs(got - ref).max() < 0.03, (got, ref)
    assert np.ptp(ref) > 0.02, ref  # the pruned model still tells items apart
