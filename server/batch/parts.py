"""The output folder of a batch run: numbered Parquet parts and ``_batch_manifest.json``.

A part is written to a temporary file and renamed into place, then recorded in the manifest
(itself written atomically); so after a kill at any point the manifest lists only complete
parts, and a rerun with the same identity (model, input, shard, part size, engine settings)
scores only what is missing and ends with the same parts an uninterrupted run writes. A rerun
with another identity is refused unless told to start over: mixing parts of two models or two
inputs would be silently wrong.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ranking.atomic import atomic_write_text, partial_path
from ranking.manifest import file_sha256

MANIFEST = "_batch_manifest.json"  # "_": readers of the folder as a Parquet dataset skip it


class BatchError(ValueError):
    """A run that cannot go on as asked (another run's output, an incomplete shard)."""


def part_name(k: int) -> str:
    return f"part-{k:05d}.parquet"


def shard_folder(output: Path, shard: tuple[int, int]) -> Path:
    """Where a shard writes: the output itself for an unsharded run, else ``shard-I-of-N``."""
    i, n = shard
    return output if n == 1 else output / f"shard-{i:04d}-of-{n:04d}"


class Output:
    def __init__(self, folder: Path, identity: dict, restart: bool = False):
        self.folder, self.identity = folder, identity
        self.path = folder / MANIFEST
        folder.mkdir(parents=True, exist_ok=True)
        self.body = {"version": 1, "identity": identity, "parts": {}, "complete": False}
        if self.path.is_file():
            old = json.loads(self.path.read_text())
            differs = sorted(
                k for k in set(identity) | set(old.get("identity", {}))
                if identity.get(k) != old.get("identity", {}).get(k)
            )  # fmt: skip
            if differs and not restart:
                raise BatchError(
                    f"{folder} holds a run that differs in {', '.join(differs)}: rerun with "
                    "--restart to start over there, or write to another --output"
                )
            if not differs:
                self.body = old
                self.body["complete"] = False
                self._drop_bad_parts()
        if restart or not self.path.is_file():
            self._clear()
        self._save()

    def _clear(self) -> None:
        for p in self.folder.glob("part-*.parquet"):
            p.unlink()
        self.body["parts"] = {}

    def _drop_bad_parts(self) -> None:
        """A listed part whose file is gone or changed is scored again."""
        for key, info in list(self.body["parts"].items()):
            f = self.folder / part_name(int(key))
            if (
                not f.is_file()
                or f.stat().st_size != info["bytes"]
                or file_sha256(f) != info["sha256"]
            ):
                del self.body["parts"][key]

    def _save(self) -> None:
        atomic_write_text(self.path, json.dumps(self.body, indent=2) + "\n")

    def done(self, k: int) -> bool:
        return str(k) in self.body["parts"]

    def write(self, k: int, table, errors: int) -> None:
        """Writes part ``k`` (a pyarrow table) and records it."""
        import pyarrow.parquet as pq

        final = self.folder / part_name(k)
        tmp = partial_path(final)
        pq.write_table(table, tmp)
        os.replace(tmp, final)
        self.body["parts"][str(k)] = {
            "rows": table.num_rows,
            "errors": errors,
            "bytes": final.stat().st_size,
            "sha256": file_sha256(final),
        }
        self._save()

    def finish(self, parts: int, totals: dict) -> None:
        """Marks the run complete: every one of its ``parts`` parts is written."""
        for stale in self.folder.glob("part-*.parquet"):  # parts of a longer earlier plan
            if int(stale.stem.split("-")[1]) >= parts:
                stale.unlink()
        self.body["parts"] = {k: v for k, v in self.body["parts"].items() if int(k) < parts}
        self.body.update(complete=True, totals=totals)
        self._save()


def check_union(output: Path, input_rows: int) -> dict:
    """Whether the complete shards under ``output`` (or the unsharded run there) cover every
    one of the input's ``input_rows`` rows exactly once; ``BatchError`` names what is wrong."""
    import numpy as np
    import pyarrow.parquet as pq

    manifests = sorted(output.glob(f"shard-*/{MANIFEST}")) or sorted(output.glob(MANIFEST))
    if not manifests:
        raise BatchError(f"{output} holds no batch run ({MANIFEST} not found)")
    seen = np.zeros(input_rows, dtype=np.int64)
    shards = set()
    for mf in manifests:
        body = json.loads(mf.read_text())
        if not body.get("complete"):
            raise BatchError(f"{mf.parent} is not complete: rerun its shard")
        shards.add(tuple(body["identity"]["shard"]))
        for key in body["parts"]:
            rows = pq.read_table(mf.parent / part_name(int(key)), columns=["row"])["row"]
            np.add.at(seen, rows.to_numpy(), 1)
    n = {s[1] for s in shards}
    if len(n) != 1 or len(shards) != next(iter(n)):
        have = sorted(s[0] for s in shards)
        raise BatchError(f"shards {have} of {sorted(n)} found: every shard must be complete")
    missing, twice = int((seen == 0).sum()), int((seen > 1).sum())
    if missing or twice:
        raise BatchError(f"{missing} input rows have no score and {twice} have more than one")
    return {"shards": len(shards), "rows": input_rows}
