"""The environment the install script builds: vLLM and llmcompressor side by side, both working."""

import importlib.util
import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from ranking.checkpoint import inspect_checkpoint, load_checkpoint
from ranking.scorer import TorchScorer


def test_both_stacks_import_with_the_documented_pins():
    import compressed_tensors
    import llmcompressor
    import transformers
    import vllm

    assert vllm.__version__.startswith("0.32")
    assert llmcompressor.__version__.startswith("0.14")
    assert compressed_tensors.__version__.startswith("0.19")  # llmcompressor's pin wins
    assert "5.16.1" <= transformers.__version__ <= "5.17.0"
    # removed by the installer: their builds do not match the CPU torch
    for mod in ("torchvision", "torchaudio", "torchcodec"):
        assert importlib.util.find_spec(mod) is None, mod


QUERY = (
    "member profile: nurse, expert level. interests: music, travel, cooking. prefers video content."
)
ITEMS = [f"jazz guitar: {q} expert music video." for q in ("excellent", "good", "poor")]


@pytest.mark.slow
@pytest.mark.parametrize("scheme, fmt", [("fp8", "fp8"), ("int8", "int8"), ("int4", "int4")])
def test_llmcompressor_checkpoints_load_dequantized(tiny_teacher, tiny_quantized, scheme, fmt):
    path = tiny_quantized[scheme]
    cfg = json.loads((path / "config.json").read_text())
    qc = cfg["quantization_config"]
    assert qc["quant_method"] == "compressed-tensors"
    assert "lm_head" in qc["ignore"]
    assert inspect_checkpoint(path).format == fmt
    model, tok, task, info = load_checkpoint(path)
    assert info.format == fmt
    ref = TorchScorer(*tiny_teacher[:3]).score(QUERY, ITEMS)
    got = TorchScorer(model, tok, task).score(QUERY, ITEMS)
    assert np.abs(ref - got).max() < 0.05, (scheme, ref, got)


VLLM_PROBE = textwrap.dedent(
    """
    import json, os, sys
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt
    path, prompt, ids = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
    llm = LLM(model=path, enforce_eager=True, dtype="bfloat16", enable_prefix_caching=True)
    out = llm.generate([TokensPrompt(prompt_token_ids=prompt)],
                       SamplingParams(max_tokens=1, logprobs=20, temperature=0.0))
    lp = out[0].outputs[0].logprobs[0]
    print("RESULT", json.dumps([lp[i].logprob for i in ids]))
    """
)


@pytest.mark.slow
@pytest.mark.parametrize("scheme", ["bf16", "int8"])
def test_vllm_runs_our_checkpoints(tiny_demo, tiny_teacher, tiny_quantized, scheme):
    """vLLM (the CPU build here) loads a bf16 and an llmcompressor INT8 checkpoint and agrees
    with the torch scorer on the label log-probabilities."""
    model, tok, task, _ = tiny_teacher
    path = tiny_demo / "teacher" if scheme == "bf16" else tiny_quantized[scheme]
    prompt = task.encode_query(tok, QUERY) + task.encode_item(tok, ITEMS[0])
    ids = list(task.label_token_ids(tok))
    proc = subprocess.run(
        [sys.executable, "-c", VLLM_PROBE, str(path), json.dumps(prompt), json.dumps(ids)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT")]
    assert line, proc.stderr[-3000:]
    lp_yes, lp_no = json.loads(line[0].split(" ", 1)[1])
    vllm_score = 1 / (1 + np.exp(lp_no - lp_yes))
    ref = TorchScorer(model, tok, task).score(QUERY, ITEMS[:1])[0]
    assert abs(vllm_score - ref) < 0.05


def test_activation_quant_emulation_can_be_skipped(tiny_quantized, tiny_demo):
    """W8A8/FP8 in the torch engine: per-token activation quantization is emulated by default
    (scores as with real kernels); skipping it only drops that rounding."""
    from ranking.checkpoint import load_checkpoint
    from ranking.dataset import read_split
    from ranking.scorer import TorchScorer

    rows = read_split(tiny_demo / "data", "test")[:10]
    for fmt in ("int8", "fp8"):
        scores = {}
        for emulate in (True, False):
            model, tok, task, _ = load_checkpoint(
                tiny_quantized[fmt], emulate_activation_quant=emulate
            )
            flags = {
                getattr(m, "quantization_enabled", True)
                for m in model.modules()
                if getattr(m, "quantization_scheme", None) is not None
            }
            assert flags == {emulate}, (fmt, emulate, flags)
            scores[emulate] = TorchScorer(model, tok, task).score(
                rows[0]["query"], [r["item"] for r in rows]
            )
        assert abs(scores[True] - scores[False]).max() < 0.03
