"""The dataset contract: each problem is caught and named by file, row and field; good folders
(JSONL, Parquet, the synthetic benchmark) pass; splits are read lazily."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from ranking.data_audit import check_folder, format_summary
from ranking.datafolder import DataError, MissingSplitError, iter_rows, read_split
from ranking.fingerprint import clear_cache, content_hash


def _rows(split: str, n_queries: int = 3, n_items: int = 4) -> list[dict]:
    return [
        {
            "query_id": f"{split}-{q}",
            "query": f"user {q} likes jazz and long walks",
            "item": f"item {j}: a record",
            "label": (q + j) % 2,
            "item_id": j,
        }
        for q in range(n_queries)
        for j in range(n_items)
    ]


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture
def folder(tmp_path) -> Path:
    for split in ("train", "validation", "test"):
        _write_jsonl(tmp_path / f"{split}.jsonl", _rows(split))
    return tmp_path


def _broken(folder: Path, row: int, change: dict) -> None:
    """Line ``row`` (1-based) of train.jsonl gets ``change`` (None values delete the key)."""
    rows = _rows("train")
    r = rows[row - 1]
    for k, v in change.items():
        if v is None:
            r.pop(k, None)
        else:
            r[k] = v
    _write_jsonl(folder / "train.jsonl", rows)


def _raises(folder: Path, *fragments: str) -> str:
    with pytest.raises(DataError) as info:
        check_folder(folder)
    msg = str(info.value)
    for f in fragments:
        assert f in msg, msg
    return msg


def test_good_jsonl_folder_passes_with_summary(folder):
    s = check_folder(folder)
    train = s["splits"]["train"]
    assert train["rows"] == 12 and train["queries"] == 3
    assert train["items_per_query"] == {"min": 4, "mean": 4.0, "max": 4}
    assert train["label_mean"] == 0.5 and train["soft_label_share"] == 0.0
    assert train["query_length"]["chars"]["max"] == len("user 0 likes jazz and long walks")
    assert "rows" in format_summary(s)


def test_good_parquet_folder_passes(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    for split in ("train", "validation", "test"):
        rows = _rows(split)
        rows[0]["label"] = 0.25  # a soft label
        pq.write_table(pa.Table.from_pylist(rows), tmp_path / f"{split}.parquet")
    s = check_folder(tmp_path)
    assert s["splits"]["test"]["rows"] == 12
    assert s["splits"]["test"]["soft_label_share"] == round(1 / 12, 4)
    assert read_split(tmp_path, "train")[0]["label"] == 0.25


def test_token_lengths_with_a_tokenizer(folder):
    from ranking.tokenizer import train_tokenizer

    tok = train_tokenizer([r["query"] + " " + r["item"] for r in _rows("train")], vocab_size=300)
    s = check_folder(folder, tokenizer=tok)
    toks = s["splits"]["train"]["query_length"]["tokens"]
    assert 0 < toks["mean"] <= toks["p95"] <= toks["max"]
    assert "query tokens" in format_summary(s)


def test_missing_field(folder):
    _broken(folder, 3, {"item": None})
    _raises(folder, "train.jsonl line 3", "'item'", "missing")


def test_wrong_type(folder):
    _broken(folder, 2, {"query": 17})
    _raises(folder, "train.jsonl line 2", "'query'", "must be text, got int")


def test_wrong_type_of_query_id(folder):
    _broken(folder, 2, {"query_id": [1]})
    _raises(folder, "train.jsonl line 2", "'query_id'", "string or an integer")


@pytest.mark.parametrize("label", [1.5, -0.1, 2])
def test_label_out_of_range(folder, label):
    _broken(folder, 5, {"label": label})
    _raises(folder, "train.jsonl line 5", "'label'")


def test_optional_fields_are_checked(folder):
    _broken(folder, 4, {"weight": 0})
    _raises(folder, "train.jsonl line 4", "'weight'", "> 0")
    _broken(folder, 6, {"p": 1.2})
    _raises(folder, "train.jsonl line 6", "'p'", "out of range")


def test_empty_text(folder):
    _broken(folder, 7, {"item": "   "})
    _raises(folder, "train.jsonl line 7", "'item'", "empty text")


def test_non_utf8_bytes_jsonl(folder):
    lines = (folder / "train.jsonl").read_bytes().splitlines(keepends=True)
    lines[4] = lines[4].replace(b"jazz", b"j\xe4zz")  # latin-1, not UTF-8
    (folder / "train.jsonl").write_bytes(b"".join(lines))
    _raises(folder, "train.jsonl line 5", "not UTF-8")


def test_non_utf8_bytes_parquet(folder):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = _rows("train")
    table = pa.Table.from_pylist(rows)
    items = [r["item"].encode() for r in rows]
    items[6] = b"caf\xe9"
    bad = pa.array(items, type=pa.binary()).view(pa.string())
    table = table.set_column(table.schema.get_field_index("item"), "item", bad)
    (folder / "train.jsonl").unlink()
    pq.write_table(table, folder / "train.parquet")
    _raises(folder, "train.parquet row 6", "'item'", "not UTF-8")


def test_bad_json(folder):
    text = (folder / "train.jsonl").read_text().splitlines()
    text[8] = text[8][:-1]  # drop the closing brace
    (folder / "train.jsonl").write_text("\n".join(text) + "\n")
    _raises(folder, "train.jsonl line 9", "bad JSON")


def test_query_id_in_two_splits_is_leakage(folder):
    rows = _rows("test")
    rows[0]["query_id"] = "train-1"
    rows[0]["query"] = _rows("train")[4]["query"]
    _write_jsonl(folder / "test.jsonl", rows)
    _raises(folder, "test.jsonl line 1", "'query_id'", "also in the train split", "leakage")


def test_duplicate_pair_within_a_split(folder):
    rows = [{k: v for k, v in r.items() if k != "item_id"} for r in _rows("validation")]
    rows.insert(6, dict(rows[1]))  # without item_id: keyed on the text
    _write_jsonl(folder / "validation.jsonl", rows)
    _raises(folder, "validation.jsonl line 7", "'item'", "duplicate (query_id, item) pair",
            "same as line 2")  # fmt: skip


def test_one_query_id_one_query_text(folder):
    _broken(folder, 2, {"query": "somebody else"})
    _raises(folder, "train.jsonl line 2", "different query text than at line 1")


def test_missing_split_and_two_formats(folder):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(_rows("test")), folder / "test.parquet")
    _raises(folder, "both test.jsonl and test.parquet")
    (folder / "test.jsonl").unlink()
    (folder / "test.parquet").unlink()
    with pytest.raises(MissingSplitError, match="no test split"):
        check_folder(folder)
    with pytest.raises(FileNotFoundError):
        read_split(folder, "test")


def test_extra_columns_pass_through(folder):
    rows = _rows("train")
    for r in rows:
        r["user_id"] = "u7"
    _write_jsonl(folder / "train.jsonl", rows)
    check_folder(folder)
    assert read_split(folder, "train")[0]["user_id"] == "u7"


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_iter_rows_is_lazy(tmp_path, fmt):
    n = 50_000
    rows = ({"query_id": i // 10, "query": f"q{i // 10}", "item": f"i{i}", "label": i % 2}
            for i in range(n))  # fmt: skip
    path = tmp_path / f"train.{fmt}"
    if fmt == "jsonl":
        with path.open("w") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(list(rows)), path, row_group_size=10_000)
    it = iter_rows(tmp_path, "train", batch_size=1000)
    first = next(it)  # a generator: nothing read beyond what was asked
    assert len(first) == 1000 and first[0]["item"] == "i0"
    sizes = [len(first)] + [len(b) for b in it]
    assert sum(sizes) == n and set(sizes) == {1000}


def test_synthetic_benchmark_passes(tmp_path):
    from ranking.synthetic import BenchmarkConfig, write_benchmark

    write_benchmark(BenchmarkConfig(train_queries=60, val_queries=10, test_queries=10), tmp_path)
    s = check_folder(tmp_path)
    assert s["meta"] and s["splits"]["train"]["queries"] == 60
    assert s["splits"]["test"]["rows_with_p"] == s["splits"]["test"]["rows"]


def test_cli_check(folder, capsys):
    from compression.__main__ import main

    assert main(["data", "check", str(folder)]) == 0
    assert "items/query" in capsys.readouterr().out
    assert main(["data", "check", str(folder), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["splits"]["test"]["rows"] == 12
    _broken(folder, 2, {"label": 3})
    assert main(["data", "check", str(folder)]) == 1
    assert "train.jsonl line 2" in capsys.readouterr().err


# ---- content fingerprints --------------------------------------------------------------------
def test_content_hash_follows_content_not_path(tmp_path_factory, folder):
    clear_cache()
    a = content_hash(folder)
    copy = tmp_path_factory.mktemp("copy")
    for p in folder.iterdir():
        (copy / p.name).write_bytes(p.read_bytes())
    assert content_hash(copy) == a  # same content elsewhere: same hash
    assert content_hash(folder / "train.jsonl") != a
    (copy / "extra.txt").write_text("x")
    assert content_hash(copy) != a  # a new file changes it
    assert content_hash(copy, exclude=["extra.txt"]) == a
    time.sleep(0.01)
    _broken(folder, 1, {"label": 0.5})  # a rewrite in place changes it
    assert content_hash(folder) != a
    (folder / "train.jsonl").rename(folder / "renamed.jsonl")  # so does a rename
    b = content_hash(folder)
    assert b not in (a, content_hash(copy))


def test_content_hash_is_cached(tmp_path, monkeypatch):
    """A file's bytes are read once per (path, size, mtime, inode): hashing again reads none."""
    (tmp_path / "big.bin").write_bytes(b"\1" * (4 << 20))
    clear_cache()
    reads, real_open = [], Path.open

    def counting_open(self, *args, **kwargs):
        reads.append(self.name)
        return real_open(self, *args, **kwargs)

    monkeypatch.setattr(Path, "open", counting_open)
    h = content_hash(tmp_path)
    assert reads == ["big.bin"]
    assert content_hash(tmp_path) == h and reads == ["big.bin"]
    clear_cache()
    assert content_hash(tmp_path) == h and reads == ["big.bin", "big.bin"]
