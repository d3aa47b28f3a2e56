"""A team's tables (Parquet, CSV or JSONL) read for ``data render``, every problem named by its
file, row and field, as ``ranking.datafolder`` names a data folder's.

Values keep the types the file gives them (CSV columns are typed by pyarrow's inference, so
``rating >= 4`` compares numbers); keys are compared as text, so ``42`` in one table matches
``"42"`` in another.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass
from pathlib import Path

from ranking.datafolder import DataError, iter_located

FORMATS = (".parquet", ".csv", ".jsonl")


@dataclass
class Table:
    """One table's rows in file order, each with its place for messages (1-based line for
    CSV and JSONL, 0-based row index for Parquet)."""

    path: Path
    rows: list[dict]
    positions: list[int]
    columns: list[str]

    def where(self, i: int) -> str:
        unit = "row" if self.path.suffix == ".parquet" else "line"
        return f"{self.path} {unit} {self.positions[i]}"

    def require(self, column: str, role: str) -> None:
        """Raises unless ``column`` exists; ``role`` says what it was asked for."""
        if column not in self.columns:
            raise DataError(
                f"{self.path}: no column {column!r} ({role}); its columns: "
                f"{', '.join(self.columns) or 'none'}"
            )


def read_table(path: str | Path, key_columns: tuple[str, ...] = ()) -> Table:
    """The whole table (attribute and interaction tables are read into memory: a query needs
    every earlier interaction of its member). A CSV's ``key_columns`` are read as text, as
    written: type inference would make ``00123`` and ``123`` one key, and round 20-digit ids
    to one float. An empty CSV cell is a missing value, as in the other formats."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"no table at {path}")
    if path.suffix not in FORMATS:
        raise DataError(f"{path}: a table is .parquet, .csv or .jsonl, got {path.suffix or 'none'}")
    if path.suffix == ".csv":
        import pyarrow as pa
        import pyarrow.csv as pcsv

        types = {c: pa.string() for c in key_columns}  # a column not in the file is ignored
        try:
            t = pcsv.read_csv(
                path,
                convert_options=pcsv.ConvertOptions(column_types=types, strings_can_be_null=True),
            )
        except pa.ArrowException as exc:
            raise DataError(f"{path}: unreadable CSV: {exc}") from None
        rows = t.to_pylist()
        return Table(path, rows, list(range(2, len(rows) + 2)), t.column_names)
    rows, positions, columns = [], [], {}
    for pos, batch in iter_located(path, 65536):
        rows.extend(batch)
        positions.extend(pos)
        for r in batch:
            columns.update(dict.fromkeys(r))
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        columns = dict.fromkeys(pq.ParquetFile(path).schema_arrow.names)
    return Table(path, rows, positions, list(columns))


def missing(value: object) -> bool:
    """A null (None) or a float NaN (how pandas writes a gap)."""
    return value is None or (isinstance(value, float) and math.isnan(value))


def key_text(value: object) -> str:
    """A key as text: ``42``, ``42.0`` (a CSV column with a gap reads as floats) and ``"42"``
    are one key."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def unix_seconds(value: object, table: Table, i: int, column: str) -> int:
    """A time value as whole seconds since the epoch: a number is taken as seconds; a date or
    datetime (a Parquet timestamp, or ISO 8601 text such as ``2024-03-01`` or
    ``2024-03-01T12:30:00+01:00``) is converted, UTC where it names no zone."""
    if isinstance(value, bool) or value is None:
        pass
    elif isinstance(value, int | float):
        if math.isfinite(value):
            return _seconds(int(value), value, table, i, column)
    elif isinstance(value, dt.datetime | dt.date | str):
        when = value
        if isinstance(value, str):  # a number as text (a CSV column with one bad value) or ISO
            try:
                number = float(value)
            except ValueError:
                number = None
            if number is not None and math.isfinite(number):
                return _seconds(int(number), value, table, i, column)
            try:
                when = dt.datetime.fromisoformat(value.strip())
            except ValueError:
                when = None
        if isinstance(when, dt.date) and not isinstance(when, dt.datetime):
            when = dt.datetime(when.year, when.month, when.day)
        if isinstance(when, dt.datetime):
            if when.tzinfo is None:
                when = when.replace(tzinfo=dt.UTC)
            return int(when.timestamp())
    raise DataError(
        f"{table.where(i)}: field {column!r}: {value!r} is not a time (a number of seconds, or a "
        "date / datetime such as 2024-03-01 or 2024-03-01T12:30:00)"
    )


MAX_SECONDS = 10**11  # the year 5138: a larger number is milliseconds or microseconds


def _seconds(seconds: int, value: object, table: Table, i: int, column: str) -> int:
    if abs(seconds) >= MAX_SECONDS:
        raise DataError(f"{table.where(i)}: field {column!r}: {value!r} seconds is after the "
                        "year 5000: milliseconds? (times are seconds since the epoch)")  # fmt: skip
    return seconds
