"""MovieLens-100k as TALLRec-style ranking prompts, split by global time cutoffs: one
configuration of ``compression.data.render`` (its tables read from RecBole's files, its
templates ``QUERY_TEMPLATE`` and ``ITEM_TEMPLATE``).

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
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from compression.data.render import (
    Attributes,
    Interactions,
    RenderConfig,
    Split,
    Table,
    Tables,
    Templates,
    keyed,
    render_folder,
)
from ranking.datafolder import read_meta
from ranking.fingerprint import content_hash
from ranking.task import RankingTask

GENERATOR_VERSION = 2  # meta.json: split counts name members; the templates recorded
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
    popularity: bool = False  # items say how their train-split ratings went (POPULARITY_HINT)
    profile: bool = False  # the query says how the user's earlier ratings went (PROFILE)
    affinity: bool = False  # items say how the user rated their genres before (AFFINITY)
    stats: str = "shares"  # the hints' wording: "shares" (liked 70%) or "means" (rated 3.8)
    vocab_size: int = 2048
    max_users: int | None = None  # the first N users only (tests)

    def __post_init__(self) -> None:
        if self.stats not in STATS:
            raise ValueError(f"stats={self.stats!r}: one of {', '.join(STATS)}")


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
    first_id: dict[Movie, str] = {}
    for r in sorted(read_atomic(folder / "ml-100k.item"), key=lambda r: int(r["item_id"])):
        movie = Movie(r["movie_title"], r["release_year"], tuple(r["class"].split()))
        canonical[r["item_id"]] = first_id.setdefault(movie, r["item_id"])
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


# ---- as tables and templates ------------------------------------------------------------------
ITEM_TEMPLATE = "{{ item.title }} ({{ item.year }}), {{ item.genres | join(', ') }}"
# The hints, each in two wordings (``MovieLensConfig.stats``): "shares" says a set of ratings
# as the share at 4 or more, to the nearest 10%, and how many; "means" as their mean rating
# and how many.
#
# the popularity hint (``MovieLensConfig.popularity``): the movie's train-split ratings before
# the query's cutoff
POPULARITY_HINT = {
    "shares": "{% if item.stats.count %}; liked by "
    "{{ (item.stats.positive_rate * 10) | round | int * 10 }}% of {{ item.stats.count }}"
    "{% else %}; no ratings yet{% endif %}",
    "means": "{% if item.stats.count %}; rated {{ '%.1f' | format(item.stats.mean.rating) }} "
    "on average by {{ item.stats.count }}{% else %}; no ratings yet{% endif %}",
}
# the user's profile (``MovieLensConfig.profile``), from all their ratings before the cutoff:
# overall and per genre (most rated first), or overall and over the recent ones shown
PROFILE = {
    "shares": "{% if past %}Liked "
    "{{ (past | sum(attribute='label') / past | length * 10) | round | int * 10 }}% of "
    "{{ past | length }} ratings; by genre: {% for g in past | tally('item.genres') %}"
    "{{ g.value }} {{ (g.positive_rate * 10) | round | int * 10 }}% of {{ g.count }}"
    "{% if not loop.last %}, {% endif %}{% endfor %}. {% endif %}",
    "means": "{% if past %}{{ past | length }} earlier ratings, average "
    "{{ '%.1f' | format(past | sum(attribute='rating') / past | length) }}; the last "
    "{{ history | length }} average "
    "{{ '%.1f' | format(history | sum(attribute='rating') / history | length) }}. {% endif %}",
}
# the user's affinity (``MovieLensConfig.affinity``): their earlier ratings of movies that
# share a genre with this one: the cross of member and item that a tabular model gets as a
# feature, said in the item's text
_MINE = "{% set mine = past | sharing('item.genres', item.genres) %}"
AFFINITY = {
    "shares": _MINE + "{% if mine %}; you liked "
    "{{ (mine | sum(attribute='label') / mine | length * 10) | round | int * 10 }}% of "
    "{{ mine | length }} in its genres{% else %}; its genres new to you{% endif %}",
    "means": _MINE + "{% if mine %}; you rated its genres "
    "{{ '%.1f' | format(mine | sum(attribute='rating') / mine | length) }} on average over "
    "{{ mine | length }}{% else %}; its genres new to you{% endif %}",
}
STATS = tuple(POPULARITY_HINT)
USER = "User: {{ member.age }}-year-old {{ member.gender }}, {{ member.occupation }}. "
RECENT = (
    "Recent ratings (1-5, oldest first): "
    "{% for h in history %}{{ h.item.title }} ({{ h.item.year }}), {{ h.item.genres | join(', ') }}"
    ": {{ '%g' | format(h.rating) }}{% if not loop.last %}; {% endif %}{% endfor %}."
)
QUERY_TEMPLATE = USER + RECENT


def render_config(cfg: MovieLensConfig) -> RenderConfig:
    """The builder's settings as ``data render`` settings (the label is rating >= 4)."""
    return RenderConfig(
        interactions=Interactions(
            "ml-100k.inter", "user_id", "item_id", "timestamp", "rating >= 4"
        ),  # fmt: skip
        members=Attributes("ml-100k.user", "user_id"),
        items=Attributes("ml-100k.item", "item_id"),
        templates=Templates(
            USER + PROFILE[cfg.stats] + RECENT if cfg.profile else QUERY_TEMPLATE,
            ITEM_TEMPLATE
            + (POPULARITY_HINT[cfg.stats] if cfg.popularity else "")
            + (AFFINITY[cfg.stats] if cfg.affinity else ""),
        ),
        history=cfg.history,
        min_history=cfg.min_history,
        items_per_query=cfg.items_per_query,
        split=Split("time", cfg.val_share, cfg.test_share, leave_last_out=cfg.leave_last_out),
        vocab_size=cfg.vocab_size,
    )


def as_tables(raw: RawMovieLens) -> Tables:
    """The loaded files as render's tables: one rating per user and movie (the earliest of a
    movie listed twice), users and movies keyed by id."""
    folder = raw.folder or Path(".")

    def table(name: str, rows: list[dict]) -> Table:
        return Table(
            folder / name, rows, list(range(2, len(rows) + 2)), list(rows[0]) if rows else []
        )

    ratings = [
        {"user_id": u, "item_id": r.item, "rating": r.rating, "timestamp": r.ts}
        for u, rs in raw.ratings.items()
        for r in rs
    ]
    users = [{"user_id": k, **asdict(u)} for k, u in raw.users.items()]
    movies = [{"item_id": k, **asdict(m)} for k, m in raw.movies.items()]
    return Tables(
        table("ml-100k.inter", ratings),
        keyed(table("ml-100k.user", users), "user_id", "members"),
        keyed(table("ml-100k.item", movies), "item_id", "items"),
    )


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
        and old.get("templates") == asdict(render_config(cfg).templates)
        and all((out / f"{s}.jsonl").is_file() for s in old.get("splits", {}))
        and (out / "tokenizer").is_dir()
    ):
        return {**old, "reused": True}
    raw = load_raw(source, cfg.max_users)

    def movielens_meta(built: dict) -> dict:
        return {
            "source": SOURCE,
            "source_folder": str(raw.folder),
            "source_hash": source_hash,
            "terms": TERMS,
            "generator": "compression.data.movielens",
            "rendered_by": built["generator"],
            "templates": built["config"]["templates"],
            "baseline_features": ["movielens"],  # compression.baseline joins the raw files
            "generator_version": GENERATOR_VERSION,
            "config": asdict(cfg),
            "cutoffs": built["cutoffs"],
            "label": "rating >= 4",
            "merged_duplicate_movies": raw.merged_movies,
            "splits": built["splits"],
            "shared_item_text": built["shared_item_text"],
            "extra_columns": {
                "user_id": "MovieLens user id",
                "cutoff": "the query's cutoff (unix s)",
            },  # fmt: skip
            "notes": {
                "time_split": "train items < T1 <= validation items < T2 <= test items; history "
                "is strictly earlier than its query's cutoff",
                **(
                    {
                        "test_llo": "leave-last-out extra: each user's last ratings; overlaps "
                        "the train period, not comparable with the time split"
                    }
                    if cfg.leave_last_out
                    else {}
                ),
            },  # fmt: skip
            "task": asdict(task),
            "tokenizer": built["tokenizer"],
            "build_seconds": round(time.time() - t0, 1),
        }

    meta = render_folder(
        render_config(cfg), out, task, tables=as_tables(raw), finish_meta=movielens_meta
    )
    return {**meta, "reused": False}
