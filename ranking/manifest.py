"""Checkpoint integrity: ``manifest.json`` lists the size and sha256 of every file in a folder.

A checkpoint copied to a volume, synced from a bucket or written by a job that was killed can be
truncated or corrupted in ways a loader may not notice (a safetensors file cut at a tensor
boundary still parses). The manifest is written last, after every other file, so verifying it
before loading proves the folder is what the writer produced. Files not in the manifest are
allowed (a report or a plot added next to the weights later); a folder without a manifest is
reported with its own exception, so the caller decides whether an old checkpoint is acceptable.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path, PurePosixPath

from ranking.atomic import atomic_write_text, partial_path
from ranking.errors import CheckpointError

MANIFEST_FILE = "manifest.json"
MANIFEST_VERSION = 1
_CHUNK = 1 << 20  # hashing reads 1 MiB at a time: constant memory for multi-GB weight files


class ManifestMissing(CheckpointError):
    """The folder has no ``manifest.json``: written before manifests existed, or by another tool."""


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file, streamed."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _listed_files(root: Path) -> list[Path]:
    """Every regular file under ``root`` except the manifest (and its temporary), sorted."""
    skip = {MANIFEST_FILE, partial_path(MANIFEST_FILE).name}
    return sorted(
        p for p in root.rglob("*") if p.is_file() and p.relative_to(root).as_posix() not in skip
    )


def write_manifest(path: str | Path) -> Path:
    """Writes ``<path>/manifest.json`` (atomically) covering every file now in the folder.

    Call it after the last file of the checkpoint is written: a file added later is not
    covered (and not an error)."""
    root = Path(path)
    if not root.is_dir():
        raise CheckpointError(f"cannot write a manifest: {root} is not a folder")
    files = {
        p.relative_to(root).as_posix(): {"size": p.stat().st_size, "sha256": file_sha256(p)}
        for p in _listed_files(root)
    }
    body = {"version": MANIFEST_VERSION, "algorithm": "sha256", "files": files}
    return atomic_write_text(
        root / MANIFEST_FILE, json.dumps(body, indent=2, sort_keys=True) + "\n"
    )


def read_manifest(path: str | Path) -> dict[str, dict]:
    """The manifest's ``{relative path: {"size", "sha256"}}``; raises ``ManifestMissing`` when
    there is none and ``CheckpointError`` when it is unreadable."""
    root = Path(path)
    mf = root / MANIFEST_FILE
    if not root.is_dir():
        raise CheckpointError(f"checkpoint folder {root} does not exist")
    if not mf.is_file():
        raise ManifestMissing(f"{root} has no {MANIFEST_FILE}: its integrity cannot be checked")
    try:
        body = json.loads(mf.read_text())
        files = body["files"]
        if body.get("algorithm", "sha256") != "sha256" or not isinstance(files, dict):
            raise ValueError("expected {'algorithm': 'sha256', 'files': {...}}")
        for name, entry in files.items():
            rel = PurePosixPath(name)
            if rel.is_absolute() or ".." in rel.parts:
                raise ValueError(f"entry {name!r} points outside the folder")
            if not isinstance(entry.get("size"), int) or not isinstance(entry.get("sha256"), str):
                raise ValueError(f"entry {name!r} lacks an integer size or a sha256 string")
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise CheckpointError(f"{mf} is corrupt: {exc}") from exc
    return files


WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "config.json")


def weight_hashes(path: str | Path) -> dict[str, str]:
    """sha256 of the files that make a checkpoint's scores (weights and config), by name: what a
    file fitted to one checkpoint (a score calibrator, a score reference) records, so that it
    is refused beside other weights. Taken from the manifest where there is one (no hashing),
    else computed."""
    root = Path(path)
    names = sorted({p.name for pattern in WEIGHT_PATTERNS for p in root.glob(pattern)})
    try:
        listed = read_manifest(root)
    except ManifestMissing:
        listed = {}
    return {n: listed[n]["sha256"] if n in listed else file_sha256(root / n) for n in names}


def verify_manifest(path: str | Path) -> None:
    """Checks every file the manifest lists: present, same size, same sha256.

    Raises ``ManifestMissing`` without a manifest, else ``CheckpointError`` naming each bad
    file (missing / truncated or grown / corrupted). Sizes are checked for all files before any
    hashing, so an incomplete copy fails at once."""
    root = Path(path)
    files = read_manifest(root)
    problems = []
    for name, entry in sorted(files.items()):
        f = root / name
        if not f.is_file():
            problems.append(f"{name} is missing")
            continue
        size = f.stat().st_size
        if size < entry["size"]:
            problems.append(f"{name} is truncated ({size} of {entry['size']} bytes)")
        elif size > entry["size"]:
            problems.append(f"{name} has {size} bytes, the manifest says {entry['size']}")
    if not problems:
        for name, entry in sorted(files.items()):
            if file_sha256(root / name) != entry["sha256"]:
                problems.append(f"{name} is corrupted (sha256 differs from the manifest)")
    if problems:
        raise CheckpointError(
            f"checkpoint {root} fails its {MANIFEST_FILE}: " + "; ".join(problems)
        )
