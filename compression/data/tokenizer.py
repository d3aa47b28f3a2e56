"""A tokenizer for a data folder, trained on its train split with the builders' code: what
``data tokenizer`` and ``data render`` write to ``DIR/tokenizer``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

    from ranking.task import RankingTask

TOKENIZER_VOCAB = 2048  # the MovieLens builder's: enough for prompts of profile and titles


def _train_texts(folder: Path) -> list[str]:
    """The unique query and item texts of the train split, read in batches (what the builders
    train their tokenizers on: ``ranking.synthetic.corpus``)."""
    from ranking.datafolder import iter_rows

    queries: set[str] = set()
    items: set[str] = set()
    for batch in iter_rows(folder, "train"):
        queries.update(r["query"] for r in batch)
        items.update(r["item"] for r in batch)
    return sorted(queries) + sorted(items)


def train_folder_tokenizer(
    folder: str | Path, vocab_size: int = TOKENIZER_VOCAB, task: RankingTask | None = None
) -> PreTrainedTokenizerFast:
    """Trains a tokenizer on ``folder``'s train split, as the builders do, and writes it to
    ``folder/tokenizer`` atomically. The task's label words and question are trained in
    (``must_have``) and the label words checked to be single tokens: the scorer reads the
    answer from one token. Raises ``DataError`` for a folder that breaks the contract,
    ``TaskConfigError`` if the vocabulary is too small for the labels."""
    from ranking.atomic import atomic_dir
    from ranking.data_audit import check_folder
    from ranking.task import RankingTask, TaskConfigError
    from ranking.tokenizer import train_tokenizer

    folder = Path(folder)
    task = task or RankingTask()
    check_folder(folder)  # a tokenizer for a folder that fails the contract would be wasted
    tok = train_tokenizer(
        _train_texts(folder), vocab_size, must_have=[task.yes, task.no, task.question]
    )
    try:
        task.label_token_ids(tok)
    except TaskConfigError as exc:
        raise TaskConfigError(f"{exc} (--vocab-size {vocab_size}: use a larger one)") from None
    with atomic_dir(folder / "tokenizer") as tmp:
        tok.save_pretrained(tmp)
    return tok
