import json
import shutil

import pytest
import torch

from ranking.checkpoint import CheckpointError, inspect_checkpoint, load_checkpoint, save_checkpoint
from ranking.manifest import read_manifest, verify_manifest


def test_demo_teacher_roundtrip(tiny_demo, tiny_teacher, tmp_path):
    model, tok, task, info = tiny_teacher
    assert info.format == "bf16" and info.architecture == "LlamaForCausalLM" and info.params > 0
    out = save_checkpoint(model, tok, task, tmp_path / "copy", dtype=torch.float32)
    m2, _, t2, i2 = load_checkpoint(out)
    assert i2.format == "fp32" and t2 == task
    for a, b in zip(model.parameters(), m2.parameters(), strict=True):
        torch.testing.assert_close(a, b)
    assert not (tmp_path / "copy.partial").exists()
    verify_manifest(out)  # written last, covering every file
    assert "model.safetensors" in read_manifest(out)


@pytest.mark.parametrize(
    "breakage, message",
    [
        ("nodir", "does not exist"),
        ("noconfig", "no config.json"),
        ("corrupt", "corrupt"),
        ("noweights", "no weights"),
        ("notask", "ranking_task.json"),
        ("badweights", "cannot load checkpoint"),
    ],
)
def test_clear_errors(tiny_demo, tmp_path, breakage, message):
    ck = tmp_path / "ck"
    shutil.copytree(tiny_demo / "teacher", ck)
    if breakage == "nodir":
        shutil.rmtree(ck)
    elif breakage == "noconfig":
        (ck / "config.json").unlink()
    elif breakage == "corrupt":
        (ck / "config.json").write_text("{")
    elif breakage == "noweights":
        (ck / "model.safetensors").unlink()
    elif breakage == "notask":
        (ck / "ranking_task.json").unlink()
    elif breakage == "badweights":
        (ck / "model.safetensors").write_bytes(b"garbage" * 10)
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(ck)


def test_inspect_reads_format(tiny_demo):
    info = inspect_checkpoint(tiny_demo / "teacher")
    assert info.format == "bf16"
    cfg = json.loads((tiny_demo / "teacher" / "config.json").read_text())
    assert cfg["model_type"] == "llama"
