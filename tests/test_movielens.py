"""The MovieLens builder on small slices: the time split holds, no history entry reaches its
query's cutoff, labels are rating >= 4, no query is in two splits, the folder meets the
contract. A mini RecBole-format folder written here covers the edge cases (same-second
ratings, a movie listed twice); the first 100 real users cover the real files."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from compression.data.movielens import (
    MovieLensConfig,
    MovieLensError,
    as_tables,
    build_movielens,
    load_raw,
    recbole_ml100k_dir,
    render_config,
)
from compression.data.render import Templating, build_queries, interactions
from compression.data.render import history_before as user_history
from ranking.data_audit import check_folder
from ranking.datafolder import read_split
from tests.ml_mini import write_mini_movielens

HAS_RECBOLE = importlib.util.find_spec("recbole") is not None
MINI = MovieLensConfig(history=4, items_per_query=3, min_history=2, vocab_size=300)


def render_movie(m) -> str:
    """The item text the builder writes (its templates must give exactly this)."""
    return f"{m.title} ({m.year}), {', '.join(m.genres)}"


def render_query(u, history, movies) -> str:
    rated = "; ".join(f"{render_movie(movies[r.item])}: {r.rating:g}" for r in history)
    return (
        f"User: {u.age}-year-old {u.gender}, {u.occupation}. "
        f"Recent ratings (1-5, oldest first): {rated}."
    )


def movielens_queries(raw, cfg: MovieLensConfig) -> dict:
    rc = render_config(cfg)
    per_member, _ = interactions(
        rc, as_tables(raw), Templating(rc.templates, rc.interactions.label)
    )
    return build_queries(per_member, rc)[0]


@pytest.fixture(scope="module")
def mini_source(tmp_path_factory) -> Path:
    return write_mini_movielens(tmp_path_factory.mktemp("ml-mini"))


def _check_built(out: Path, source: Path | None, cfg: MovieLensConfig) -> dict:
    """Every property the builder promises, checked on the folder it wrote."""
    meta = json.loads((out / "meta.json").read_text())
    t1, t2 = meta["cutoffs"]["T1"], meta["cutoffs"]["T2"]
    assert t1 < t2
    raw = load_raw(source, cfg.max_users)
    ratings = {(u, r.item): r for u, rs in raw.ratings.items() for r in rs}
    window = {"train": (float("-inf"), t1), "validation": (t1, t2), "test": (t2, float("inf"))}
    seen: dict[str, str] = {}
    for split, (lo, hi) in window.items():
        rows = read_split(out, split)
        assert rows, split
        for row in rows:
            r = ratings[(row["user_id"], row["item_id"])]
            assert lo <= r.ts < hi and row["ts"] == r.ts, (split, row)
            assert row["label"] == int(r.rating >= 4)
            assert row["cutoff"] <= row["ts"]
            # the query text is the profile plus the ratings strictly before its cutoff
            history = user_history(raw.ratings[row["user_id"]], row["cutoff"])
            assert len(history) >= cfg.min_history
            assert all(h.ts < row["cutoff"] for h in history)
            assert row["query"] == render_query(
                raw.users[row["user_id"]], history[-cfg.history :], raw.movies
            )
            assert row["item"] == render_movie(raw.movies[row["item_id"]])
            assert seen.setdefault(row["query_id"], split) == split  # one split per query
        if split == "train":  # train sees nothing at or after T1, history included
            assert max(h.ts for row in rows for h in user_history(
                raw.ratings[row["user_id"]], row["cutoff"])) < t1  # fmt: skip
    check_folder(out)
    return meta


def test_mini_folder_time_split_labels_and_contract(mini_source, tmp_path):
    meta = build_movielens(tmp_path, MINI, source=mini_source)
    assert meta["merged_duplicate_movies"] == 1
    _check_built(tmp_path, mini_source, MINI)
    assert (tmp_path / "tokenizer" / "tokenizer.json").is_file()
    assert sum(c["rows"] for c in meta["splits"].values()) > 0


def test_history_is_strictly_before_the_cutoff(mini_source):
    raw = load_raw(mini_source)
    queries = movielens_queries(raw, MINI)
    n_tied = 0
    for qs in queries.values():
        for q in qs:
            assert q.cutoff == min(r.ts for r in q.items)
            assert q.history and all(h.ts < q.cutoff for h in q.history)
            assert len(q.history) <= MINI.history
            assert len(q.items) <= MINI.items_per_query
            # the shown history is the most recent: nothing between it and the cutoff
            later = [r for r in raw.ratings[q.member] if q.history[-1].ts < r.ts < q.cutoff]
            assert not later
            shown = {x.item for x in q.items}
            n_tied += any(r.ts == q.cutoff for r in raw.ratings[q.member] if r.item not in shown)
    assert n_tied  # the fixture does exercise same-second ratings at a cutoff


def test_profile_popularity_and_affinity_as_liked_shares(mini_source, tmp_path):
    """``--profile``: the user's liked share over every earlier rating, overall and per genre;
    ``--popularity``: the movie's liked share among train rows before the cutoff;
    ``--affinity``: the user's liked share of earlier movies sharing a genre with it."""
    cfg = MovieLensConfig(
        **{**MINI.__dict__, "profile": True, "popularity": True, "affinity": True}
    )
    build_movielens(tmp_path, cfg, source=mini_source)
    raw = load_raw(mini_source)
    train = read_split(tmp_path, "train")

    def share(labels: list[int]) -> str:
        return f"{round(sum(labels) / len(labels) * 10) * 10}% of {len(labels)}"

    rows = [r for s in ("train", "validation", "test") for r in read_split(tmp_path, s)]
    for row in rows:
        history = user_history(raw.ratings[row["user_id"]], row["cutoff"])
        liked = [int(h.rating >= 4) for h in history]
        genres: dict[str, list[int]] = {}
        for h in history:
            for g in raw.movies[h.item].genres:
                genres.setdefault(g, []).append(int(h.rating >= 4))
        order = sorted(genres, key=lambda g: (-len(genres[g]), g))
        profile = ", ".join(f"{g} {share(genres[g])}" for g in order)
        u = raw.users[row["user_id"]]
        assert row["query"].startswith(
            f"User: {u.age}-year-old {u.gender}, {u.occupation}. Liked {share(liked)} ratings; "
            f"by genre: {profile}. Recent ratings (1-5, oldest first): "
        ), row
        seen = [r["label"] for r in train
                if r["item_id"] == row["item_id"] and r["ts"] < row["cutoff"]]  # fmt: skip
        hint = f"; liked by {share(seen)}" if seen else "; no ratings yet"
        mine = [int(h.rating >= 4) for h in history
                if set(raw.movies[row["item_id"]].genres) & set(raw.movies[h.item].genres)]  # fmt: skip
        hint += f"; you liked {share(mine)} in its genres" if mine else "; its genres new to you"
        assert row["item"] == render_movie(raw.movies[row["item_id"]]) + hint, row


def test_profile_popularity_and_affinity_as_mean_ratings(mini_source, tmp_path):
    """``--stats means``: the user's mean rating over every earlier rating and over the recent
    ones shown; the movie's mean rating among train rows before the cutoff; the user's mean
    rating of earlier movies sharing a genre with it."""
    cfg = MovieLensConfig(
        **{**MINI.__dict__, "profile": True, "popularity": True, "affinity": True,
           "stats": "means"}
    )  # fmt: skip
    build_movielens(tmp_path, cfg, source=mini_source)
    raw = load_raw(mini_source)
    rating = {(u, r.item): r.rating for u, rs in raw.ratings.items() for r in rs}
    train = read_split(tmp_path, "train")

    def mean(xs: list[float]) -> str:
        return f"{sum(xs) / len(xs):.1f}"

    rows = [r for s in ("train", "validation", "test") for r in read_split(tmp_path, s)]
    n_new_genres = 0
    for row in rows:
        past = [h.rating for h in user_history(raw.ratings[row["user_id"]], row["cutoff"])]
        recent = past[-cfg.history :]
        u = raw.users[row["user_id"]]
        assert row["query"].startswith(
            f"User: {u.age}-year-old {u.gender}, {u.occupation}. {len(past)} earlier ratings, "
            f"average {mean(past)}; the last {len(recent)} average {mean(recent)}. Recent "
            "ratings (1-5, oldest first): "
        ), row
        seen = [rating[(r["user_id"], r["item_id"])] for r in train
                if r["item_id"] == row["item_id"] and r["ts"] < row["cutoff"]]  # fmt: skip
        hint = f"; rated {mean(seen)} on average by {len(seen)}" if seen else "; no ratings yet"
        genres = set(raw.movies[row["item_id"]].genres)
        mine = [h.rating for h in user_history(raw.ratings[row["user_id"]], row["cutoff"])
                if genres & set(raw.movies[h.item].genres)]  # fmt: skip
        n_new_genres += not mine
        hint += (f"; you rated its genres {mean(mine)} on average over {len(mine)}" if mine
                 else "; its genres new to you")  # fmt: skip
        assert row["item"] == render_movie(raw.movies[row["item_id"]]) + hint, row
    assert 0 < n_new_genres < len(rows)  # both affinity texts occur


def test_leave_last_out_is_an_extra_labelled_split(mini_source, tmp_path):
    cfg = MovieLensConfig(**{**MINI.__dict__, "leave_last_out": True})
    meta = build_movielens(tmp_path, cfg, source=mini_source)
    assert "test_llo" in meta["splits"] and "test_llo" in meta["notes"]
    rows = read_split(tmp_path, "test_llo")
    assert {r["query_id"].split(":")[0] for r in rows} == {"test_llo"}
    assert "test_llo" in check_folder(tmp_path)["splits"]


def test_reused_when_unchanged(mini_source, tmp_path):
    assert not build_movielens(tmp_path, MINI, source=mini_source)["reused"]
    assert build_movielens(tmp_path, MINI, source=mini_source)["reused"]
    other = MovieLensConfig(**{**MINI.__dict__, "history": 3})
    assert not build_movielens(tmp_path, other, source=mini_source)["reused"]


def test_missing_recbole_names_the_install_command(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(MovieLensError, match="pip install --no-deps recbole==1.2.1"):
        recbole_ml100k_dir()


def test_bad_atomic_file(mini_source, tmp_path):
    for name in ("user", "item", "inter"):
        (tmp_path / f"ml-100k.{name}").write_bytes((mini_source / f"ml-100k.{name}").read_bytes())
    with (tmp_path / "ml-100k.inter").open("a") as f:
        f.write("1\t2\t3\n")
    with pytest.raises(MovieLensError, match=r"ml-100k.inter line 752: 3 fields"):
        load_raw(tmp_path)


def test_cli(mini_source, tmp_path, capsys):
    from compression.__main__ import main

    args = ["data", "movielens", "--out", str(tmp_path), "--source", str(mini_source),
            "--history", "4", "--items-per-query", "3", "--min-history", "2",
            "--vocab-size", "300"]  # fmt: skip
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "test" in out and "terms" in out
    assert main(["data", "check", str(tmp_path), "--tokenizer", str(tmp_path / "tokenizer")]) == 0


@pytest.mark.skipif(not HAS_RECBOLE, reason="recbole not installed: scripts/install.sh adds it "
                    "(pip install --no-deps recbole==1.2.1)")  # fmt: skip
def test_real_movielens_first_100_users(tmp_path):
    cfg = MovieLensConfig(max_users=100, vocab_size=512)
    meta = build_movielens(tmp_path, cfg)
    assert meta["source_folder"] == str(recbole_ml100k_dir())
    _check_built(tmp_path, None, cfg)
