"""The server's command line fails before opening a port when the setup cannot work."""

from __future__ import annotations

import subprocess
import sys

from tests.serving import REPO


def test_missing_checkpoint_fails_fast(tmp_path):
    p = subprocess.run(
        [sys.executable, "-m", "server", "--model", str(tmp_path / "missing")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 2 and "does not exist" in p.stderr
