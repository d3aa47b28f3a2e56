"""The per-module prefill profile: every module type measured, shares summing to one."""

import argparse
import json

import pytest
import torch
from transformers import Qwen3Config, Qwen3ForCausalLM

from compression.profile import MODULE_TYPES, add_profile_parser, module_seconds


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    from compression.teacher import ModelShape, make_teacher_model
    from ranking.checkpoint import save_checkpoint
    from ranking.synthetic import BenchmarkConfig, corpus, generate
    from ranking.task import RankingTask
    from ranking.tokenizer import train_tokenizer

    rows = generate(BenchmarkConfig(train_queries=40, val_queries=1, test_queries=1))["train"]
    task = RankingTask()
    tok = train_tokenizer(corpus(rows), 300, must_have=[task.yes, task.no, task.question])
    shape = ModelShape(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        intermediate_size=128,
        max_position_embeddings=1024,
    )
    path = tmp_path_factory.mktemp("profile") / "model"
    return save_checkpoint(make_teacher_model(shape, tok), tok, task, path)


def test_cli_profile_shares(tiny_checkpoint, tmp_path, capsys):
    parser = argparse.ArgumentParser()
    add_profile_parser(parser.add_subparsers())
    out = tmp_path / "profile.json"
    args = parser.parse_args(
        ["profile", "--model", str(tiny_checkpoint), "--json", str(out), "--items", "8"]
    )
    assert args.fn(args) == 0
    result = json.loads(out.read_text())
    shares = result["shares"]
    assert set(shares) == set(MODULE_TYPES)
    assert sum(shares.values()) == pytest.approx(1.0, abs=1e-6)
    assert all(v >= 0 for v in shares.values())
    assert shares["attention"] > 0 and shares["mlp"] > 0 and shares["norms"] > 0
    assert shares["embeddings"] > 0
    assert 0 < result["attention_projections_share"] < shares["attention"]
    assert result["workload"]["items"] == 8 and result["workload"]["query_tokens"] >= 250
    assert "attention" in capsys.readouterr().out


def test_module_seconds_times_the_head_and_qwen3_norms():
    """A full forward calls the head; Qwen3's per-head q/k norms count as norms."""
    torch.manual_seed(0)
    cfg = Qwen3Config(
        vocab_size=97,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
    )
    model = Qwen3ForCausalLM(cfg).eval()
    ids = torch.randint(0, 97, (2, 40))
    with torch.inference_mode():
        seconds = module_seconds(model, lambda: model(input_ids=ids), repeats=2)
    parts = sum(seconds[k] for k in MODULE_TYPES)
    assert parts == pytest.approx(seconds["total"], rel=1e-6)
    assert all(seconds[k] > 0 for k in MODULE_TYPES)


def test_report_hook_profiles_each_stage(tiny_checkpoint):
    from compression.profile import profile_markdown, profile_stages

    rows = [
        {"name": "teacher", "path": str(tiny_checkpoint)},
        {"name": "student", "path": str(tiny_checkpoint)},
    ]
    profile_stages(rows, repeats=1)
    for r in rows:
        assert sum(r["profile"]["shares"].values()) == pytest.approx(1.0, abs=1e-6)
        assert r["profile"]["ms_per_request"] > 0
    md = profile_markdown(rows)
    assert sum(line.startswith("| teacher |") or line.startswith("| student |") for line in md) == 2
    assert all(k in md[3] for k in MODULE_TYPES)
    assert profile_markdown([{"name": "x"}]) == []


def test_cli_profile_lists_the_top_operators(tiny_checkpoint, tmp_path, capsys):
    parser = argparse.ArgumentParser()
    add_profile_parser(parser.add_subparsers())
    out = tmp_path / "profile.json"
    args = parser.parse_args(["profile", "--model", str(tiny_checkpoint), "--json", str(out),
                              "--items", "8", "--operators", "5", "--repeats", "1"])  # fmt: skip
    assert args.fn(args) == 0
    ops = json.loads(out.read_text())["operators"]
    assert len(ops) == 6 and ops[-1]["operator"] == "(all)"
    assert any(o["operator"] in ("aten::mm", "aten::addmm", "aten::linear") for o in ops[:-1])
    assert sum(o["share"] for o in ops[:-1]) <= 1.0 + 1e-9
    assert ops[-1]["calls_per_request"] > 50  # every layer launches dozens of operators
    assert "self CPU time" in capsys.readouterr().out
