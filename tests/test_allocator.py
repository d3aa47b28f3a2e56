"""The memory allocator: which library ``SLIMRANK_ALLOCATOR`` chooses, and that an entry point's
``preload()`` really runs the process on it (checked from inside the re-executed process)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from ranking import allocator

PROBE = "from ranking.allocator import preload, loaded; preload(); print(loaded())"


def _probe(setting: str | None) -> subprocess.CompletedProcess:
    env = allocator.environment(setting)
    return subprocess.run(
        [sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=60
    )


def test_choose_system_auto_and_a_bad_path(tmp_path):
    assert allocator.choose("system") is None
    assert allocator.choose("auto") == allocator._tcmalloc()
    assert allocator.choose("") == allocator._tcmalloc()
    lib = tmp_path / "liballoc.so"
    lib.write_bytes(b"")
    assert allocator.choose(str(lib)) == str(lib)
    with pytest.raises(allocator.AllocatorError, match="SLIMRANK_ALLOCATOR.*not a file"):
        allocator.choose(str(tmp_path / "missing.so"))


def test_system_setting_keeps_the_system_malloc():
    out = _probe("system")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "system malloc"


@pytest.mark.skipif(allocator._tcmalloc() is None, reason="tcmalloc is not installed here")
def test_preload_reexecutes_on_tcmalloc_once():
    out = _probe(None)  # the default: auto
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().startswith("libtcmalloc"), out.stdout
    assert out.stdout.count("lib") == 1  # printed by the re-executed process only


def test_a_missing_library_is_a_clear_error():
    out = _probe("/nonexistent/libnothing.so")
    assert out.returncode == 2
    assert "SLIMRANK_ALLOCATOR" in out.stderr and "not a file" in out.stderr
