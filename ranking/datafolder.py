"""The dataset contract: a folder of ``train`` / ``validation`` / ``test`` splits, read lazily.

Every producer (the synthetic generator, the MovieLens builder, a team's own logs) writes this
shape and every consumer reads it through here, so a team's data needs no special case:

- one file per split, ``{split}.jsonl`` or ``{split}.parquet``, one row per (query, item) pair;
- required fields: ``query_id`` (str or int), ``query`` (text), ``item`` (text), ``label``
  (0/1, or a soft label in [0, 1]);
- optional fields: ``item_id`` (str or int), ``weight`` (> 0), ``p`` (a true probability, in
  [0, 1]), ``ts`` (a number, e.g. seconds since the epoch), ``instruction`` (text);
- any other column is allowed and passed through unchecked (producers keep structured columns
  there, e.g. a user id a non-LLM baseline joins on);
- an optional ``meta.json`` describes the folder (source, licence, how it was built).

Splits may be several GB, so nothing here loads a split whole: ``iter_rows`` yields batches
(pyarrow's ``iter_batches`` for Parquet, line by line for JSONL), each row checked against the
contract (``check_row``) as it is read. A problem raises ``DataError`` naming the file, the row
(1-based line for JSONL, 0-based row index for Parquet) and the field, because a team fixing
its export needs to find the row. The checks that need a whole split or folder (duplicates,
leakage, the summary of ``data check``) are ``ranking.data_audit``'s.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

SPLITS = ("train", "validation", "test")
FORMATS = ("jsonl", "parquet")
REQUIRED = ("query_id", "query", "item", "label")
OPTIONAL = ("item_id", "weight", "p", "ts", "instruction")
TEXT_FIELDS = ("query", "item", "instruction")
DEFAULT_BATCH = 4096


class DataError(ValueError):
    """A data folder breaks the contract; the message names the file, the row and the field."""


class MissingSplitError(DataError, FileNotFoundError):
    """A split file is absent (also a FileNotFoundError, for callers that catch that)."""


# ---- locating and reading ----------------------------------------------------------------------
def split_path(folder: str | Path, split: str) -> Path:
    """The file holding ``split``: exactly one of ``{split}.jsonl`` / ``{split}.parquet``."""
    folder = Path(folder)
    if not folder.is_dir():
        raise MissingSplitError(f"data folder {folder} does not exist")
    found = [folder / f"{split}.{ext}" for ext in FORMATS if (folder / f"{split}.{ext}").is_file()]
    if not found:
        raise MissingSplitError(f"no {split} split in {folder} (expected {split}.jsonl or "
                                f"{split}.parquet)")  # fmt: skip
    if len(found) > 1:
        raise DataError(f"{folder}: both {found[0].name} and {found[1].name}; keep one")
    return found[0]


def list_splits(folder: str | Path) -> list[str]:
    """The contract's splits first, then any extra split file (e.g. ``test_llo``), sorted."""
    folder = Path(folder)
    extra = sorted(
        {p.name.rsplit(".", 1)[0] for ext in FORMATS for p in folder.glob(f"*.{ext}")} - set(SPLITS)
    )
    return [*SPLITS, *extra]


def row_unit(path: Path) -> str:
    """What a position counts in ``path``: JSONL lines or Parquet rows."""
    return "line" if path.suffix == ".jsonl" else "row"


def row_location(path: Path, pos: int) -> str:
    """A row's place as error messages name it, e.g. ``train.jsonl line 12``."""
    return f"{path} {row_unit(path)} {pos}"


def iter_located(path: Path, batch_size: int) -> Iterator[tuple[list[int], list[dict]]]:
    """Batches of (row positions, rows): JSONL line numbers (1-based) or Parquet row indices."""
    if path.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        start = 0
        try:
            for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_size):
                yield list(range(start, start + batch.num_rows)), _batch_rows(batch, path, start)
                start += batch.num_rows
        except pa.ArrowException as exc:
            raise DataError(f"{path}: unreadable Parquet after row {start}: {exc}") from None
        return
    positions: list[int] = []
    rows: list[dict] = []
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise DataError(
                    f"{path} line {lineno}: not UTF-8 (byte {raw[exc.start]:#04x} at column "
                    f"{exc.start + 1})"
                ) from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path} line {lineno}: bad JSON: {exc.msg} at column "
                                f"{exc.colno}") from None  # fmt: skip
            if not isinstance(row, dict):
                raise DataError(f"{path} line {lineno}: a row must be a JSON object, got "
                                f"{type(row).__name__}")  # fmt: skip
            positions.append(lineno)
            rows.append(row)
            if len(rows) == batch_size:
                yield positions, rows
                positions, rows = [], []
    if rows:
        yield positions, rows


def _batch_rows(batch, path: Path, start: int) -> list[dict]:
    """A record batch as dicts; a string that is not UTF-8 is found and named by its row."""
    try:
        return batch.to_pylist()
    except UnicodeDecodeError:
        for i in range(batch.num_rows):
            try:
                batch.slice(i, 1).to_pylist()
            except UnicodeDecodeError:
                cols = [c for c in batch.schema.names if _bad_utf8(batch.slice(i, 1), c)]
                raise DataError(
                    f"{path} row {start + i}: field {cols[0] if cols else '?'!r}: not UTF-8"
                ) from None
        raise


def _bad_utf8(row, column: str) -> bool:
    try:
        row.column(column).to_pylist()
    except UnicodeDecodeError:
        return True
    return False


def iter_rows(
    folder: str | Path, split: str, batch_size: int = DEFAULT_BATCH, validate: bool = True
) -> Iterator[list[dict]]:
    """Lazily yields the rows of one split in batches of ``batch_size`` (the last may be short).

    With ``validate`` each row is checked against the contract (fields, types, ranges, empty
    text); the checks that need the whole split (duplicates, leakage) are
    ``ranking.data_audit.check_folder``'s.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    path = split_path(folder, split)
    for positions, rows in iter_located(path, batch_size):
        if validate:
            for pos, row in zip(positions, rows, strict=True):
                check_row(row, path, pos)
        yield rows


def read_split(folder: str | Path, split: str) -> list[dict]:
    """The whole split as a list, for consumers of small splits (evaluation, calibration)."""
    return [row for batch in iter_rows(folder, split) for row in batch]


def first_queries(folder: str | Path, split: str, n: int) -> list[dict]:
    """The rows of the first ``n`` query_ids of a split (in file order), wherever in the split
    their rows are: one streaming pass that holds only those rows (requests, workloads)."""
    keep: set = set()
    out = []
    for batch in iter_rows(folder, split):
        for row in batch:
            qid = row["query_id"]
            if qid not in keep and len(keep) < n:
                keep.add(qid)
            if qid in keep:
                out.append(row)
    return out


def head_rows(folder: str | Path, split: str, n: int) -> list[dict]:
    """The first ``n`` rows of a split, reading no further."""
    out: list[dict] = []
    for batch in iter_rows(folder, split, batch_size=min(DEFAULT_BATCH, max(1, n))):
        out.extend(batch[: n - len(out)])
        if len(out) >= n:
            break
    return out


def sample_rows(folder: str | Path, split: str, n: int, seed: int = 0) -> list[dict]:
    """``n`` rows drawn uniformly without replacement from a split (all of them if it has fewer),
    in one streaming pass holding ``n`` rows (reservoir sampling): calibration sets."""
    rng = random.Random(seed)
    sample: list[dict] = []
    seen = 0
    for batch in iter_rows(folder, split):
        for row in batch:
            seen += 1
            if len(sample) < n:
                sample.append(row)
            else:
                j = rng.randrange(seen)
                if j < n:
                    sample[j] = row
    return sample


def read_meta(folder: str | Path) -> dict:
    """``meta.json`` if the folder has one, else ``{}``."""
    path = Path(folder) / "meta.json"
    if not path.is_file():
        return {}
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: not a JSON file: {exc}") from None
    if not isinstance(meta, dict):
        raise DataError(f"{path}: must hold a JSON object, got {type(meta).__name__}")
    return meta


# ---- one row -----------------------------------------------------------------------------------
def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _type_name(v: Any) -> str:
    return "null" if v is None else type(v).__name__


def check_row(row: dict, path: str | Path, pos: int, labelled: bool = True) -> None:
    """Raises ``DataError`` if one row breaks the contract (``pos`` as in ``row_location``).
    ``labelled=False``: rows to be scored, whose ``label`` may be absent (checked if present)."""
    path = Path(path)

    def fail(name: str, problem: str) -> None:
        raise DataError(f"{row_location(path, pos)}: field {name!r}: {problem}")

    for name in REQUIRED:
        if row.get(name) is None and (labelled or name != "label"):
            fail(name, "missing")
    qid = row["query_id"]
    if not (isinstance(qid, str | int) and not isinstance(qid, bool)):
        fail("query_id", f"must be a string or an integer, got {_type_name(qid)}")
    if isinstance(qid, str) and not qid.strip():
        fail("query_id", "empty")
    for name in TEXT_FIELDS:
        v = row.get(name)
        if v is None and name not in REQUIRED:
            continue
        if not isinstance(v, str):
            fail(name, f"must be text, got {_type_name(v)}")
        if not v.strip():
            fail(name, "empty text")
    label = row.get("label")
    if label is None:  # only where labelled=False
        pass
    elif not _is_number(label):
        fail("label", f"must be a number (0/1 or a soft label in [0, 1]), got {_type_name(label)}")
    elif not 0.0 <= label <= 1.0:
        fail("label", f"{label!r} is out of range (0/1 or a soft label in [0, 1])")
    elif isinstance(label, int) and label not in (0, 1):
        fail("label", f"integer labels must be 0 or 1, got {label}")
    item_id = row.get("item_id")
    if item_id is not None and not (
        isinstance(item_id, str | int) and not isinstance(item_id, bool)
    ):
        fail("item_id", f"must be a string or an integer, got {_type_name(item_id)}")
    for name in ("weight", "p", "ts"):
        v = row.get(name)
        if v is None:
            continue
        if not _is_number(v):
            fail(name, f"must be a number, got {_type_name(v)}")
        if not math.isfinite(v):
            fail(name, f"{v!r} is not finite")
    if row.get("weight") is not None and not row["weight"] > 0:
        fail("weight", f"{row['weight']!r} must be > 0")
    if row.get("p") is not None and not 0.0 <= row["p"] <= 1.0:
        fail("p", f"{row['p']!r} is out of range [0, 1]")
