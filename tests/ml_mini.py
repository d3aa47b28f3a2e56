"""A small MovieLens-100k look-alike in RecBole's atomic-file format, for tests that must not
depend on the recbole package: users rate in same-second bursts, the last movie repeats the
title, year and genres of the one before it (as some movies do in MovieLens-100k), and ratings
carry signal (movie quality plus the user's genre tastes) so a model can beat chance."""

from __future__ import annotations

import random
from pathlib import Path

GENRES = ["Action", "Comedy", "Drama", "Sci-Fi", "Children's", "Film-Noir"]


def write_mini_movielens(
    folder: Path, n_users: int = 30, n_movies: int = 40, per_user: int = 25, seed: int = 0
) -> Path:
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    users = ["user_id:token\tage:token\tgender:token\toccupation:token\tzip_code:token"]
    users += [f"{u}\t{20 + u % 50}\t{'MF'[u % 2]}\t{['student', 'artist'][u % 2]}\t0{u}"
              for u in range(1, n_users + 1)]  # fmt: skip
    items = ["item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq"]
    genres: dict[int, list[str]] = {}
    for i in range(1, n_movies + 1):
        last = i == n_movies  # a duplicate of movie n_movies - 1
        genres[i] = genres[i - 1] if last else rng.sample(GENRES, 2)
        title = f"Movie {i - 1 if last else i}"
        items.append(f"{i}\t{title}\t{1990 + (i - last) % 8}\t{' '.join(genres[i])}")
    quality = {i: rng.gauss(0, 1) for i in genres}
    inter = []
    for u in range(1, n_users + 1):
        taste = {g: rng.gauss(0, 1) for g in GENRES}
        t = 1000 + rng.randrange(500)
        for i in rng.sample(range(1, n_movies + 1), min(per_user, n_movies)):
            t += rng.choice([0, 0, 0, 7, 40])  # most ratings share a second with the last one
            z = 3 + 0.9 * quality[i] + 0.8 * sum(taste[g] for g in genres[i]) / 2
            rating = min(5, max(1, round(z + rng.gauss(0, 0.7))))
            inter.append(f"{u}\t{i}\t{rating}\t{t}")
    rng.shuffle(inter)  # the real file is not sorted either
    inter.insert(0, "user_id:token\titem_id:token\trating:float\ttimestamp:float")
    for name, lines in (("user", users), ("item", items), ("inter", inter)):
        (folder / f"ml-100k.{name}").write_text("\n".join(lines) + "\n")
    return folder
