"""``data check``: a data folder audited whole against the contract, and its summary.

Reading a split checks each row (``ranking.datafolder``); what needs a whole split or the whole
folder is here: no duplicate item in a query, one query text per query_id, no query_id in two
splits (leakage), no empty split, and the summary a team reads before training (rows,
queries, items per query, labels, text lengths in characters and, with a tokenizer, tokens).

Duplicates are keyed on identity where the rows say it: a row with an ``item_id`` is one
(query_id, item_id) pair, and that pair twice is an error; two item_ids with the same text in
one query are two candidates (a catalogue may list a product twice), allowed and counted in
the summary, and a warning when their labels differ (the model sees one prompt with two
answers). A row without ``item_id`` is keyed on its text, so a text repeated in a query is an
error unless every row sharing it has an item_id.

One streaming pass per split: per query a few integers, per row about 29 bytes (two 64-bit
hashes, its position, its label, whether it has an item_id) for the duplicate checks, and a
bounded sample of texts for the lengths.
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
    first row) plus, per row, 64-bit hashes of (query_id, item) and (query_id, item_id), its
    position, label and whether it has an item_id; sorted once at the end for the duplicate
    checks."""

    def __init__(self, path: Path, seed: int):
        self.path = path
        self.queries: dict[str, list[int]] = {}  # query_id -> [rows, query hash, first pos]
        self.rows = 0
        self.label_sum = 0.0
        self.soft = 0
        self.with_p = 0
        self.shared_text = 0  # rows whose item text another item_id of their query also has
        self.label_conflicts = 0  # such texts whose rows disagree on the label
        self.query_len = _Lengths(seed)
        self.item_len = _Lengths(seed + 1)
        self._text: list[np.ndarray] = []  # hash of (query_id, item)
        self._ident: list[np.ndarray] = []  # hash of (query_id, item_id); 0 without item_id
        self._has_id: list[np.ndarray] = []
        self._labels: list[np.ndarray] = []
        self._positions: list[np.ndarray] = []

    def add_batch(self, positions: list[int], rows: list[dict]) -> None:
        text = np.empty(len(rows), dtype=np.uint64)
        ident = np.zeros(len(rows), dtype=np.uint64)
        has_id = np.zeros(len(rows), dtype=bool)
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
            text[i] = _hash64(f"{qid}\x00{row['item']}")
            if row.get("item_id") is not None:
                ident[i] = _hash64(f"{qid}\x00{row['item_id']}")
                has_id[i] = True
            self.item_len.add(row["item"])
            label = row["label"]
            self.label_sum += label
            self.soft += label not in (0, 1)
            self.with_p += row.get("p") is not None
        self.rows += len(rows)
        self._text.append(text)
        self._ident.append(ident)
        self._has_id.append(has_id)
        self._labels.append(np.array([r["label"] for r in rows], dtype=np.float32))
        self._positions.append(np.asarray(positions, dtype=np.int64))

    def check_duplicates(self) -> None:
        """Raises at the earliest row repeating a (query_id, item_id) pair, or a (query_id,
        item) pair where not every row of that text has an item_id; counts the item texts that
        several item_ids of one query share, and those whose labels disagree."""
        if not self._text:
            return
        pos = np.concatenate(self._positions)
        has_id = np.concatenate(self._has_id)
        ident = np.concatenate(self._ident)
        self._raise_first(
            ident[has_id], pos[has_id], "item_id", "duplicate (query_id, item_id) pair"
        )
        text = np.concatenate(self._text)
        labels = np.concatenate(self._labels)
        order = np.lexsort((pos, text))
        ts, ps, ids, ls = text[order], pos[order], has_id[order], labels[order]
        starts = np.flatnonzero(np.r_[True, ts[1:] != ts[:-1]])
        sizes = np.diff(np.r_[starts, len(ts)])
        shared = sizes > 1
        all_ids = np.logical_and.reduceat(ids, starts)
        bad = shared & ~all_ids
        if bad.any():
            # the earliest row that repeats an earlier text of a group without item_ids
            seconds = starts[bad] + 1
            k = np.argmin(ps[seconds])
            raise DataError(
                f"{row_location(self.path, int(ps[seconds[k]]))}: field 'item': duplicate "
                f"(query_id, item) pair, same as {row_unit(self.path)} "
                f"{int(ps[starts[bad][k]])} (give each row an item_id if they are different "
                "items)"
            )
        spread = np.maximum.reduceat(ls, starts) - np.minimum.reduceat(ls, starts)
        self.shared_text = int(sizes[shared].sum())
        self.label_conflicts = int((shared & (spread > 0)).sum())

    def _raise_first(self, hashes: np.ndarray, pos: np.ndarray, name: str, what: str) -> None:
        """Raises at the earliest row whose hash an earlier row has."""
        if not len(hashes):
            return
        order = np.lexsort((pos, hashes))
        hs, ps = hashes[order], pos[order]
        dup = np.flatnonzero(hs[1:] == hs[:-1]) + 1
        if not len(dup):
            return
        j = dup[np.argmin(ps[dup])]
        first = ps[np.searchsorted(hs, hs[j])]
        raise DataError(
            f"{row_location(self.path, int(ps[j]))}: field {name!r}: {what}, same as "
            f"{row_unit(self.path)} {int(first)}"
        )

    def warnings(self) -> list[str]:
        """What ``data check`` reports without failing."""
        if not self.label_conflicts:
            return []
        return [
            f"{self.path}: {self.label_conflicts:,} (query_id, item text) pairs with several "
            "item_ids disagree on the label (one prompt, two answers)"
        ]

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
            "shared_item_text": self.shared_text,
            "label_conflicts": self.label_conflicts,
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
    summary: dict = {"folder": str(folder), "meta": bool(meta), "splits": {}, "warnings": []}
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
        summary["warnings"] += checker.warnings()
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
        ("items sharing text (other ids)", lambda s: f"{s['shared_item_text']:,}"),
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
    warnings = [f"warning: {w}" for w in summary.get("warnings", [])]
    return f"{summary['folder']}: OK\n" + "\n".join(out + warnings)
