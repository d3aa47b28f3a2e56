"""What one load test sends: the workload definition, shared by the CLI, Locust and compare.

A workload is a small, seeded definition (a dataclass, loadable from a JSON or YAML file):

- ``source``: ``synthetic`` (members and items from ``ranking.synthetic``, query grown to
  ``query_tokens``, items fitted to ``item_tokens``) or ``demo`` (real rows of a demo split:
  a query with its candidates, topped up with other queries' items; text as in the data);
- ``topic``: every candidate of one topic (another item population than the data's: score
  drift demonstrations);
- ``items`` per request, ``endpoint`` (rank / rerank / score), ``distinct`` request bodies
  (cycled, so a long run does not hold thousands of bodies), ``invalid_share`` (a share of
  requests sent with an empty item list on purpose: the server must answer 422 and the report
  must count it);
- lengths are in tokens of ``tokenizer`` (a model folder with ``ranking_task.json``), so
  "a 250-token query" means the same thing as on the server.

Bodies are serialised once, here, so the client spends its time sending, not encoding JSON.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import numpy as np

ENDPOINTS = {"rank": "/v1/rank", "rerank": "/v1/rerank", "score": "/v1/score"}
DEFAULT_MODEL = "artifacts/demo/teacher"


class WorkloadError(ValueError):
    """A workload definition that cannot be built (bad value, missing file)."""


@dataclass(frozen=True)
class Workload:
    source: Literal["synthetic", "demo"] = "synthetic"
    endpoint: Literal["rank", "rerank", "score"] = "rank"
    query_tokens: int = 250  # synthetic: the query is grown to at least this many tokens
    items: int = 50  # items per request
    item_tokens: int | None = None  # synthetic: fit each item (question included); None: ~30
    distinct: int = 8  # distinct request bodies, cycled
    data: str = "artifacts/demo/data"  # demo source: a data folder (ranking.datafolder)
    split: str = "test"
    tokenizer: str = DEFAULT_MODEL  # model folder: tokenizer + ranking_task.json
    seed: int = 0
    invalid_share: float = 0.0  # share of requests sent invalid on purpose (422 expected)
    # every candidate of one topic (ranking.synthetic.TOPICS): another item population than
    # the data's, for score drift demonstrations; None: the source's own mix
    topic: str | None = None

    def __post_init__(self) -> None:
        if self.source not in ("synthetic", "demo"):
            raise WorkloadError(f"source must be 'synthetic' or 'demo', not {self.source!r}")
        if self.endpoint not in ENDPOINTS:
            raise WorkloadError(
                f"endpoint must be one of {sorted(ENDPOINTS)}, not {self.endpoint!r}"
            )
        for name in ("query_tokens", "items", "distinct"):
            if getattr(self, name) < 1:
                raise WorkloadError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.item_tokens is not None and self.item_tokens < 4:
            raise WorkloadError(f"item_tokens must be >= 4, got {self.item_tokens}")
        if not 0.0 <= self.invalid_share <= 1.0:
            raise WorkloadError(f"invalid_share must be in [0, 1], got {self.invalid_share}")
        if self.topic is not None:
            from ranking.synthetic import TOPICS

            if self.topic not in TOPICS:
                raise WorkloadError(f"topic must be one of {', '.join(TOPICS)}, not {self.topic!r}")

    @classmethod
    def fields(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_file(cls, path: str | Path, **overrides: Any) -> Workload:
        """JSON or YAML file of field values; ``overrides`` (not None) win over the file."""
        p = Path(path)
        if not p.is_file():
            raise WorkloadError(f"workload file not found: {p}")
        try:
            if p.suffix in (".yaml", ".yml"):
                import yaml

                raw = yaml.safe_load(p.read_text()) or {}
            else:
                raw = json.loads(p.read_text())
        except Exception as exc:  # noqa: BLE001 - any parse error means a bad file
            raise WorkloadError(f"cannot parse workload file {p}: {exc}") from exc
        if not isinstance(raw, dict):
            raise WorkloadError(f"workload file {p} must hold a mapping of fields")
        return cls.from_dict({**raw, **{k: v for k, v in overrides.items() if v is not None}})

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Workload:
        unknown = set(raw) - set(cls.fields())
        if unknown:
            raise WorkloadError(f"unknown workload fields {sorted(unknown)}; known: {cls.fields()}")
        try:
            return cls(**raw)
        except TypeError as exc:
            raise WorkloadError(str(exc)) from exc

    @property
    def path(self) -> str:
        return ENDPOINTS[self.endpoint]

    def describe(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Request:
    """One request as sent: the serialised body and what it should cost."""

    body: bytes
    items: int
    valid: bool = True


def request_body(endpoint: str, query: str, items: list[str]) -> dict[str, Any]:
    """The JSON body of one request in the endpoint's dialect (see server/protocol.py)."""
    if endpoint == "rerank":
        return {"query": query, "documents": items}
    return {"query": query, "items": items}


def _load_tokenizer(model_dir: str):
    from ranking.checkpoint import load_tokenizer_and_task

    p = Path(model_dir)
    if not p.is_dir():
        raise WorkloadError(f"tokenizer folder not found: {p} (give a model folder)")
    try:
        return load_tokenizer_and_task(p)
    except Exception as exc:  # noqa: BLE001
        raise WorkloadError(f"cannot load tokenizer/task from {p}: {exc}") from exc


def _fit_item(text: str, target: int, tok, task, filler: list[str]) -> str:
    """The item's words, cut or extended with filler words, whose encoded length (separator
    and question included, as the server counts it) is closest to ``target`` tokens."""
    words = text.split(" ")
    i = 0
    while len(task.encode_item(tok, " ".join(words))) < target:
        words.append(filler[i % len(filler)])
        i += 1

    def gap(k: int) -> tuple[int, int]:
        return abs(len(task.encode_item(tok, " ".join(words[:k]))) - target), -k

    return " ".join(words[: min(range(1, len(words) + 1), key=gap)])


class RequestPool:
    """The ``distinct`` request bodies of a workload, and the sequence a run sends."""

    def __init__(self, workload: Workload):
        self.workload = workload
        self.pairs = self._build()  # [(query, items)]
        self.bodies = [
            json.dumps(request_body(workload.endpoint, q, its)).encode() for q, its in self.pairs
        ]
        first_query = self.pairs[0][0]
        self.invalid_body = json.dumps(request_body(workload.endpoint, first_query, [])).encode()

    def _build(self) -> list[tuple[str, list[str]]]:
        w = self.workload
        if w.source == "demo":
            return self._from_demo()
        from ranking.synthetic import TOPIC_WORDS, BenchmarkConfig, standard_workload

        tok, task = _load_tokenizer(w.tokenizer)
        filler = [x for words in TOPIC_WORDS.values() for x in words]
        out = []
        for k in range(w.distinct):
            query, items = standard_workload(
                BenchmarkConfig(),
                tok,
                task,
                w.query_tokens,
                w.items,
                seed=w.seed * 100003 + k,
                topic=w.topic,
            )
            if w.item_tokens is not None:
                items = [_fit_item(it, w.item_tokens, tok, task, filler) for it in items]
            out.append((query, items))
        return out

    def _from_demo(self) -> list[tuple[str, list[str]]]:
        from ranking.datafolder import DataError, read_split
        from ranking.dataset import group_by_query

        w = self.workload
        try:  # any data folder (the contract): JSONL or Parquet, validated as read
            rows = read_split(w.data, w.split)
        except DataError as exc:
            raise WorkloadError(str(exc)) from exc
        groups = group_by_query(rows)
        if not groups:
            raise WorkloadError(f"the {w.split} split of {w.data} has no rows")
        pool = [r["item"] for r in rows]
        if w.topic is not None:  # the split's items of that topic (its name is in the text)
            pool = [it for it in pool if f" {w.topic} " in f" {it} "]
            if not pool:
                raise WorkloadError(f"no item of the {w.split} split mentions topic {w.topic!r}")
        rng = np.random.default_rng(w.seed)
        out = []
        for k in range(w.distinct):
            _, group = groups[(w.seed + k) % len(groups)]
            items = [] if w.topic is not None else [r["item"] for r in group][: w.items]
            while len(items) < w.items:  # top up with other queries' candidates
                items.append(pool[int(rng.integers(len(pool)))])
            out.append((group[0]["query"], items))
        return out

    @cached_property
    def lengths(self) -> dict[str, float] | None:
        """Mean query tokens and item tokens (question included), if the tokenizer loads."""
        try:
            tok, task = _load_tokenizer(self.workload.tokenizer)
        except WorkloadError:
            return None
        q = [len(task.encode_query(tok, q)) for q, _ in self.pairs]
        it = [len(x) for _, its in self.pairs for x in task.encode_items(tok, its)]
        return {"query_tokens": float(np.mean(q)), "item_tokens": float(np.mean(it))}

    def sequence(self, n: int) -> list[Request]:
        """The ``n`` requests of a run, in order: bodies cycled, and a seeded ``invalid_share``
        of them replaced by an invalid body (exactly round(share * n), at random positions)."""
        w = self.workload
        reqs = [Request(self.bodies[i % len(self.bodies)], w.items) for i in range(n)]
        n_bad = int(round(w.invalid_share * n))
        if n_bad:
            rng = np.random.default_rng(w.seed + 7)
            for i in rng.choice(n, size=n_bad, replace=False):
                reqs[int(i)] = Request(self.invalid_body, 0, valid=False)
        return reqs
