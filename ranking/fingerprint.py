"""Content fingerprints of files and folders: what caches of derived results are keyed on.

A path or a modification time says nothing about content: a teacher retrained at the same
path, or a data folder rebuilt in place, must not reuse results computed from the old one.
So stage fingerprints, evaluation caches and checkpoint manifests key on a sha256 of the
bytes. Hashing a multi-GB checkpoint again on every call would be slow, so each file's digest
is cached in-process by (path, size, mtime_ns, inode): a rewritten file changes one of them
(on filesystems with coarse timestamps, a same-size rewrite within one tick is the blind spot).
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import threading
from collections.abc import Iterable
from pathlib import Path

CHUNK = 1 << 20
DEFAULT_LENGTH = 16

_cache: dict[tuple[str, int, int, int], str] = {}
_lock = threading.Lock()


def file_digest(path: str | Path) -> str:
    """Full sha256 hex of one file's bytes, streamed in 1 MiB chunks, cached by stat."""
    path = Path(path)
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns, st.st_ino)
    with _lock:
        hit = _cache.get(key)
    if hit is not None:
        return hit
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    digest = h.hexdigest()
    with _lock:
        _cache[key] = digest
    return digest


def _files(folder: Path, exclude: Iterable[str]) -> list[str]:
    """Relative POSIX paths of the files under ``folder`` (following links), sorted."""
    patterns = list(exclude)
    out = []
    for root, dirs, files in os.walk(folder, followlinks=True):
        dirs.sort()
        for name in files:
            rel = (Path(root) / name).relative_to(folder).as_posix()
            if not any(fnmatch.fnmatch(rel, p) or fnmatch.fnmatch(name, p) for p in patterns):
                out.append(rel)
    return sorted(out)


def content_hash(
    path: str | Path, length: int = DEFAULT_LENGTH, exclude: Iterable[str] = ()
) -> str:
    """Short hex sha256 of a file's bytes, or of a folder's files (sorted relative paths and
    contents), so equal content hashes equal wherever it lives.

    ``exclude``: glob patterns matched against a file's relative path or its name (e.g.
    ``"*.lock"``) for files that do not define the content.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"cannot fingerprint {path}: no such file or folder")
    h = hashlib.sha256()
    if path.is_file():
        h.update(b"file\0" + file_digest(path).encode())
    else:
        h.update(b"folder\0")
        for rel in _files(path, exclude):
            h.update(rel.encode() + b"\0" + file_digest(path / rel).encode() + b"\n")
    return h.hexdigest()[:length]


def clear_cache() -> None:
    """Forget cached file digests (tests; a process that rewrites files behind the stat)."""
    with _lock:
        _cache.clear()
