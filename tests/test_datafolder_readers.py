"""The streaming readers consumers use: the first queries of a split, its first rows, and a
uniform sample of rows (calibration) in one pass."""

from __future__ import annotations

import json

from ranking.datafolder import first_queries, head_rows, sample_rows
from ranking.dataset import requests_from_split


def write(folder, rows) -> None:
    (folder / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def row(q: str, i: int) -> dict:
    return {"query_id": q, "query": f"query {q}", "item": f"item {i}", "label": i % 2}


def test_first_queries_hold_all_rows_of_a_query_wherever_they_are(tmp_path):
    write(tmp_path, [row("a", 0), row("b", 1), row("c", 2), row("a", 3), row("b", 4)])
    got = first_queries(tmp_path, "test", 2)
    assert [(r["query_id"], r["item"]) for r in got] == [
        ("a", "item 0"), ("b", "item 1"), ("a", "item 3"), ("b", "item 4")
    ]  # fmt: skip
    assert requests_from_split(tmp_path, "test", 1) == [("query a", ["item 0", "item 3"])]


def test_head_rows_stop_at_n(tmp_path):
    write(tmp_path, [row("a", i) for i in range(10)])
    assert [r["item"] for r in head_rows(tmp_path, "test", 3)] == ["item 0", "item 1", "item 2"]
    assert len(head_rows(tmp_path, "test", 50)) == 10


def test_sample_rows_draw_from_the_whole_split_reproducibly(tmp_path):
    write(tmp_path, [row(f"q{i}", i) for i in range(10_000)])
    a = sample_rows(tmp_path, "test", 50, seed=1)
    assert len(a) == 50 and len({r["query_id"] for r in a}) == 50
    assert a == sample_rows(tmp_path, "test", 50, seed=1)
    assert a != sample_rows(tmp_path, "test", 50, seed=2)
    assert max(int(r["item"].split()[1]) for r in a) > 5_000  # not just the head of the file
    assert len(sample_rows(tmp_path, "test", 20_000)) == 10_000
