"""The engine support table: what each engine runs, and the reasons it gives when it cannot."""

from __future__ import annotations

from ranking.support import ENGINE_SUPPORT, FORMATS, unsupported_reason


def test_every_engine_loads_every_format_somewhere():
    for support in ENGINE_SUPPORT.values():
        assert set(support.formats) <= set(FORMATS)
        for fmt in FORMATS:
            assert unsupported_reason("torch", fmt, "LlamaForCausalLM", cuda=False) is None
            assert unsupported_reason("vllm", fmt, "LlamaForCausalLM", cuda=True) is None


def test_fp8_with_vllm_needs_cuda_and_names_the_way_out():
    reason = unsupported_reason("vllm", "fp8", "LlamaForCausalLM", cuda=False)
    assert "FP8" in reason and "CUDA GPU" in reason and "--engine torch" in reason
    assert unsupported_reason("vllm", "int8", "LlamaForCausalLM", cuda=False) is None


def test_unknown_engine():
    assert "unknown engine 'tgi'" in unsupported_reason("tgi", "bf16", "X", cuda=True)
