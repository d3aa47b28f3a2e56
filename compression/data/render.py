"""Tables to a data folder: a team's interactions (and member and item attribute tables)
rendered into query and item text by Jinja templates, split by time, checked, with a tokenizer.

One query is a member at a moment (its cutoff): the template sees the member's attributes,
their most recent interactions strictly before the cutoff (``history``) and all of them
(``past``, for profiles a template aggregates with the ``tally`` filter). Its items are
interactions of the same member from the cutoff on, several per query (they share the query's
prefix, as in real traffic). Templates are Jinja, as chat templates are, in the same sandbox;
a field a template names that a row lacks is an error, never an empty string.

Splits (``split.by``):

- ``time``: global cutoffs ``T1 < T2`` at quantiles of all interaction times; train items are
  before ``T1``, validation items in ``[T1, T2)``, test items from ``T2`` on. A history may reach
  back across the cutoffs but is strictly earlier than its query's cutoff, so train sees nothing
  at or after ``T1``. ``leave_last_out`` also writes ``test_llo``: each member's last
  interactions (it overlaps train; not comparable with the time split).
- ``leave_last``: per member, the last ``n`` eligible interactions are test, the ``n`` before
  them validation, the rest train (each member's future is held out, not the world's).

An interaction is eligible as an item once its member has ``min_history`` earlier ones. An item
a member met more than once keeps its first interaction (counted in ``meta.json``).

The MovieLens builder (``compression.data.movielens``) is one configuration of this module.
"""

from __future__ import annotations

import json
import re
import time
from bisect import bisect_left
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Literal

import numpy as np

from compression.data.tables import Table, key_text, missing, read_table, unix_seconds
from ranking.datafolder import OPTIONAL, REQUIRED, DataError
from ranking.task import RankingTask

GENERATOR = "compression.data.render"
# columns every rendered row has: a member key column may not take one of these names
RESERVED = (*REQUIRED, *OPTIONAL, "cutoff")


# ---- configuration -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Interactions:
    path: str
    member: str  # the column holding the member (query) key
    item: str  # the column holding the item key
    time: str  # seconds since the epoch, or a date / datetime
    label: str  # a 0/1 (or [0, 1]) column, or a Jinja expression over the row: rating >= 4


@dataclass(frozen=True)
class Attributes:
    path: str
    key: str  # the column matching the interactions' member / item column


@dataclass(frozen=True)
class Templates:
    query: str  # sees member, history (oldest first), past, cutoff; the tally filter
    item: str  # sees item


@dataclass(frozen=True)
class Split:
    by: Literal["time", "leave_last"] = "time"
    validation: float = 0.05  # by time: share of all interactions in [T1, T2)
    test: float = 0.10  # by time: share of all interactions from T2 on
    n: int = 1  # by leave_last: interactions per member in test (and as many in validation)
    leave_last_out: bool = False  # by time: also write test_llo


@dataclass(frozen=True)
class RenderConfig:
    interactions: Interactions
    templates: Templates
    members: Attributes | None = None
    items: Attributes | None = None
    history: int = 10  # interactions shown per query, the most recent first dropped last
    min_history: int = 5  # earlier interactions a member needs before one becomes an item
    items_per_query: int = 10  # at most; a member's window is cut into near-equal chunks
    split: Split = field(default_factory=Split)
    vocab_size: int = 2048

    @classmethod
    def from_dict(cls, d: dict, base: Path | None = None) -> RenderConfig:
        """From a parsed YAML config; table paths relative to ``base`` (the config's folder)."""
        d = dict(d)
        unknown = set(d) - {f for f in cls.__dataclass_fields__}
        if unknown:
            raise DataError(f"render config: unknown keys {sorted(unknown)} (known: "
                            f"{', '.join(cls.__dataclass_fields__)})")  # fmt: skip
        sections = {"interactions": Interactions, "templates": Templates, "members": Attributes,
                    "items": Attributes, "split": Split}  # fmt: skip
        for name, kind in sections.items():
            if d.get(name) is None:
                if name in ("interactions", "templates"):
                    raise DataError(f"render config: no {name!r} section")
                continue
            if not isinstance(d[name], dict):
                raise DataError(f"render config: {name!r} must be a mapping")
            try:
                d[name] = kind(**d[name])
            except TypeError as exc:
                raise DataError(f"render config: {name}: {exc}") from None
            if base is not None and hasattr(d[name], "path"):
                path = Path(d[name].path)
                d[name] = replace(d[name], path=str(path if path.is_absolute() else base / path))
        cfg = cls(**d)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        for name, obj in (("", self), ("interactions.", self.interactions),
                          ("templates.", self.templates), ("members.", self.members),
                          ("items.", self.items), ("split.", self.split)):  # fmt: skip
            _check_types(obj, name)
        s = self.split
        if self.interactions.member in RESERVED:
            raise DataError(
                f"render config: interactions.member {self.interactions.member!r} is a column "
                "the data folder writes itself (the member key is written under its own column "
                f"name); rename that column in the table (reserved: {', '.join(RESERVED)})"
            )
        if s.leave_last_out and s.by != "time":
            raise DataError("render config: split.leave_last_out goes with split.by: time")
        if s.by not in ("time", "leave_last"):
            raise DataError(f"render config: split.by must be time or leave_last, got {s.by!r}")
        if s.by == "time" and not (0 < s.validation and 0 < s.test and s.validation + s.test < 1):
            raise DataError(f"render config: split needs 0 < validation, test and a sum < 1, got "
                            f"{s.validation}, {s.test}")  # fmt: skip
        if s.by == "leave_last" and s.n < 1:
            raise DataError(f"render config: split.n must be >= 1, got {s.n}")
        for name in ("history", "items_per_query"):
            if getattr(self, name) < 1:
                raise DataError(f"render config: {name} must be >= 1")
        if self.min_history < 0:
            raise DataError("render config: min_history must be >= 0")


TYPES = {"str": (str,), "int": (int,), "float": (int, float), "bool": (bool,)}


def _check_types(obj, prefix: str) -> None:
    """Each config field of a plain type (str, int, float, bool) holds one."""
    if obj is None:
        return
    for f in obj.__dataclass_fields__.values():
        want = TYPES.get(str(f.type))
        value = getattr(obj, f.name)
        if want and (not isinstance(value, want) or (bool not in want and isinstance(value, bool))):
            raise DataError(f"render config: {prefix}{f.name} must be {f.type}, got {value!r}")


def load_config(path: str | Path) -> RenderConfig:
    import yaml

    path = Path(path)
    try:
        d = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise DataError(f"render config {path}: {exc}") from None
    if not isinstance(d, dict):
        raise DataError(f"render config {path}: expected a mapping at the top")
    return RenderConfig.from_dict(d, base=path.parent)


# ---- templates ---------------------------------------------------------------------------------
class Templating:
    """The config's two templates and label expression, compiled in the chat-template sandbox
    with strict undefined fields."""

    def __init__(self, templates: Templates, label: str | None):
        from jinja2 import StrictUndefined, TemplateSyntaxError, meta
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        env = ImmutableSandboxedEnvironment(
            undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True
        )
        env.filters["tally"] = tally
        env.filters["sharing"] = sharing
        self.sources = {"query": templates.query, "item": templates.item}
        self.compiled = {}
        self.names: dict[str, set[str]] = {}
        for name, src in self.sources.items():
            try:
                self.compiled[name] = env.from_string(src)
                self.names[name] = meta.find_undeclared_variables(env.parse(src))
            except TemplateSyntaxError as exc:
                raise DataError(f"templates.{name} line {exc.lineno}: {exc.message}") from None
        self.label = None
        if label is not None:
            try:
                self.label = env.compile_expression(label, undefined_to_none=False)
            except TemplateSyntaxError as exc:
                raise DataError(f"interactions.label {label!r}: {exc.message}") from None

    def render(self, name: str, context: dict, where: Callable[[], str]) -> str:
        from jinja2 import UndefinedError

        try:
            text = self.compiled[name].render(**context).strip()
        except UndefinedError as exc:
            raise DataError(
                f"templates.{name}: {_undefined(exc)} ({where()}); it can use {_fields(context)}"
            ) from None
        except Exception as exc:  # noqa: BLE001 - a filter or comparison on this row's values
            raise DataError(f"templates.{name}: {type(exc).__name__}: {exc} ({where()})") from None
        if not text:
            raise DataError(f"templates.{name} rendered empty text ({where()})")
        return text


def _undefined(exc: Exception) -> str:
    """Jinja's "'dict object' has no attribute 'x'" as "unknown field 'x'"."""
    m = re.search(r"has no attribute '([^']+)'|'([^']+)' is undefined", str(exc))
    name = next(g for g in m.groups() if g) if m else None
    return f"no field {name!r} (or it is empty)" if name else str(exc)


def _fields(context: dict) -> str:
    out = []
    for name, value in context.items():
        if isinstance(value, dict):
            out.append(", ".join(f"{name}.{k}" for k in value))
        elif isinstance(value, list):
            keys = list(value[0]) if value and isinstance(value[0], dict) else []
            out.append(f"{name} (a list of {', '.join(keys) or 'entries'})")
        else:
            out.append(name)
    return "; ".join(out)


# ---- interactions ------------------------------------------------------------------------------
@dataclass
class Interaction:
    member: str
    item: str
    ts: int
    label: float | int
    row: dict  # the interaction's own columns (history entries show them: a rating, a dwell)


def natural(key: str) -> tuple:
    """Sort order of keys: numbers by value before other text."""
    return (0, int(key), "") if key.isdecimal() else (1, 0, key)


@dataclass
class Keyed:
    """An attribute table by key: each key's present values (a null or NaN is left out, so a
    template that uses it is stopped, not given "None") and its row, for messages."""

    table: Table
    values: dict[str, dict]
    rows: dict[str, int]

    def where(self, key: str) -> str:
        return self.table.where(self.rows[key])


@dataclass
class Tables:
    """The interactions and the attribute tables, keyed."""

    interactions: Table
    members: Keyed | None = None
    items: Keyed | None = None


def present(row: dict, drop: tuple[str, ...] = ()) -> dict:
    return {c: v for c, v in row.items() if c not in drop and not missing(v)}


def keyed(table: Table, key: str, what: str) -> Keyed:
    table.require(key, f"the {what} table's key")
    values: dict[str, dict] = {}
    rows: dict[str, int] = {}
    for i, row in enumerate(table.rows):
        k = row.get(key)
        if missing(k):
            raise DataError(f"{table.where(i)}: field {key!r}: missing key")
        k = key_text(k)
        if k in rows:
            raise DataError(f"{table.where(i)}: field {key!r}: key {k!r} appears twice "
                            f"(first at {table.where(rows[k])})")  # fmt: skip
        values[k], rows[k] = present(row, (key,)), i
    return Keyed(table, values, rows)


def label_is_column(c: Interactions, table: Table) -> bool:
    """The label names a column when the table has one of that name or it is a bare name (then
    a missing column is named as such); anything else is an expression."""
    return c.label in table.columns or c.label.isidentifier()


def read_tables(cfg: RenderConfig) -> Tables:
    c = cfg.interactions
    inter = read_table(c.path, key_columns=(c.member, c.item))
    for col, role in ((c.member, "interactions.member"), (c.item, "interactions.item"),
                      (c.time, "interactions.time")):  # fmt: skip
        inter.require(col, role)
    if label_is_column(c, inter):
        inter.require(c.label, "interactions.label")
    members = items = None
    if cfg.members:
        members = keyed(read_table(cfg.members.path, (cfg.members.key,)), cfg.members.key,
                        "members")  # fmt: skip
    if cfg.items:
        items = keyed(read_table(cfg.items.path, (cfg.items.key,)), cfg.items.key, "items")
    return Tables(inter, members, items)


def interactions(cfg: RenderConfig, t: Tables, tpl: Templating) -> tuple[dict, dict]:
    """Per member, their interactions sorted by (time, item), an item's repeats dropped; and
    counts for meta.json."""
    c, table = cfg.interactions, t.interactions
    label_column = c.label if label_is_column(c, table) else None
    per_member: dict[str, dict[str, Interaction]] = {}
    repeats = 0
    for i, row in enumerate(table.rows):
        for col in (c.member, c.item):
            if missing(row.get(col)):
                raise DataError(f"{table.where(i)}: field {col!r}: missing key")
        member, item = key_text(row[c.member]), key_text(row[c.item])
        for key, col, attrs in ((member, c.member, t.members), (item, c.item, t.items)):
            if attrs is not None and key not in attrs.values:
                raise DataError(f"{table.where(i)}: field {col!r}: {key!r} is not in "
                                f"{attrs.table.path}")  # fmt: skip
        ts = unix_seconds(row.get(c.time), table, i, c.time)
        label = _label(row, label_column, tpl, table, i, c.label)
        own = present(row, (c.member, c.item))
        x = Interaction(member, item, ts, label, own)
        seen = per_member.setdefault(member, {})
        if item in seen:
            repeats += 1
            if ts >= seen[item].ts:
                continue
        seen[item] = x
    sorted_by_member = {
        m: sorted(xs.values(), key=lambda x: (x.ts, natural(x.item)))
        for m, xs in per_member.items()
    }
    return sorted_by_member, {"repeated_interactions_dropped": repeats}


def _label(row: dict, column: str | None, tpl: Templating, table: Table, i: int, spec: str):
    from jinja2 import UndefinedError

    if column is not None:
        value = row.get(column)
        if isinstance(value, bool):
            value = int(value)
        if not isinstance(value, int | float) or not 0 <= value <= 1:
            raise DataError(f"{table.where(i)}: field {column!r}: label {value!r} is not 0/1 or "
                            "in [0, 1]")  # fmt: skip
        return value
    try:
        value = tpl.label(**row)
    except UndefinedError as exc:
        raise DataError(f"{table.where(i)}: interactions.label {spec!r}: {_undefined(exc)}; "
                        f"columns: {', '.join(table.columns)}") from None  # fmt: skip
    except Exception as exc:  # noqa: BLE001 - e.g. comparing text with a number
        raise DataError(f"{table.where(i)}: interactions.label {spec!r}: {type(exc).__name__}: "
                        f"{exc}") from None  # fmt: skip
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int | float) and 0 <= value <= 1:
        return value
    raise DataError(f"{table.where(i)}: interactions.label {spec!r} gave {value!r}, not a "
                    "truth value or a number in [0, 1]")  # fmt: skip


def tally(entries: list[dict], attribute: str) -> list[dict]:
    """The ``tally`` filter: interactions grouped by an attribute's value (a dotted path such as
    ``item.genres``; a list value counts once under each element), as ``{value, count,
    positive_rate}`` by count, largest first, then value: a member's profile from ``past``."""
    count: dict = {}
    positives: dict = {}
    for entry in entries:
        value = _attribute(entry, attribute, "tally")
        for v in value if isinstance(value, (list, tuple)) else (value,):
            if missing(v):
                continue
            count[v] = count.get(v, 0) + 1
            positives[v] = positives.get(v, 0.0) + float(entry["label"])
    order = sorted(count, key=lambda v: (-count[v], str(v)))
    return [{"value": v, "count": count[v], "positive_rate": positives[v] / count[v]}
            for v in order]  # fmt: skip


def sharing(entries: list[dict], attribute: str, values) -> list[dict]:
    """The ``sharing`` filter: the interactions whose attribute (a dotted path; a value or a
    list) has a value in ``values`` (one value or a list): in an item template, ``past |
    sharing('item.genres', item.genres)`` is the member's earlier interactions with an item of
    one of the candidate's genres."""
    wanted = set(values) if isinstance(values, (list, tuple, set)) else {values}
    out = []
    for entry in entries:
        value = _attribute(entry, attribute, "sharing")
        if wanted.intersection(value if isinstance(value, (list, tuple)) else (value,)):
            out.append(entry)
    return out


def _attribute(entry: dict, attribute: str, fn: str):
    value = entry
    for part in attribute.split("."):
        if not isinstance(value, dict) or part not in value:
            raise DataError(f"{fn}({attribute!r}): an interaction has no {part!r}")
        value = value[part]
    return value


# ---- queries -----------------------------------------------------------------------------------
@dataclass
class Query:
    query_id: str
    member: str
    cutoff: int  # the first item's time; history is strictly earlier
    history: list[Interaction]  # oldest first
    items: list[Interaction]
    # the member's interactions (shared by its queries, not copied) and how many precede the
    # cutoff: ``past`` is built only when a template reads it
    timeline: list[Interaction] = field(default_factory=list, repr=False)
    n_before: int = 0

    @property
    def past(self) -> list[Interaction]:
        """Every interaction of the member strictly before the cutoff, oldest first."""
        return self.timeline[: self.n_before]


def history_before(xs: list[Interaction], cutoff: int) -> list[Interaction]:
    """A member's interactions strictly before ``cutoff``, oldest first (``xs`` sorted)."""
    return xs[: bisect_left([x.ts for x in xs], cutoff)]


def time_cutoffs(timestamps: np.ndarray, validation: float, test: float) -> tuple[int, int]:
    """(T1, T2): the validation window starts at T1, the test window at T2."""
    t1 = int(np.quantile(timestamps, 1 - validation - test, method="lower"))
    t2 = int(np.quantile(timestamps, 1 - test, method="lower"))
    if not t1 < t2:
        raise DataError(f"time cutoffs T1={t1}, T2={t2} coincide: the split's shares are too "
                        "small for this data")  # fmt: skip
    return t1, t2


def _eligible(xs: list[Interaction], min_history: int) -> list[Interaction]:
    times = [x.ts for x in xs]
    return [x for x in xs if bisect_left(times, x.ts) >= min_history]


def _chunks(
    split: str, member: str, xs: list, times: list[int], window: list, cfg: RenderConfig
) -> list[Query]:
    if not window:
        return []
    n_chunks = -(-len(window) // cfg.items_per_query)
    out = []
    for k, idx in enumerate(np.array_split(np.arange(len(window)), n_chunks)):
        items = [window[i] for i in idx]
        cutoff = min(x.ts for x in items)
        n = bisect_left(times, cutoff)
        hist = xs[max(0, n - cfg.history) : n]
        out.append(Query(f"{split}:{member}:{k}", member, cutoff, hist, items, xs, n))
    return out


def build_queries(
    per_member: dict[str, list[Interaction]], cfg: RenderConfig
) -> tuple[dict[str, list[Query]], dict]:
    """Queries per split and the split's cutoffs (``{"T1", "T2"}`` for a time split)."""
    s = cfg.split
    out: dict[str, list[Query]] = {"train": [], "validation": [], "test": []}
    cutoffs: dict = {}
    if s.by == "time":
        ts = np.array([x.ts for xs in per_member.values() for x in xs], dtype=np.int64)
        if not len(ts):
            raise DataError(f"{cfg.interactions.path}: no interactions")
        t1, t2 = time_cutoffs(ts, s.validation, s.test)
        cutoffs = {"T1": t1, "T2": t2}
        if s.leave_last_out:
            out["test_llo"] = []
    for member in sorted(per_member, key=natural):
        xs = per_member[member]
        times = [x.ts for x in xs]
        eligible = _eligible(xs, cfg.min_history)
        if s.by == "time":
            windows = {
                "train": [x for x in eligible if x.ts < t1],
                "validation": [x for x in eligible if t1 <= x.ts < t2],
                "test": [x for x in eligible if x.ts >= t2],
            }
        else:
            n = s.n
            windows = {
                "train": eligible[: -2 * n] if len(eligible) > 2 * n else [],
                "validation": eligible[-2 * n : -n] if len(eligible) > n else [],
                "test": eligible[-n:],
            }
        for split, window in windows.items():
            out[split].extend(_chunks(split, member, xs, times, window, cfg))
        if s.by == "time" and s.leave_last_out and eligible:
            last = eligible[-cfg.items_per_query :]
            out["test_llo"].extend(_chunks("test_llo", member, xs, times, last, cfg))
    return out, cutoffs


# ---- text --------------------------------------------------------------------------------------
class ItemStats:
    """Per item, how its interactions among the train split's rows went before a moment: what a
    popularity hint may say (how many, the share of positives, the mean of each numeric column
    of the interactions, such as a rating). Counted strictly before the query's cutoff, so a
    train row's own label never reaches its text, and validation and test see train only."""

    def __init__(self, train: list[Query], skip: tuple[str, ...] = ()):
        seen: dict[str, list] = {}
        for q in train:
            for x in q.items:
                seen.setdefault(x.item, []).append((x.ts, x.label, x.row))
        numeric = {k for xs in seen.values() for _, _, row in xs for k, v in row.items()
                   if isinstance(v, int | float) and not isinstance(v, bool)} - set(skip)  # fmt: skip
        self.times: dict[str, list[int]] = {}
        self.positives: dict[str, np.ndarray] = {}
        self.sums: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {}
        for item, xs in seen.items():
            xs.sort(key=lambda x: x[0])
            self.times[item] = [t for t, _, _ in xs]
            self.positives[item] = np.cumsum([0.0] + [lab for _, lab, _ in xs])
            self.sums[item] = {  # a column's sum and how many rows have it
                k: (np.cumsum([0.0] + [float(row.get(k, 0.0)) for _, _, row in xs]),
                    np.cumsum([0] + [k in row for _, _, row in xs]))
                for k in sorted(numeric)
            }  # fmt: skip

    def before(self, item: str, cutoff: int) -> dict:
        n = bisect_left(self.times.get(item, []), cutoff)
        rate = float(self.positives[item][n] / n) if n else None
        sums = self.sums[item].items() if n else ()
        mean = {k: float(total[n] / have[n]) for k, (total, have) in sums if have[n]}
        return {"count": n, "positive_rate": rate, "mean": mean}


class Renderer:
    """Query and item text of the configured tables. An item's text is rendered once per
    distinct context (its attributes, and its train-split stats before the query's cutoff),
    or once per query when the item template reads the member or their ``past`` (a hint such
    as the member's like rate in the candidate's genres)."""

    def __init__(self, cfg: RenderConfig, tables: Tables, tpl: Templating, stats: ItemStats):
        self.cfg, self.t, self.tpl, self.stats = cfg, tables, tpl, stats
        self._items: dict[tuple, str] = {}
        self.per_query = bool({"member", "past"} & tpl.names["item"])
        self._reads_past = "past" in tpl.names["query"] | tpl.names["item"]
        self._member: tuple[str, dict] | None = None  # (query_id, its member context)

    def item_context(self, item: str, cutoff: int) -> dict:
        attrs = self.t.items.values.get(item, {}) if self.t.items else {}
        return {"item": {**attrs, "id": item, "stats": self.stats.before(item, cutoff)}}

    def member_context(self, q: Query) -> dict:
        """``member`` and, for templates that read it, ``past``: built once per query."""
        if self._member is not None and self._member[0] == q.query_id:
            return self._member[1]
        members = self.t.members
        attrs = members.values.get(q.member, {}) if members else {}
        context: dict = {"member": {**attrs, "id": q.member}}
        if self._reads_past:  # built only for templates that read it
            items = self.t.items.values if self.t.items else {}
            context["past"] = [
                {**x.row, "item": {**items.get(x.item, {}), "id": x.item}, "label": x.label}
                for x in q.past
            ]
        self._member = (q.query_id, context)
        return context

    def item(self, item: str, cutoff: int, q: Query) -> str:
        context = self.item_context(item, cutoff)
        items = self.t.items

        def where() -> str:
            return (
                f"item {item!r}"
                + (f", {items.where(item)}" if items else "")
                + (f", query {q.query_id}" if self.per_query else "")
            )

        if self.per_query:
            return self.tpl.render("item", {**context, **self.member_context(q)}, where)
        key = (item, context["item"]["stats"]["count"])
        if key not in self._items:
            self._items[key] = self.tpl.render("item", context, where)
        return self._items[key]

    def query(self, q: Query) -> str:
        history = [
            {
                **x.row,
                "item": self.item_context(x.item, q.cutoff)["item"],
                "text": self.item(x.item, q.cutoff, q),
                "label": x.label,
            }  # fmt: skip
            for x in q.history
        ]
        members = self.t.members
        context = {**self.member_context(q), "history": history, "cutoff": q.cutoff}

        def where() -> str:
            return f"query {q.query_id}" + (f", member at {members.where(q.member)}" if members
                                            else "")  # fmt: skip

        return self.tpl.render("query", context, where)


def query_rows(q: Query, r: Renderer, member_column: str) -> list[dict]:
    """Contract rows of one query, with the member key (under the interactions' column name)
    and the cutoff as extra columns a non-LLM baseline joins on."""
    text = r.query(q)
    return [
        {
            "query_id": q.query_id,
            "query": text,
            "item": r.item(x.item, q.cutoff, q),
            "label": x.label,
            "item_id": x.item,
            "ts": x.ts,
            member_column: q.member,
            "cutoff": q.cutoff,
        }
        for x in q.items
    ]


# ---- the folder --------------------------------------------------------------------------------
def render_folder(
    cfg: RenderConfig,
    out_dir: str | Path,
    task: RankingTask | None = None,
    tables: Tables | None = None,
    progress: bool = False,
    finish_meta: Callable[[dict], dict] | None = None,
) -> dict:
    """Writes ``{split}.jsonl``, ``tokenizer/`` (trained on train, the task's label words as
    single tokens) and ``meta.json`` as the folder ``out_dir``, checked against the contract,
    and returns the meta. The folder is built aside and swapped in whole: one already there is
    replaced (nothing of it stays), and a failed render leaves it as it was. ``tables``:
    already read (a builder that makes its tables in memory); default: read from the config's
    paths. ``finish_meta``: a builder's own meta, from render's."""
    from tqdm import tqdm

    from compression.data.tokenizer import train_folder_tokenizer
    from ranking.atomic import atomic_dir
    from ranking.data_audit import check_folder

    t0 = time.time()
    task = task or RankingTask()
    tables = tables or read_tables(cfg)
    c = cfg.interactions
    tpl = Templating(cfg.templates, None if label_is_column(c, tables.interactions) else c.label)
    per_member, counts = interactions(cfg, tables, tpl)
    queries, cutoffs = build_queries(per_member, cfg)
    for split in ("train", "validation", "test"):
        if not queries[split]:
            raise DataError(f"the {split} split is empty: {_empty_hint(cfg, split)}")
    renderer = Renderer(cfg, tables, tpl, ItemStats(queries["train"], skip=(c.time,)))
    splits = {}
    total = sum(len(qs) for qs in queries.values())
    with (
        atomic_dir(out_dir) as out,
        tqdm(total=total, unit="query", desc="rendering", disable=not progress) as bar,
    ):
        for split, qs in queries.items():
            rows = []
            for q in qs:
                rows.extend(query_rows(q, renderer, c.member))
                bar.update(1)
            with (out / f"{split}.jsonl").open("w", encoding="utf-8") as f:
                for row in rows:
                    f.write(json.dumps(row, ensure_ascii=False) + "\n")
            splits[split] = {
                "rows": len(rows),
                "queries": len(qs),
                "members": len({q.member for q in qs}),
                "positive_rate": round(float(np.mean([r["label"] for r in rows])), 4)
                if rows
                else None,
            }
        train_folder_tokenizer(out, cfg.vocab_size, task)  # checks the folder first
        summary = check_folder(out)
        sources = {"interactions": tables.interactions, "members": tables.members,
                   "items": tables.items}  # fmt: skip
        meta = {
            "generator": GENERATOR,
            "config": asdict(cfg),
            "sources": {name: str(getattr(t, "table", t).path) for name, t in sources.items() if t},
            "cutoffs": cutoffs,
            "label": c.label,
            "splits": splits,
            **counts,
            "shared_item_text": {
                k: v.get("shared_item_text") for k, v in summary["splits"].items()
            },
            "extra_columns": {
                c.member: "the member key (interactions)",
                "cutoff": "the query's cutoff (unix s)",
            },
            "task": asdict(task),
            "tokenizer": {"vocab_size": cfg.vocab_size, "trained_on": "train"},
            "build_seconds": round(time.time() - t0, 1),
        }
        if finish_meta is not None:
            meta = finish_meta(meta)
        (out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def _empty_hint(cfg: RenderConfig, split: str) -> str:
    s, need = cfg.split, cfg.min_history
    if s.by == "leave_last":
        more = {"test": 0, "validation": s.n, "train": 2 * s.n}[split]
        return (f"no member has more than min_history={need} + {more} interactions (each "
                f"member's last {s.n} go to test, the {s.n} before to validation)")  # fmt: skip
    return (f"no interaction in its time window has min_history={need} earlier ones of its "
            "member")  # fmt: skip
