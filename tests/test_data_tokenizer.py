"""``data tokenizer DIR``: a tokenizer for any data folder, trained on its train split as the
builders do; refused for a folder that breaks the contract or already has one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from compression.__main__ import main
from ranking.task import RankingTask

VOCAB = ["--vocab-size", "300"]  # tiny: fast, still room for the label words


def _write(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _folder(root: Path) -> Path:
    for split in ("train", "validation", "test"):
        rows = [
            {"query_id": f"{split}-{q}", "query": f"user {q} likes jazz and long walks",
             "item": f"record {j}: blue train", "item_id": j, "label": (q + j) % 2}
            for q in range(3) for j in range(4)
        ]  # fmt: skip
        _write(root / f"{split}.jsonl", rows)
    return root


def test_writes_a_loadable_tokenizer_with_single_token_labels(tmp_path, capsys):
    from transformers import AutoTokenizer

    folder = _folder(tmp_path)
    assert main(["data", "tokenizer", str(folder), *VOCAB]) == 0
    assert "[tokenizer]" in capsys.readouterr().out
    tok = AutoTokenizer.from_pretrained(folder / "tokenizer")
    yes, no = RankingTask().label_token_ids(tok)  # raises unless each label is one token
    assert yes != no
    assert tok.pad_token == "<pad>" and len(tok) <= 300
    assert not (folder / "tokenizer.partial").exists()


def test_refuses_to_replace_without_force(tmp_path, capsys):
    folder = _folder(tmp_path)
    assert main(["data", "tokenizer", str(folder), *VOCAB]) == 0
    capsys.readouterr()
    assert main(["data", "tokenizer", str(folder), *VOCAB]) == 2
    assert "already exists; --force replaces it" in capsys.readouterr().err
    assert main(["data", "tokenizer", str(folder), *VOCAB, "--force"]) == 0


def _break(folder: Path, breakage: str) -> None:
    if breakage == "no test split":
        (folder / "test.jsonl").unlink()
    elif breakage == "bad label":
        rows = [json.loads(line) for line in (folder / "train.jsonl").read_text().splitlines()]
        rows[1]["label"] = 3
        _write(folder / "train.jsonl", rows)


@pytest.mark.parametrize(
    "breakage, fragment",
    [
        ("missing", "no data folder at"),
        ("no test split", "no test split"),
        ("bad label", "train.jsonl line 2: field 'label'"),
    ],
)
def test_bad_folder_exits_2_naming_the_problem(tmp_path, capsys, breakage, fragment):
    folder = tmp_path / "nowhere" if breakage == "missing" else _folder(tmp_path)
    _break(folder, breakage)
    assert main(["data", "tokenizer", str(folder), *VOCAB]) == 2
    err = capsys.readouterr().err
    assert fragment in err, err
    assert not (folder / "tokenizer").exists()


def test_too_small_a_vocabulary_is_named(tmp_path, capsys):
    folder = _folder(tmp_path)
    assert main(["data", "tokenizer", str(folder), "--vocab-size", "258"]) == 2
    assert "--vocab-size 258" in capsys.readouterr().err
    assert not (folder / "tokenizer").exists()


def test_teacher_names_the_command(tmp_path):
    from compression.teacher import ModelShape, TrainConfig, train_teacher

    with pytest.raises(FileNotFoundError, match="python -m compression data tokenizer"):
        train_teacher(_folder(tmp_path), tmp_path / "teacher", ModelShape(), TrainConfig())
