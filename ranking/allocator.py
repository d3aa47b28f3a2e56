"""The memory allocator of slimrank's processes: tcmalloc where it is installed.

torch's CPU tensors come and go in many sizes, step after step. glibc's malloc keeps what they
free in fragmented heaps (the MovieLens teacher's training peaked at 9.5 GB resident over 150
steps, 4.0 GB on tcmalloc) and unmaps large blocks that the next forward maps again (the demo
teacher serves 1.36x faster on tcmalloc): docs/results.md, "The memory allocator". vLLM's CPU
worker preloads tcmalloc for the same reasons.

An allocator has to be in place before the interpreter allocates anything, so it is loaded by
the dynamic linker (``LD_PRELOAD``). The command-line entry points (``python -m compression``,
``python -m server``, ``python -m loadtest``) call ``preload()`` first: when tcmalloc is
installed and not yet loaded, the process executes itself again, once, with it preloaded. The
processes they start inherit it (a ``vllm serve`` peer, vLLM's engine core).

``SLIMRANK_ALLOCATOR`` chooses: ``auto`` (the default: tcmalloc if found, else the system's
malloc), ``system`` (no preload), or the path of an allocator library (jemalloc, mimalloc, ...).
"""

from __future__ import annotations

import ctypes.util
import functools
import os
import sys
from pathlib import Path

ENV = "SLIMRANK_ALLOCATOR"
# set in the re-executed process: one re-execution at most, even if the preload was ignored
_REEXECUTED = "SLIMRANK_ALLOCATOR_PRELOADED"
TCMALLOC = ("tcmalloc_minimal", "tcmalloc")  # libtcmalloc-minimal4 (Debian, Ubuntu), gperftools


class AllocatorError(ValueError):
    """``SLIMRANK_ALLOCATOR`` names something that cannot be preloaded."""


def _tcmalloc() -> str | None:
    """The file name of an installed tcmalloc (the dynamic linker finds it), or None."""
    for name in TCMALLOC:
        found = ctypes.util.find_library(name)
        if found:
            return found
    return None


def choose(setting: str | None = None) -> str | None:
    """The library to preload for ``setting`` (default: ``SLIMRANK_ALLOCATOR``, else auto), or
    None for the system's malloc. A path that is not a file raises ``AllocatorError``."""
    setting = (setting if setting is not None else os.environ.get(ENV, "auto")).strip()
    if setting in ("", "auto"):
        return _tcmalloc()
    if setting == "system":
        return None
    if not Path(setting).is_file():
        raise AllocatorError(
            f"{ENV}={setting!r}: not a file; use auto, system, or the path of an allocator "
            "library (e.g. /usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4)"
        )
    return setting


def environment(setting: str | None) -> dict[str, str]:
    """This process's environment for a child that chooses its allocator afresh: no
    ``LD_PRELOAD`` or allocator variables inherited, ``SLIMRANK_ALLOCATOR=setting`` if given."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(ENV) and k != "LD_PRELOAD"}
    if setting is not None:
        env[ENV] = setting
    return env


@functools.cache  # fixed for the process's life (a change of allocator replaces the process)
def loaded() -> str:
    """The allocator this process runs on: the file name of a preloaded tcmalloc, jemalloc or
    mimalloc library, else "system malloc"."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:  # not Linux
        return "system malloc"
    for line in maps.splitlines():
        name = line.rsplit("/", 1)[-1]
        if name.startswith(("libtcmalloc", "libjemalloc", "libmimalloc")):
            return name
    return "system malloc"


def preload() -> None:
    """Executes this process again with the chosen allocator preloaded, once; returns when it is
    already loaded, none is chosen or found, or this is not Linux. Call it first thing in an
    entry point (``if __name__ == "__main__"``), before work worth keeping: the process is
    replaced."""
    if not sys.platform.startswith("linux") or os.environ.get(_REEXECUTED):
        return
    try:
        library = choose()
    except AllocatorError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    if library is None or loaded() != "system malloc":
        return
    preloads = [p for p in os.environ.get("LD_PRELOAD", "").split(":") if p]
    env = dict(os.environ, LD_PRELOAD=":".join([library, *preloads]), **{_REEXECUTED: "1"})
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, sys.orig_argv, env)
