"""Atomic writes: a file or folder is written under a temporary sibling name and renamed into
place when complete, so a crash never leaves a half-written one that looks finished.

The temporary name is the final one plus ``.partial``; a leftover from a killed write is
removed by the next write of the same path.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

PARTIAL_SUFFIX = ".partial"


def partial_path(final: str | Path) -> Path:
    """Where ``final`` is written until it is complete."""
    final = Path(final)
    return final.with_name(final.name + PARTIAL_SUFFIX)


def discard(path: str | Path) -> None:
    """Removes an unfinished folder ``path`` and the partial folder of a write into it."""
    for leftover in (Path(path), partial_path(path)):
        if leftover.exists():
            shutil.rmtree(leftover)


def replace_dir(done: str | Path, final: str | Path) -> None:
    """Moves the complete folder ``done`` to ``final``. A folder already at ``final`` is renamed
    aside (``.<name>.stale``) before it is deleted, so ``final`` is never a half-deleted one."""
    done, final = Path(done), Path(final)
    if final.exists():
        stale = final.with_name(f".{final.name}.stale")
        if stale.exists():
            shutil.rmtree(stale)
        os.replace(final, stale)
        shutil.rmtree(stale)
    os.replace(done, final)


@contextmanager
def atomic_dir(final: str | Path) -> Iterator[Path]:
    """Yields an empty partial folder to write ``final``'s files into; when the block ends
    without an exception it replaces ``final`` (``replace_dir``). After an exception the
    partial folder stays until the next write of ``final``."""
    tmp = partial_path(final)
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    yield tmp
    replace_dir(tmp, final)


@contextmanager
def atomic_file(final: str | Path) -> Iterator[Path]:
    """Yields the partial path to write ``final`` at (by any writer: ``torch.save``, an open
    file); when the block ends without an exception it replaces ``final``."""
    final = Path(final)
    tmp = partial_path(final)
    yield tmp
    os.replace(tmp, final)


def atomic_write_text(final: str | Path, text: str, encoding: str | None = None) -> Path:
    """Writes ``text`` to ``final`` atomically."""
    with atomic_file(final) as tmp:
        tmp.write_text(text, encoding=encoding)
    return Path(final)
