"""The pairs to score: a stream of query groups from a data-folder split or a JSONL / Parquet
file in the data contract's shape (``query_id``, ``query``, ``item``; ``item_id``, ``label`` and
any other columns optional and passed through)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ranking.datafolder import DataError, check_row, iter_located, split_path
from ranking.manifest import file_sha256

READ_BATCH = 4096  # rows read at a time: memory does not grow with the file


@dataclass(frozen=True)
class Group:
    """Consecutive input rows of one query: their 0-based positions in the input and the rows."""

    rows: list[dict]
    positions: list[int]

    @property
    def query_id(self):
        return self.rows[0]["query_id"]


def resolve(input_path: str | None, data: str | None, split: str | None) -> Path:
    """The file to read: ``input_path``, or ``split`` of the data folder ``data``."""
    if input_path and data:
        raise DataError("give --input FILE or --data DIR --split NAME, not both")
    if input_path:
        p = Path(input_path)
        if p.suffix not in (".jsonl", ".parquet"):
            raise DataError(f"{p}: expected a .jsonl or .parquet file")
        if not p.is_file():
            raise DataError(f"{p}: no such file")
        return p
    if data:
        return split_path(data, split or "test")
    raise DataError("nothing to score: give --input FILE or --data DIR [--split NAME]")


def count_rows(path: Path) -> int:
    """Rows in the file (Parquet: from its metadata; JSONL: non-blank lines), for the ETA."""
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.ParquetFile(path).metadata.num_rows
    with path.open("rb") as f:
        return sum(1 for line in f if line.strip())


def content_hash(path: Path) -> str:
    return file_sha256(path)


def in_shard(query_id, shard: tuple[int, int]) -> bool:
    """Whether a query belongs to shard ``(i, n)``: sha256 of its id, so every process agrees
    (Python's ``hash`` is salted per process) and a query is never split."""
    i, n = shard
    if n == 1:
        return True
    digest = hashlib.sha256(str(query_id).encode()).digest()
    return int.from_bytes(digest[:8], "big") % n == i


def groups(path: Path, shard: tuple[int, int] = (0, 1)) -> Iterator[Group]:
    """The shard's query groups in input order. Each row is checked against the contract (label
    optional) as it is read: a bad one stops the run with the file, row and field. A query
    whose rows are not consecutive makes several groups (each scored; the query computed once
    per group)."""
    rows: list[dict] = []
    positions: list[int] = []
    index = 0
    for located, batch in iter_located(path, READ_BATCH):
        for pos, row in zip(located, batch, strict=True):
            check_row(row, path, pos, labelled=False)
            if rows and row["query_id"] != rows[0]["query_id"]:
                if in_shard(rows[0]["query_id"], shard):
                    yield Group(rows, positions)
                rows, positions = [], []
            rows.append(row)
            positions.append(index)
            index += 1
    if rows and in_shard(rows[0]["query_id"], shard):
        yield Group(rows, positions)
