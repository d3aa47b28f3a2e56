"""Run ``python -m server`` as a real process on a free port (tests, serving checks, compare).

A context manager: ``with ServerProcess(model, "vllm") as srv: httpx.post(srv.url + ...)``.
It waits for ``/health`` then ``/ready`` (model loaded and warmed), and stops the server with
SIGTERM (graceful drain) on exit; the server's output goes to a log file.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    def __init__(
        self,
        model: Path,
        engine: str = "torch",
        log_dir: Path | None = None,
        env: dict[str, str] | None = None,
        **settings,
    ):
        """``settings`` become ``--flag=value`` (a value may start with ``-``, as a random key
        can); ``env`` is added to the server's environment, the place for secrets such as
        ``SLIMRANK_API_KEYS``, which ``ps`` would show on a command line."""
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.args = [
            sys.executable,
            "-m",
            "server",
            "--model",
            str(model),
            "--engine",
            engine,
            "--port",
            str(self.port),
        ]
        self.args += [f"--{k.replace('_', '-')}={v}" for k, v in settings.items()]
        self.env = dict(env or {})
        self.log_path = (log_dir or Path("/tmp")) / f"server-{self.port}.log"
        self.proc: subprocess.Popen | None = None
        self._log = None

    def start(self, wait_ready: bool = True, timeout: float = 300) -> ServerProcess:
        env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "PYTHONUNBUFFERED": "1", **self.env}
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            self.args, cwd=REPO, env=env, stdout=self._log, stderr=subprocess.STDOUT
        )
        self.wait("/health", timeout)
        if wait_ready:
            self.wait("/ready", timeout)
        return self

    def wait(self, path: str, timeout: float) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"server exited ({self.proc.returncode}):\n{self.logs()[-4000:]}"
                )
            try:
                if httpx.get(self.url + path, timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"{path} not 200 after {timeout}s:\n{self.logs()[-4000:]}")

    def logs(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def stop(self, timeout: float = 60) -> int | None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._log is not None:
            self._log.close()
        return self.proc.returncode if self.proc else None

    def __enter__(self):
        try:
            return self.start()
        except BaseException:
            self.stop()  # a server that failed to get ready must not outlive the caller
            raise

    def __exit__(self, *exc):
        self.stop()
