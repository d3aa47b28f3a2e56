"""The ranking task config: how a (query, item) pair becomes a prompt, and which tokens answer.

It is saved beside every checkpoint (``ranking_task.json``) so that training, evaluation and
serving build byte-identical prompts and read the same two label tokens.

Prompt layout (token ids, concatenated piecewise so the query prefix is shared exactly):

    [bos] + encode(query) + encode(separator + item + separator + question)

The score of an item is P(yes) / (P(yes) + P(no)) at the position after the last prompt token.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

TASK_FILE = "ranking_task.json"


class TaskConfigError(ValueError):
    """The task config is missing, malformed, or does not fit the tokenizer."""


@dataclass(frozen=True)
class RankingTask:
    question: str = "Engage?"
    separator: str = "\n"
    yes: str = " yes"
    no: str = " no"
    add_bos: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    # ---- persistence -------------------------------------------------------------------
    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / TASK_FILE
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, directory: str | Path) -> RankingTask:
        path = Path(directory) / TASK_FILE
        if not path.is_file():
            raise TaskConfigError(f"no {TASK_FILE} in {directory}: not a slimrank checkpoint")
        try:
            raw = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise TaskConfigError(f"{path} is not valid JSON: {exc}") from exc
        if not isinstance(raw, dict):
            raise TaskConfigError(f"{path} must hold a JSON object")
        unknown = set(raw) - set(cls.__dataclass_fields__)
        if unknown:
            raise TaskConfigError(f"{path}: unknown keys {sorted(unknown)}")
        return cls(**raw)

    # ---- tokens --------------------------------------------------------------------------
    def label_token_ids(self, tokenizer) -> tuple[int, int]:
        """(yes_id, no_id); each label must be exactly one token of this tokenizer."""
        ids = []
        for word in (self.yes, self.no):
            toks = tokenizer.encode(word, add_special_tokens=False)
            if len(toks) != 1:
                raise TaskConfigError(
                    f"label {word!r} is {len(toks)} tokens for this tokenizer; it must be one"
                )
            ids.append(toks[0])
        if ids[0] == ids[1]:
            raise TaskConfigError("yes and no labels map to the same token")
        return ids[0], ids[1]

    def encode_query(self, tokenizer, query: str) -> list[int]:
        """Shared prefix: [bos] + query tokens. Computed once per request."""
        ids = tokenizer.encode(query, add_special_tokens=False)
        if self.add_bos and tokenizer.bos_token_id is not None:
            ids = [tokenizer.bos_token_id, *ids]
        return ids

    def encode_item(self, tokenizer, item: str) -> list[int]:
        """Per-item suffix: separator + item + separator + question."""
        text = f"{self.separator}{item}{self.separator}{self.question}"
        return tokenizer.encode(text, add_special_tokens=False)

    def encode_items(self, tokenizer, items: list[str]) -> list[list[int]]:
        if not items:
            return []
        texts = [f"{self.separator}{it}{self.separator}{self.question}" for it in items]
        return tokenizer(texts, add_special_tokens=False)["input_ids"]
