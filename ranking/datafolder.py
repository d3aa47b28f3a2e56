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

Splits may be several GB, so nothing here loads a split whole to validate it: ``iter_rows``
yields batches (pyarrow's ``iter_batches`` for Parquet, line by line for JSONL) and
``check_folder`` makes one streaming pass per split. A problem raises ``DataError`` naming the
file, the row (1-based line for JSONL, 0-based row index for Parquet) and the field, because a
team fixing its export needs to find the row.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

SPLITS = ("train", "validation", "test")
FORMATS = ("jsonl", "parquet")
REQUIRED = ("query_id", "query", "item", "label")
OPTIONAL = ("item_id", "weight", "p", "ts", "instruction")
TEXT_FIELDS = ("query", "item", "instruction")
DEFAULT_BATCH = 4096
TOKEN_SAMPLE = 2000  # texts per kind tokenized for the token-length summary


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


def _unit(path: Path) -> str:
    return "line" if path.suffix == ".jsonl" else "row"


def _where(path: Path, pos: int) -> str:
    return f"{path} {_unit(path)} {pos}"


def _iter_located(path: Path, batch_size: int) -> Iterator[tuple[list[int], list[dict]]]:
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
    text); the checks that need the whole split (duplicates, leakage) are ``check_folder``'s.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    path = split_path(folder, split)
    for positions, rows in _iter_located(path, batch_size):
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


def check_row(row: dict, path: str | Path, pos: int) -> None:
    """Raises ``DataError`` if one row breaks the contract (``pos`` as in ``_where``)."""
    path = Path(path)

    def fail(name: str, problem: str) -> None:
        raise DataError(f"{_where(path, pos)}: field {name!r}: {problem}")

    for name in REQUIRED:
        if row.get(name) is None:
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
    label = row["label"]
    if not _is_number(label):
        fail("label", f"must be a number (0/1 or a soft label in [0, 1]), got {_type_name(label)}")
    if not 0.0 <= label <= 1.0:
        fail("label", f"{label!r} is out of range (0/1 or a soft label in [0, 1])")
    if isinstance(label, int) and label not in (0, 1):
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


# ---- the whole folder --------------------------------------------------------------------------
def _hash64(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little")


@dataclass
class _Lengths:
    """Exact count / mean / max of text lengths, plus a bounded reservoir sample of the texts
    for percentiles and token counts."""

    seed: int
    size: int = TOKEN_SAMPLE
    n: int = 0
    total: int = 0
    max: int = 0
    sample: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)

    def add(self, text: str) -> None:
        self.n += 1
        self.total += len(text)
        self.max = max(self.max, len(text))
        if len(self.sample) < self.size:
            self.sample.append(text)
        else:
            j = self._rng.randrange(self.n)
            if j < self.size:
                self.sample[j] = text

    def summary(self, tokenizer=None) -> dict:
        if not self.n:
            return {}
        chars = np.array([len(t) for t in self.sample])
        out = {
            "chars": {
                "mean": round(self.total / self.n, 1),
                "p95": int(np.percentile(chars, 95)),
                "max": self.max,
            }
        }
        if tokenizer is not None:
            ids = tokenizer(self.sample, add_special_tokens=False)["input_ids"]
            toks = np.array([len(x) for x in ids])
            out["tokens"] = {
                "mean": round(float(toks.mean()), 1),
                "p95": int(np.percentile(toks, 95)),
                "max": int(toks.max()),
                "sample": len(self.sample),
            }
        return out


class _SplitChecker:
    """One streaming pass over one split: per-query state (row count, hash of the query text,
    first row) plus 16 bytes per row for the duplicate check (a 64-bit hash of
    (query_id, item) and the row position), sorted once at the end."""

    def __init__(self, path: Path, seed: int):
        self.path = path
        self.queries: dict[str, list[int]] = {}  # query_id -> [rows, query hash, first pos]
        self.rows = 0
        self.label_sum = 0.0
        self.soft = 0
        self.with_p = 0
        self.query_len = _Lengths(seed)
        self.item_len = _Lengths(seed + 1)
        self._hashes: list[np.ndarray] = []
        self._positions: list[np.ndarray] = []

    def add_batch(self, positions: list[int], rows: list[dict]) -> None:
        hashes = np.empty(len(rows), dtype=np.uint64)
        for i, (pos, row) in enumerate(zip(positions, rows, strict=True)):
            check_row(row, self.path, pos)
            qid = str(row["query_id"])
            q_hash = _hash64(row["query"])
            state = self.queries.get(qid)
            if state is None:
                self.queries[qid] = [1, q_hash, pos]
                self.query_len.add(row["query"])
            else:
                if state[1] != q_hash:
                    raise DataError(
                        f"{_where(self.path, pos)}: field 'query': query_id {qid!r} has a "
                        f"different query text than at {_unit(self.path)} {state[2]} (one "
                        "query_id, one query)"
                    )
                state[0] += 1
            hashes[i] = _hash64(f"{qid}\x00{row['item']}")
            self.item_len.add(row["item"])
            label = row["label"]
            self.label_sum += label
            self.soft += label not in (0, 1)
            self.with_p += row.get("p") is not None
        self.rows += len(rows)
        self._hashes.append(hashes)
        self._positions.append(np.asarray(positions, dtype=np.int64))

    def check_duplicates(self) -> None:
        if not self._hashes:
            return
        h = np.concatenate(self._hashes)
        pos = np.concatenate(self._positions)
        order = np.lexsort((pos, h))
        hs, ps = h[order], pos[order]
        dup = np.flatnonzero(hs[1:] == hs[:-1]) + 1
        if not len(dup):
            return
        j = dup[np.argmin(ps[dup])]  # the earliest row that repeats an earlier one
        first = ps[np.searchsorted(hs, hs[j])]
        raise DataError(
            f"{_where(self.path, int(ps[j]))}: field 'item': duplicate (query_id, item) pair, "
            f"same as {_unit(self.path)} {int(first)}"
        )

    def summary(self, tokenizer=None) -> dict:
        per_query = np.array([s[0] for s in self.queries.values()]) if self.queries else None
        return {
            "file": self.path.name,
            "rows": self.rows,
            "queries": len(self.queries),
            "items_per_query": {
                "min": int(per_query.min()),
                "mean": round(float(per_query.mean()), 2),
                "max": int(per_query.max()),
            }
            if per_query is not None
            else {},
            "label_mean": round(self.label_sum / self.rows, 4) if self.rows else None,
            "soft_label_share": round(self.soft / self.rows, 4) if self.rows else None,
            "rows_with_p": self.with_p,
            "query_length": self.query_len.summary(tokenizer),
            "item_length": self.item_len.summary(tokenizer),
        }


def check_folder(
    folder: str | Path,
    tokenizer=None,
    splits: list[str] | None = None,
    batch_size: int = DEFAULT_BATCH,
) -> dict:
    """Validates a data folder against the contract and returns its summary.

    One streaming pass per split (``splits`` defaults to train, validation, test and any extra
    split file); raises ``DataError`` at the first problem. ``tokenizer`` (a HF tokenizer) adds
    token lengths over a bounded sample of the texts.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise MissingSplitError(f"no data folder at {folder}")
    meta = read_meta(folder)
    splits = splits or list_splits(folder)
    summary: dict = {"folder": str(folder), "meta": bool(meta), "splits": {}}
    seen: dict[str, str] = {}  # query_id -> the split that holds it
    for k, split in enumerate(splits):
        path = split_path(folder, split)
        checker = _SplitChecker(path, seed=2 * k)
        for positions, rows in _iter_located(path, batch_size):
            checker.add_batch(positions, rows)
        checker.check_duplicates()
        if not checker.rows:
            raise DataError(f"{path}: no rows")
        for qid, state in checker.queries.items():
            if qid in seen:
                raise DataError(
                    f"{_where(path, state[2])}: field 'query_id': {qid!r} is also in the "
                    f"{seen[qid]} split (leakage: a query belongs to one split)"
                )
        seen.update(dict.fromkeys(checker.queries, split))
        summary["splits"][split] = checker.summary(tokenizer)
    return summary


def format_summary(summary: dict) -> str:
    """The summary as a plain-text table, one column per split."""
    splits = summary["splits"]

    def length(s: dict, kind: str, unit: str) -> str:
        d = s[kind].get(unit)
        return f"{d['mean']:.0f} / {d['p95']} / {d['max']}" if d else "-"

    lines = [
        ("rows", lambda s: f"{s['rows']:,}"),
        ("queries", lambda s: f"{s['queries']:,}"),
        ("items/query min/mean/max", lambda s: "{min} / {mean} / {max}".format(
            **s["items_per_query"])),
        ("label mean", lambda s: f"{s['label_mean']:.3f}"),
        ("soft labels", lambda s: f"{s['soft_label_share']:.1%}"),
        ("rows with p", lambda s: f"{s['rows_with_p']:,}"),
        ("query chars mean/p95/max", lambda s: length(s, "query_length", "chars")),
        ("item chars mean/p95/max", lambda s: length(s, "item_length", "chars")),
    ]  # fmt: skip
    if any("tokens" in s["query_length"] for s in splits.values()):
        lines += [
            ("query tokens mean/p95/max", lambda s: length(s, "query_length", "tokens")),
            ("item tokens mean/p95/max", lambda s: length(s, "item_length", "tokens")),
        ]
    table = [["", *splits]] + [[name, *(fn(s) for s in splits.values())] for name, fn in lines]
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    out = [
        "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in table
    ]
    return f"{summary['folder']}: OK\n" + "\n".join(out)
