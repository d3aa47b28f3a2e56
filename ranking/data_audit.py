"""``data check``: a data folder audited whole against the contract, and its summary.

Reading a split checks each row (``ranking.datafolder``); what needs a whole split or the whole
folder is here: no duplicate (query_id, item) pair, one query text per query_id, no query_id in
two splits (leakage), no empty split, and the summary a team reads before training (rows,
queries, items per query, labels, text lengths in characters and, with a tokenizer, tokens).
One streaming pass per split: per query a few integers, per row 16 bytes (a 64-bit hash and
its position) for the duplicate check, and a bounded sample of texts for the lengths.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ranking.datafolder import (
    DEFAULT_BATCH,
    DataError,
    MissingSplitError,
    check_row,
    iter_located,
    list_splits,
    read_meta,
    row_location,
    row_unit,
    split_path,
)

TOKEN_SAMPLE = 2000  # texts per kind tokenized for the token-length summary


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
                        f"{row_location(self.path, pos)}: field 'query': query_id {qid!r} has a "
                        f"different query text than at {row_unit(self.path)} {state[2]} (one "
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
            f"{row_location(self.path, int(ps[j]))}: field 'item': duplicate (query_id, item) "
            f"pair, same as {row_unit(self.path)} {int(first)}"
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
        for positions, rows in iter_located(path, batch_size):
            checker.add_batch(positions, rows)
        checker.check_duplicates()
        if not checker.rows:
            raise DataError(f"{path}: no rows")
        for qid, state in checker.queries.items():
            if qid in seen:
                raise DataError(
                    f"{row_location(path, state[2])}: field 'query_id': {qid!r} is also in the "
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
