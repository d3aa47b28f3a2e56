"""``data render``: small tables (CSV interactions, Parquet members, JSONL items) to a checked
data folder; the time and leave-last splits; every bad input named by file, row and field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from compression.__main__ import main
from compression.data.render import load_config, render_folder
from ranking.data_audit import check_folder
from ranking.datafolder import DataError, read_split

DAY = 86400
ITEMS = [
    {"movie_id": i, "title": t, "genres": g}
    for i, (t, g) in enumerate(
        [
            ("Alpha", ["Drama"]),
            ("Beta", ["Comedy"]),
            ("Gamma", ["Drama", "War"]),
            ("Delta", ["Horror"]),
            ("Twin", ["Comedy"]),
            ("Twin", ["Comedy"]),
            ("Epsilon", ["Sci-Fi"]),
            ("Zeta", ["Drama"]),
        ],  # fmt: skip
        start=1,
    )
]
QUERY = (
    "Member {{ member.id }}, {{ member.age }}, {{ member.city }}. Recent: "
    "{% for h in history %}{{ h.text }} rated {{ h.rating }}"
    "{% if not loop.last %}; {% endif %}{% endfor %}."
)
ITEM = "{{ item.title }}: {{ item.genres | join(', ') }}"


def _ratings(members: int = 6, per_member: int = 12) -> list[dict]:
    """Each member's ratings a few days apart, except member 2's 6th to 8th: one second (a
    burst, as real logs have: "earlier" must be strict)."""
    rows = []
    for m in range(1, members + 1):
        for k in range(per_member):
            item = (m + k) % len(ITEMS) + 1
            day = min(k, 5) if m == 2 and k in (6, 7) else k
            rows.append({"user_id": m, "movie_id": item, "rating": (m * 7 + k * 3) % 5 + 1,
                         "ts": 1_600_000_000 + (day * members + m) * DAY})  # fmt: skip
    return rows


def _eligible(min_history: int = 2) -> dict[str, list[dict]]:
    """The oracle: per member, the first rating of each item, in time order, that has
    ``min_history`` strictly earlier ones."""
    first: dict[tuple, dict] = {}
    for r in _ratings():
        first.setdefault((r["user_id"], r["movie_id"]), r)
    out: dict[str, list[dict]] = {}
    for m in {r["user_id"] for r in first.values()}:
        rs = sorted((r for r in first.values() if r["user_id"] == m),
                    key=lambda r: (r["ts"], r["movie_id"]))  # fmt: skip
        out[str(m)] = [r for r in rs if sum(x["ts"] < r["ts"] for x in rs) >= min_history]
    return out


def _write_csv(path: Path, rows: list[dict]) -> Path:
    cols = list(rows[0])
    lines = [",".join(cols)] + [",".join(str(r[c]) for c in cols) for r in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def _tables(tmp: Path, ratings: list[dict] | None = None, **config) -> Path:
    """Writes the three tables and a config beside them; returns the config's path."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    # each member rates every item once at most: a member's 12 ratings cycle over 8 items,
    # so keep each (member, item)'s first (render would too, and count the rest)
    _write_csv(tmp / "ratings.csv", ratings or _ratings())
    pq.write_table(
        pa.Table.from_pylist(
            [{"user_id": m, "age": 20 + m, "city": f"C{m % 3}"} for m in range(1, 7)]
        ),
        tmp / "members.parquet",
    )
    (tmp / "items.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ITEMS))
    cfg = {
        "interactions": {
            "path": "ratings.csv",
            "member": "user_id",
            "item": "movie_id",
            "time": "ts",
            "label": "rating >= 4",
        },  # fmt: skip
        "members": {"path": "members.parquet", "key": "user_id"},
        "items": {"path": "items.jsonl", "key": "movie_id"},
        "templates": {"query": QUERY, "item": ITEM},
        "history": 3,
        "min_history": 2,
        "items_per_query": 3,
        "split": {"by": "time", "validation": 0.2, "test": 0.2},
        "vocab_size": 300,
    }
    for k, v in config.items():
        cfg[k] = {**cfg[k], **v} if isinstance(v, dict) and isinstance(cfg.get(k), dict) else v
    path = tmp / "render.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> tuple[Path, dict]:
    tmp = tmp_path_factory.mktemp("render")
    meta = render_folder(load_config(_tables(tmp)), tmp / "data")
    return tmp / "data", meta


def test_tables_render_to_a_checked_folder_split_by_time(rendered):
    out, meta = rendered
    t1, t2 = meta["cutoffs"]["T1"], meta["cutoffs"]["T2"]
    assert (out / "tokenizer" / "tokenizer.json").is_file()
    check_folder(out)
    ratings = {(r["user_id"], r["movie_id"]): r for r in reversed(_ratings())}  # first kept
    window = {"train": (float("-inf"), t1), "validation": (t1, t2), "test": (t2, float("inf"))}
    for split, (lo, hi) in window.items():
        rows = read_split(out, split)
        assert rows and meta["splits"][split]["rows"] == len(rows)
        for row in rows:
            assert isinstance(row["user_id"], str)  # keys are text
            r = ratings[(int(row["user_id"]), int(row["item_id"]))]
            assert lo <= row["ts"] < hi and row["ts"] == r["ts"]
            assert row["label"] == int(r["rating"] >= 4)
            title = ITEMS[r["movie_id"] - 1]["title"]
            assert row["item"] == f"{title}: {', '.join(ITEMS[r['movie_id'] - 1]['genres'])}"
            m = int(row["user_id"])
            assert row["query"].startswith(f"Member {m}, {20 + m}, C{m % 3}. Recent: ")
            # the history shown is the member's 3 latest ratings strictly before the cutoff
            before = sorted((x for x in ratings.values() if x["user_id"] == m
                             and x["ts"] < row["cutoff"]), key=lambda x: x["ts"])  # fmt: skip
            assert len(before) >= 2
            shown = "; ".join(
                f"{ITEMS[x['movie_id'] - 1]['title']}: "
                f"{', '.join(ITEMS[x['movie_id'] - 1]['genres'])} rated {x['rating']}"
                for x in before[-3:]
            )
            assert row["query"] == f"Member {m}, {20 + m}, C{m % 3}. Recent: {shown}."
    # every eligible rating is written exactly once, in the split its time says
    written = sorted((r["user_id"], r["item_id"], r["ts"]) for s in window
                     for r in read_split(out, s))  # fmt: skip
    expected = sorted((m, str(r["movie_id"]), r["ts"]) for m, rs in _eligible().items()
                      for r in rs)  # fmt: skip
    assert written == expected
    # members rate items 5 and 6 ("Twin"), two ids with one text: both kept, and counted
    assert sum(meta["shared_item_text"].values()) > 0
    assert meta["repeated_interactions_dropped"] == 6 * (12 - len(ITEMS))


def test_leave_last_puts_each_members_last_interactions_in_test(tmp_path):
    cfg = load_config(_tables(tmp_path, split={"by": "leave_last", "n": 2}))
    meta = render_folder(cfg, tmp_path / "data")
    assert meta["cutoffs"] == {}
    got = {s: read_split(tmp_path / "data", s) for s in ("train", "validation", "test")}
    for m, rs in _eligible().items():
        want = {"train": rs[:-4], "validation": rs[-4:-2], "test": rs[-2:]}
        for split, expected in want.items():
            mine = [(r["item_id"], r["ts"]) for r in got[split] if r["user_id"] == m]
            assert sorted(mine) == sorted((str(r["movie_id"]), r["ts"]) for r in expected)


def test_dates_are_times_and_a_label_column_is_taken_as_is(tmp_path):
    import datetime as dt

    rows = [
        {
            **r,
            "ts": dt.datetime.fromtimestamp(r["ts"], dt.UTC).strftime("%Y-%m-%dT%H:%M:%S"),
            "liked": int(r["rating"] >= 4),
        }  # fmt: skip
        for r in _ratings()
    ]
    cfg = load_config(_tables(tmp_path, rows, interactions={"label": "liked"}))
    meta = render_folder(cfg, tmp_path / "data")
    (tmp_path / "numbers").mkdir()
    base = render_folder(load_config(_tables(tmp_path / "numbers")), tmp_path / "base")
    assert meta["cutoffs"] == base["cutoffs"]  # ISO datetimes without a zone are UTC
    assert read_split(tmp_path / "data", "test") == read_split(tmp_path / "base", "test")


# ---- bad input: each message names the file, the row and the field ---------------------------
def _error(tmp: Path, **config) -> str:
    ratings = config.pop("ratings", None)
    with pytest.raises(DataError) as exc:
        render_folder(load_config(_tables(tmp, ratings, **config)), tmp / "data")
    return str(exc.value)


def test_a_missing_column_is_named_with_its_role(tmp_path):
    msg = _error(tmp_path, interactions={"time": "when"})
    assert "ratings.csv: no column 'when' (interactions.time)" in msg and "its columns" in msg
    msg = _error(tmp_path, items={"key": "id"})
    assert "items.jsonl: no column 'id' (the items table's key)" in msg


def test_a_template_field_that_does_not_exist_is_named(tmp_path):
    msg = _error(tmp_path, templates={"query": QUERY, "item": "{{ item.titel }}"})
    assert "templates.item: no field 'titel' (or it is empty)" in msg
    assert "items.jsonl line" in msg and "item.title" in msg  # where, and what it can use
    msg = _error(tmp_path, templates={"query": "{{ member.name }}", "item": ITEM})
    assert "templates.query: no field 'name' (or it is empty)" in msg and "member.age" in msg
    msg = _error(tmp_path, templates={"query": "{% for h in history %}", "item": ITEM})
    assert "templates.query line 1:" in msg


def test_a_key_missing_from_an_attribute_table_is_named(tmp_path):
    rows = _ratings()
    rows[4]["movie_id"] = 99
    msg = _error(tmp_path, ratings=rows)
    assert "ratings.csv line 6: field 'movie_id': '99' is not in" in msg and "items.jsonl" in msg


def test_a_time_that_is_neither_a_number_nor_a_date_is_named(tmp_path):
    rows = _ratings()
    rows[2]["ts"] = "yesterday"
    msg = _error(tmp_path, ratings=rows)
    assert "ratings.csv line 4: field 'ts': 'yesterday' is not a time" in msg


def test_a_label_expression_over_an_unknown_column_is_named(tmp_path):
    msg = _error(tmp_path, interactions={"label": "stars >= 4"})
    assert (
        "ratings.csv line 2: interactions.label 'stars >= 4': no field 'stars' (or it is empty)"
        in msg
    )


def test_the_cli_renders_and_refuses_to_overwrite(tmp_path, capsys):
    config = _tables(tmp_path)
    assert main(["data", "render", str(config), "--out", str(tmp_path / "d"), "--no-progress"]) == 0
    assert "[render]   test" in capsys.readouterr().out
    assert main(["data", "render", str(config), "--out", str(tmp_path / "d")]) == 2
    assert "--force replaces it" in capsys.readouterr().err
    bad = _tables(tmp_path, interactions={"member": "uid"})
    assert main(["data", "render", str(bad), "--out", str(tmp_path / "e")]) == 2
    assert "no column 'uid' (interactions.member)" in capsys.readouterr().err


def test_the_shipped_example_renders(tmp_path):
    """docs/data.md's example, as a new user runs it."""
    config = Path(__file__).resolve().parents[1] / "examples" / "render" / "render.yaml"
    meta = render_folder(load_config(config), tmp_path / "shop")
    assert all(meta["splits"][s]["rows"] > 100 for s in ("train", "validation", "test"))
    row = read_split(tmp_path / "shop", "test")[0]
    assert row["query"].startswith("Member: ") and " EUR (" in row["query"]


def test_item_stats_count_train_rows_before_the_cutoff_only(tmp_path):
    """A popularity hint from the train split, as of the query's cutoff: a train row's own
    label never reaches its text; validation and test see every train row."""
    item = ("{{ item.title }} n={{ item.stats.count }} p={{ item.stats.positive_rate }} "
            "{{ item.stats.mean | sort | join(',') }}{% if item.stats.count %} "
            "m={{ '%.4f' | format(item.stats.mean.rating) }}{% endif %}")  # fmt: skip
    render_folder(load_config(_tables(tmp_path, templates={"query": QUERY, "item": item})),
                  tmp_path / "data")  # fmt: skip
    train = read_split(tmp_path / "data", "train")
    rating = {(r["user_id"], r["movie_id"]): r["rating"] for r in reversed(_ratings())}
    for split in ("train", "validation", "test"):
        for row in read_split(tmp_path / "data", split):
            past = [r for r in train if r["item_id"] == row["item_id"] and r["ts"] < row["cutoff"]]
            rate = sum(r["label"] for r in past) / len(past) if past else None
            # the mean of each numeric column but the time: here the rating
            mean = sum(rating[(int(r["user_id"]), int(r["item_id"]))] for r in past) / len(
                past) if past else None  # fmt: skip
            tail = f" n={len(past)} p={rate}" + (f" rating m={mean:.4f}" if past else "")
            assert row["item"].endswith(tail), (split, row)
            if split != "train":
                assert len(past) == sum(r["item_id"] == row["item_id"] for r in train)


def test_a_profile_tallies_every_earlier_interaction(tmp_path):
    """``past`` holds all of a member's interactions strictly before the cutoff (``history``
    only the last 3), and ``tally`` groups them by a list attribute: count and liked share per
    genre, most first, then by name."""
    query = ("n={{ past | length }}{% for g in past | tally('item.genres') %} "
             "{{ g.value }}:{{ g.count }}:{{ '%.3f' | format(g.positive_rate) }}{% endfor %}")  # fmt: skip
    render_folder(load_config(_tables(tmp_path, templates={"query": query, "item": ITEM})),
                  tmp_path / "data")  # fmt: skip
    ratings = {(r["user_id"], r["movie_id"]): r for r in reversed(_ratings())}  # first kept
    rows = [r for s in ("train", "validation", "test") for r in read_split(tmp_path / "data", s)]
    assert max(int(r["query"].split()[0][2:]) for r in rows) > 3  # past reaches beyond history
    for row in rows:
        before = [x for x in ratings.values()
                  if x["user_id"] == int(row["user_id"]) and x["ts"] < row["cutoff"]]  # fmt: skip
        tally: dict[str, list[int]] = {}
        for x in before:
            for g in ITEMS[x["movie_id"] - 1]["genres"]:
                tally.setdefault(g, []).append(int(x["rating"] >= 4))
        order = sorted(tally, key=lambda g: (-len(tally[g]), g))
        expected = f"n={len(before)}" + "".join(
            f" {g}:{len(tally[g])}:{sum(tally[g]) / len(tally[g]):.3f}" for g in order
        )
        assert row["query"] == expected, row


def test_an_item_template_may_read_the_member_and_their_past(tmp_path):
    """An item's text per query: ``sharing`` keeps the member's earlier interactions with an
    item of one of the candidate's genres (the member x item cross a tabular model has)."""
    item = ("{{ item.title }} for {{ member.city }}{% set mine = past | sharing('item.genres', "
            "item.genres) %}: {{ mine | length }} {{ mine | sum(attribute='rating') }}")  # fmt: skip
    render_folder(load_config(_tables(tmp_path, templates={"query": QUERY, "item": item})),
                  tmp_path / "data")  # fmt: skip
    ratings = {(r["user_id"], r["movie_id"]): r for r in reversed(_ratings())}  # first kept
    counts = set()
    for split in ("train", "validation", "test"):
        for row in read_split(tmp_path / "data", split):
            genres = set(ITEMS[int(row["item_id"]) - 1]["genres"])
            mine = [x for x in ratings.values() if x["user_id"] == int(row["user_id"])
                    and x["ts"] < row["cutoff"]
                    and genres & set(ITEMS[x["movie_id"] - 1]["genres"])]  # fmt: skip
            counts.add(len(mine))
            title, city = ITEMS[int(row["item_id"]) - 1]["title"], f"C{int(row['user_id']) % 3}"
            total = sum(x["rating"] for x in mine)
            assert row["item"] == f"{title} for {city}: {len(mine)} {total}", (split, row)
    assert 0 in counts and max(counts) > 1  # both an unseen genre and several sharing


def test_sharing_names_a_missing_attribute(tmp_path):
    item = "{{ item.title }} {{ past | sharing('item.colour', 'red') | length }}"
    with pytest.raises(DataError, match=r"templates.item: .*sharing\('item.colour'\).*'colour'"):
        render_folder(load_config(_tables(tmp_path, templates={"query": QUERY, "item": item})),
                      tmp_path / "data")  # fmt: skip


def test_tally_names_a_missing_attribute(tmp_path):
    query = "{% for g in past | tally('item.colour') %}{{ g.value }}{% endfor %}x"
    with pytest.raises(DataError, match=r"templates.query: .*tally\('item.colour'\).*'colour'"):
        render_folder(load_config(_tables(tmp_path, templates={"query": query, "item": ITEM})),
                      tmp_path / "data")  # fmt: skip


def test_naive_times_are_utc_and_offsets_are_kept(tmp_path, monkeypatch):
    """ISO text read by the JSONL path (no pyarrow parsing), on a machine in another zone."""
    import time

    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    try:
        from compression.data.tables import Table, unix_seconds

        t = Table(tmp_path / "x.jsonl", [], [1], [])
        assert unix_seconds("2024-03-01T00:00:00", t, 0, "ts") == 1709251200
        assert unix_seconds("2024-03-01", t, 0, "ts") == 1709251200
        assert unix_seconds("2024-03-01T01:00:00+01:00", t, 0, "ts") == 1709251200
        assert unix_seconds("2024-03-01T00:00:00Z", t, 0, "ts") == 1709251200
        assert unix_seconds("1709251200", t, 0, "ts") == 1709251200
        with pytest.raises(DataError, match="x.jsonl line 1: field 'ts': 1709251200000 seconds"):
            unix_seconds(1709251200000, t, 0, "ts")  # milliseconds
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()


def test_keys_are_text_as_written(tmp_path):
    """``00123`` and ``123`` are two products, in a CSV as in JSONL."""
    items = [{"sku": "00123", "name": "Lamp"}, {"sku": "123", "name": "Desk"}]
    rows = [{"m": m, "sku": ("00123", "123")[k % 2], "liked": k % 2, "ts": 1000 * (10 * m + k)}
            for m in range(1, 9) for k in range(2)]  # fmt: skip
    rows += [{"m": m, "sku": f"x{k}", "liked": (m + k) % 2, "ts": 1000 * (10 * m + k + 2)}
             for m in range(1, 9) for k in range(6)]  # fmt: skip
    items += [{"sku": f"x{k}", "name": f"Thing {k}"} for k in range(6)]
    _write_csv(tmp_path / "i.csv", rows)
    (tmp_path / "items.jsonl").write_text("".join(json.dumps(r) + "\n" for r in items))
    cfg = {"interactions": {"path": "i.csv", "member": "m", "item": "sku", "time": "ts",
                            "label": "liked"},
           "items": {"path": "items.jsonl", "key": "sku"},
           "templates": {"query": "member {{ member.id }}", "item": "{{ item.name }}"},
           "min_history": 0, "split": {"by": "leave_last", "n": 1}, "vocab_size": 300}  # fmt: skip
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(cfg))
    meta = render_folder(load_config(tmp_path / "r.yaml"), tmp_path / "d")
    assert meta["repeated_interactions_dropped"] == 0
    rows = [r for s in ("train", "validation", "test") for r in read_split(tmp_path / "d", s)]
    assert {r["item"] for r in rows if r["item_id"] == "00123"} == {"Lamp"}
    assert {r["item"] for r in rows if r["item_id"] == "123"} == {"Desk"}


def test_a_null_attribute_stops_the_template_that_uses_it(tmp_path):
    _tables(tmp_path)
    items = [dict(r) for r in ITEMS]
    items[2]["title"] = None
    (tmp_path / "items.jsonl").write_text("".join(json.dumps(r) + "\n" for r in items))
    with pytest.raises(DataError) as exc:
        render_folder(load_config(tmp_path / "render.yaml"), tmp_path / "data")
    assert "templates.item: no field 'title' (or it is empty) (item '3', " in str(exc.value)
    assert "items.jsonl line 3" in str(exc.value)


def test_a_member_column_named_like_a_contract_field_is_refused(tmp_path):
    rows = [{**r, "query": r.pop("user_id")} for r in _ratings()]
    msg = _error(tmp_path, ratings=rows, interactions={"member": "query"},
                 members={"path": "members.parquet", "key": "user_id"})  # fmt: skip
    assert "interactions.member 'query' is a column the data folder writes itself" in msg


def test_a_config_value_of_the_wrong_type_is_named(tmp_path):
    assert "history must be int, got '10'" in _error(tmp_path, history="10")
    assert "interactions.label must be str, got True" in _error(
        tmp_path, interactions={"label": True}
    )


def test_a_rerender_replaces_the_whole_folder_and_a_failed_one_keeps_it(tmp_path):
    render_folder(load_config(_tables(tmp_path, split={"leave_last_out": True})), tmp_path / "d")
    assert (tmp_path / "d" / "test_llo.jsonl").is_file()
    render_folder(load_config(_tables(tmp_path)), tmp_path / "d")
    assert not (tmp_path / "d" / "test_llo.jsonl").exists()  # nothing stale stays
    before = (tmp_path / "d" / "test.jsonl").read_bytes()
    bad = load_config(_tables(tmp_path, templates={"query": QUERY, "item": "{{ item.nope }}"}))
    with pytest.raises(DataError):
        render_folder(bad, tmp_path / "d")
    assert (tmp_path / "d" / "test.jsonl").read_bytes() == before
    check_folder(tmp_path / "d")
