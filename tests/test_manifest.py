"""Checkpoint manifests: an intact folder verifies; truncation, corruption, a missing file and a
missing manifest are each refused with a message naming the file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ranking.atomic import partial_path
from ranking.checkpoint import CheckpointError
from ranking.manifest import (
    MANIFEST_FILE,
    ManifestMissing,
    file_sha256,
    read_manifest,
    verify_manifest,
    write_manifest,
)


@pytest.fixture
def ckpt(tmp_path: Path) -> Path:
    """A small folder shaped like a checkpoint, with a nested file and a >1 MiB weight file."""
    d = tmp_path / "ck"
    (d / "sub").mkdir(parents=True)
    (d / "config.json").write_text('{"model_type": "llama"}')
    (d / "model.safetensors").write_bytes(bytes(range(256)) * 5000)  # 1.28 MB: several chunks
    (d / "ranking_task.json").write_text("{}")
    (d / "sub" / "extra.txt").write_text("nested")
    write_manifest(d)
    return d


def test_intact_checkpoint_verifies(ckpt):
    verify_manifest(ckpt)
    files = read_manifest(ckpt)
    assert set(files) == {"config.json", "model.safetensors", "ranking_task.json", "sub/extra.txt"}
    weights = ckpt / "model.safetensors"
    assert files["model.safetensors"] == {
        "size": weights.stat().st_size,
        "sha256": file_sha256(weights),
    }
    assert not partial_path(ckpt / MANIFEST_FILE).exists()


def test_truncated_file_is_named(ckpt):
    w = ckpt / "model.safetensors"
    w.write_bytes(w.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match=r"model\.safetensors is truncated \(1000 of"):
        verify_manifest(ckpt)


def test_corrupted_file_is_named(ckpt):
    w = ckpt / "model.safetensors"
    data = bytearray(w.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, one flipped byte
    w.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"model\.safetensors is corrupted"):
        verify_manifest(ckpt)


def test_missing_file_is_named(ckpt):
    (ckpt / "ranking_task.json").unlink()
    with pytest.raises(CheckpointError, match=r"ranking_task\.json is missing"):
        verify_manifest(ckpt)


def test_grown_file_is_named(ckpt):
    with open(ckpt / "config.json", "a") as f:
        f.write(" ")
    with pytest.raises(CheckpointError, match=r"config\.json has \d+ bytes, the manifest says"):
        verify_manifest(ckpt)


def test_extra_file_is_allowed(ckpt):
    (ckpt / "report.png").write_bytes(b"\x89PNG")
    verify_manifest(ckpt)


def test_missing_manifest_is_its_own_error(ckpt):
    (ckpt / MANIFEST_FILE).unlink()
    with pytest.raises(ManifestMissing, match="no manifest.json"):
        verify_manifest(ckpt)
    assert issubclass(ManifestMissing, CheckpointError)


@pytest.mark.parametrize(
    "body",
    ["{", '{"files": []}', '{"files": {"../etc/passwd": {"size": 1, "sha256": "x"}}}'],
)
def test_corrupt_manifest_is_refused(ckpt, body):
    (ckpt / MANIFEST_FILE).write_text(body)
    with pytest.raises(CheckpointError, match="manifest.json is corrupt") as exc:
        verify_manifest(ckpt)
    assert not isinstance(exc.value, ManifestMissing)


def test_rewrite_covers_new_files(ckpt):
    (ckpt / "stage.json").write_text(json.dumps({"name": "distill"}))
    write_manifest(ckpt)
    assert "stage.json" in read_manifest(ckpt)
    assert MANIFEST_FILE not in read_manifest(ckpt)
