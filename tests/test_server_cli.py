"""The server's command line fails before opening a port when the setup cannot work."""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest

from tests.serving import REPO, ServerProcess


def test_missing_checkpoint_fails_fast(tmp_path):
    p = subprocess.run(
        [sys.executable, "-m", "server", "--model", str(tmp_path / "missing")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 2 and "does not exist" in p.stderr


def _checkpoint_folder(path):
    """Just enough of a checkpoint for the pre-flight checks (no weights are loaded)."""
    from ranking.manifest import write_manifest

    path.mkdir()
    # a small shape: the pre-flight memory estimate reads the parameter count from it
    cfg = (
        '{"architectures": ["LlamaForCausalLM"], "model_type": "llama", "torch_dtype": "bfloat16",'
        ' "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,'
        ' "num_attention_heads": 2, "vocab_size": 100}'
    )
    (path / "config.json").write_text(cfg)
    (path / "model.safetensors").write_bytes(b"\0" * 4096)
    (path / "ranking_task.json").write_text("{}")
    write_manifest(path)
    return path


def test_corrupted_checkpoint_fails_fast_naming_the_file(tmp_path):
    ck = _checkpoint_folder(tmp_path / "ck")
    with open(ck / "model.safetensors", "r+b") as f:
        f.truncate(1000)
    args = [sys.executable, "-m", "server", "--model", str(ck)]
    p = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "model.safetensors is truncated" in p.stderr, p.stderr


def test_preflight_verifies_unless_told_not_to(tmp_path, caplog):
    from ranking.checkpoint import CheckpointError
    from ranking.manifest import MANIFEST_FILE
    from server.__main__ import preflight
    from server.settings import ServerSettings

    ck = _checkpoint_folder(tmp_path / "ck")
    caplog.set_level(logging.INFO, logger="slimrank.server")
    preflight(ServerSettings(model=str(ck)))
    assert "memory allocator: " in caplog.text  # which one the server runs on, in its log
    (ck / "model.safetensors").write_bytes(b"\1" * 4096)  # same size, other bytes
    with pytest.raises(CheckpointError, match="model.safetensors is corrupted"):
        preflight(ServerSettings(model=str(ck)))
    preflight(ServerSettings(model=str(ck), verify_checkpoint=False))
    (ck / MANIFEST_FILE).unlink()
    preflight(ServerSettings(model=str(ck)))  # no manifest: a warning, not a refusal
    assert "not verified" in caplog.text


def test_server_process_passes_values_that_look_like_flags(tmp_path):
    """A random key can start with ``-``; ``--api-key -x`` would be refused as a missing value."""
    from server.__main__ import _parser

    srv = ServerProcess(tmp_path, "torch", tmp_path, api_key="-Xy_z", served_model_name="--m")
    args = _parser().parse_args(srv.args[3:])  # past "python -m server"
    assert args.api_keys == ["-Xy_z"] and args.served_model_name == "--m"
    assert str(tmp_path) == args.model and args.port == srv.port


@pytest.mark.slow
def test_server_process_keys_from_env_reach_a_real_server(tiny_demo, tmp_path):
    """Secrets go in the environment (off the command line): the server then refuses a request
    without the key and accepts one with it, a key starting with ``-`` included."""
    import httpx

    key = "-starts-with-a-dash"
    with ServerProcess(tiny_demo / "teacher", "torch", tmp_path, {"SLIMRANK_API_KEYS": key}) as s:
        assert key not in " ".join(s.args)
        body = {"query": "q", "items": ["a"]}
        assert httpx.post(s.url + "/v1/rank", json=body, timeout=60).status_code == 401
        ok = httpx.post(
            s.url + "/v1/rank", json=body, headers={"Authorization": f"Bearer {key}"}, timeout=60
        )
        assert ok.status_code == 200, ok.text
