"""Importing a Hugging Face causal LM: the checkpoint it writes, the checks it makes, and (slow)
tiny models of each family imported with each preset, scored by the torch engine and by vLLM
from identical token ids, with matching scores."""

from __future__ import annotations

import asyncio
import json
import os

import numpy as np
import pytest
import torch

from compression.__main__ import main as compression_main
from compression.importer import ModelImportError, import_model
from ranking.checkpoint import load_tokenizer_and_task
from ranking.request import EncodedRequest
from ranking.task import PRESETS, TASK_FILE, RankingTask
from tests.tiny_families import ITEMS, QUERIES, build_tiny, relevant, tiny_config

# vLLM (bf16, its own kernels) against the torch engine on the same bf16 checkpoint
SCORE_TOL = 0.03


@pytest.fixture(scope="module")
def untrained_qwen3(tmp_path_factory):
    """A tiny Qwen3 folder, untrained: enough for the importer's checks."""
    from transformers import AutoModelForCausalLM

    from tests.chat_tokenizer import chat_tokenizer

    out = tmp_path_factory.mktemp("hf") / "qwen3"
    tok = chat_tokenizer()
    AutoModelForCausalLM.from_config(tiny_config("qwen3", tok)).save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.mark.parametrize("name", list(PRESETS))
def test_import_writes_a_checkpoint(untrained_qwen3, tmp_path, name, capsys):
    out = tmp_path / name
    rc = compression_main(["import", "--model", str(untrained_qwen3), "--preset", name,
                           "--out", str(out)])  # fmt: skip
    assert rc == 0
    printed = capsys.readouterr().out
    assert "Qwen3ForCausalLM" in printed and "serve:torch     ok" in printed
    assert (out / "model.safetensors").is_symlink()
    tok, task = load_tokenizer_and_task(out)
    assert task == PRESETS[name]
    assert json.loads((out / TASK_FILE).read_text()).get("preset", "plain") == name


def test_import_reports_what_will_not_work(untrained_qwen3, tmp_path):
    cfg = json.loads((untrained_qwen3 / "config.json").read_text())
    src = tmp_path / "mistral"
    src.mkdir()
    for f in untrained_qwen3.iterdir():
        (src / f.name).symlink_to(f)
    (src / "config.json").unlink()
    from transformers import AutoTokenizer

    mistral = tiny_config("mistral", AutoTokenizer.from_pretrained(untrained_qwen3))
    mistral.architectures = ["MistralForCausalLM"]
    mistral.save_pretrained(src)
    report = import_model(src, "qwen3-reranker", tmp_path / "out", instruction="Find recipes")
    assert report.support["prune"] and "MistralForCausalLM" in report.support["prune"]
    assert report.support["serve:torch"] is None and report.support["quantize"] is None
    assert load_tokenizer_and_task(tmp_path / "out")[1].instruction == "Find recipes"
    assert cfg["architectures"] == ["Qwen3ForCausalLM"]


def test_import_refuses_what_cannot_work(untrained_qwen3, tmp_path):
    with pytest.raises(ModelImportError, match="no config.json"):
        import_model(tmp_path, "plain", tmp_path / "x")
    bad_labels = RankingTask(yes=" definitely yes")
    with pytest.raises(ModelImportError, match="must be one"):
        import_model(untrained_qwen3, "plain", tmp_path / "x", task=bad_labels)
    broken = RankingTask(preset="custom", prompt="{query}ian {item}")
    with pytest.raises(ModelImportError, match="item separator"):
        import_model(untrained_qwen3, "custom", tmp_path / "x", task=broken)
    with pytest.raises(ModelImportError, match="no {instruction}"):
        import_model(untrained_qwen3, "plain", tmp_path / "x", instruction="x")
    cls = tmp_path / "cls"
    cls.mkdir()
    (cls / "model.safetensors").write_bytes(b"")
    (cls / "config.json").write_text(
        json.dumps({"architectures": ["BertForSequenceClassification"]})
    )
    with pytest.raises(ModelImportError, match="causal LM"):
        import_model(cls, "plain", tmp_path / "x")
    assert not (tmp_path / "x").exists()


# ---- slow: each family, each preset, both engines ------------------------------------------------
def _spec(path, engine):
    from server.settings import ServerSettings

    return ServerSettings(
        model=str(path), engine=engine, dtype="auto", max_batch_tokens=4096
    ).model_spec()


async def _scores_per_preset(family_dir, tmp_path):
    """{preset: (torch scores, vllm scores)} for every query, with the token ids checked to be
    identical between the engines' tokenizers and vLLM's own tokenization of the whole
    rendered prompt. vLLM starts once (on the qwen3-reranker import); the other presets'
    prompts go to that same vLLM with their own label ids."""
    from server.engines.torch_engine import TorchEngine
    from server.engines.vllm_engine import VllmEngine

    imported = {n: import_model(family_dir, n, tmp_path / n).out for n in PRESETS}
    vllm = VllmEngine(_spec(imported["qwen3-reranker"], "vllm"))
    await vllm.start()
    vllm_tok = vllm.llm.get_tokenizer()  # the tokenizer vLLM itself uses
    out = {}
    try:
        for name, path in imported.items():
            engine = TorchEngine(_spec(path, "torch"))
            loaded = await engine.start()
            tok, task = load_tokenizer_and_task(path)
            label_ids = task.label_token_ids(tok)
            t_scores, v_scores = [], []
            for q in QUERIES:
                enc = EncodedRequest(
                    loaded.task.encode_query(loaded.tokenizer, q),
                    loaded.task.encode_items(loaded.tokenizer, ITEMS),
                )
                for item, ids in zip(ITEMS, enc.item_ids, strict=True):
                    whole = vllm_tok.encode(task.render(tok, q, item), add_special_tokens=False)
                    bos = [tok.bos_token_id] if task.add_bos else []
                    assert bos + whole == enc.query_ids + ids, (name, q, item)
                (t,) = await engine.score([enc])
                asked = EncodedRequest(enc.query_ids, enc.item_ids, label_ids=label_ids)
                (v,) = await vllm.score([asked])
                t_scores.append(t)
                v_scores.append(v[:, 0])
            await engine.stop()
            out[name] = (np.concatenate(t_scores), np.concatenate(v_scores))
    finally:
        await vllm.stop()
    return out


@pytest.mark.slow
@pytest.mark.parametrize("family", ["llama", "qwen2", "qwen3", "mistral", "gemma"])
def test_family_imported_scores_alike_in_both_engines(family, tmp_path):
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    torch.set_num_threads(max(1, torch.get_num_threads()))
    src = build_tiny(family, tmp_path / "hf")
    results = asyncio.run(_scores_per_preset(src, tmp_path / "imported"))
    truth = np.array([relevant(q, it) for q in QUERIES for it in ITEMS])
    for name, (t, v) in results.items():
        print(
            f"[{family} {name}] score std {t.std():.3f}, max |torch - vllm| {np.abs(t - v).max():.4f}"
        )
        assert t.std() > 0.1, (family, name, t)  # trained: scores spread
        assert t[truth].mean() > t[~truth].mean(), (family, name)
        assert np.abs(t - v).max() < SCORE_TOL, (family, name, t, v)
