"""The environment the install script builds: vLLM and llmcompressor side by side with the
documented pins. That both work together (llmcompressor's checkpoints in vLLM) is
tests/test_parity.py."""

import importlib.util


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
