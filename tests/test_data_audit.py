"""Duplicates by identity: with ``item_id``, a (query_id, item_id) pair twice is an error, two
ids with one text are two candidates (counted; a warning when their labels differ) that
reading, encoding and scoring all keep."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ranking.data_audit import check_folder, format_summary
from ranking.datafolder import DataError, read_split


def _row(qid: str, item: str, item_id, label: int) -> dict:
    return {"query_id": qid, "query": f"user {qid} likes jazz", "item": item,
            "item_id": item_id, "label": label}  # fmt: skip


def _write(folder: Path, split: str, rows: list[dict]) -> None:
    (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def _folder(tmp_path: Path, train: list[dict]) -> Path:
    _write(tmp_path, "train", train)
    for split in ("validation", "test"):
        _write(
            tmp_path,
            split,
            [_row(f"{split}-0", "a record", 1, 1), _row(f"{split}-0", "a tape", 2, 0)],
        )
    return tmp_path


def _shared_text_train() -> list[dict]:
    """Query q0 lists one text under ids 7 and 8 (same label), query q1 under 3 and 4 (labels
    differ); q1's other text repeats q0's, which is no duplicate (another query)."""
    return [
        _row("q0", "Blue Train (1957)", 7, 1),
        _row("q0", "Kind of Blue (1959)", 5, 0),
        _row("q0", "Blue Train (1957)", 8, 1),
        _row("q1", "Giant Steps (1960)", 3, 1),
        _row("q1", "Giant Steps (1960)", 4, 0),
        _row("q1", "Kind of Blue (1959)", 5, 1),
    ]


def test_two_ids_one_text_pass_and_are_counted(tmp_path):
    folder = _folder(tmp_path, _shared_text_train())
    s = check_folder(folder)
    train = s["splits"]["train"]
    assert train["rows"] == 6
    assert train["shared_item_text"] == 4  # the rows of q0's and q1's repeated texts
    assert train["label_conflicts"] == 1  # q1's text: one label 1, one 0
    assert s["splits"]["test"]["shared_item_text"] == 0
    assert (
        len(s["warnings"]) == 1 and "train.jsonl: 1 (query_id, item text) pairs" in s["warnings"][0]
    )
    out = format_summary(s)
    assert "items sharing text" in out and "warning: " in out and "disagree on the label" in out


def test_same_text_same_label_is_no_warning(tmp_path):
    rows = [r for r in _shared_text_train() if r["query_id"] == "q0"]
    s = check_folder(_folder(tmp_path, rows))
    assert s["splits"]["train"]["shared_item_text"] == 2
    assert s["splits"]["train"]["label_conflicts"] == 0 and s["warnings"] == []


def test_same_item_id_twice_fails_naming_the_row(tmp_path):
    rows = _shared_text_train()
    rows.insert(4, _row("q0", "Blue Train (mono)", 7, 0))  # q0's id 7 again, another text
    with pytest.raises(DataError) as info:
        check_folder(_folder(tmp_path, rows))
    msg = str(info.value)
    assert "train.jsonl line 5" in msg and "field 'item_id'" in msg, msg
    assert "duplicate (query_id, item_id) pair, same as line 1" in msg, msg


def test_same_item_id_in_another_query_is_fine(tmp_path):
    check_folder(_folder(tmp_path, _shared_text_train()))  # id 5 is in q0 and in q1


def test_text_repeated_by_a_row_without_item_id_fails(tmp_path):
    rows = _shared_text_train()
    rows.append({k: v for k, v in rows[1].items() if k != "item_id"})
    with pytest.raises(DataError, match=r"train.jsonl line 7: field 'item': duplicate "
                       r"\(query_id, item\) pair, same as line 2"):  # fmt: skip
        check_folder(_folder(tmp_path, rows))


def test_parquet_rows_are_named_by_index(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = _folder(tmp_path, [])
    rows = _shared_text_train()
    rows.append(_row("q1", "Giant Steps (1960)", 3, 1))
    (folder / "train.jsonl").unlink()
    pq.write_table(pa.Table.from_pylist(rows), folder / "train.parquet")
    with pytest.raises(DataError, match=r"train.parquet row 6: field 'item_id'.*same as row 3"):
        check_folder(folder)


def test_rows_sharing_a_text_are_kept_and_scored(tmp_path):
    """Reading, encoding and scoring keep both ids of one text: one score each."""
    from ranking.dataset import encode_groups
    from ranking.evaluation import evaluate
    from ranking.scorer import TorchScorer
    from ranking.task import RankingTask
    from ranking.tokenizer import train_tokenizer
    from tests.random_models import random_model

    folder = _folder(tmp_path, _shared_text_train())
    rows = read_split(folder, "train")
    assert [r["item_id"] for r in rows] == [7, 5, 8, 3, 4, 5]
    task = RankingTask()
    tok = train_tokenizer([r["query"] + " " + r["item"] for r in rows], 300,
                          must_have=[task.yes, task.no, task.question])  # fmt: skip
    groups = encode_groups(rows, tok, task)
    assert [len(g.item_ids) for g in groups] == [3, 3]
    assert groups[0].item_ids[0] == groups[0].item_ids[2]  # one text, two candidates
    assert list(groups[1].labels) == [1.0, 0.0, 1.0]
    model = random_model("llama", vocab_size=len(tok))
    scorer = TorchScorer(model, tok, task)
    scores = scorer.score_batch(groups)
    assert scores.shape == (6,) and np.isfinite(scores).all()
    assert scores[0] == pytest.approx(scores[2], abs=1e-5)  # same prompt, same score
    assert evaluate(scorer, groups)["n"] == 6
