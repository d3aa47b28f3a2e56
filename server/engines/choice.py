"""``--engine auto``: the engine that served this checkpoint's format fastest on this kind of
machine, from a table that ``loadtest compare --engine-table`` measures and writes.

The table (``engine_table.json`` beside this module, committed) holds one row per (machine
class, checkpoint format): items/s of each engine of our server on the standard workload,
concurrency 1, and the run that measured it. Machine classes differ by several times in what
each engine's kernels do (an AVX2-only CPU has no bf16 or VNNI kernels; AMX has both), so a row
applies only to its own class. Where the table has no row for this class and format, the torch
engine serves (it runs every format on every device) and the log says that nothing was
measured.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from ranking.atomic import atomic_write_text
from ranking.checkpoint import inspect_checkpoint
from ranking.errors import CheckpointError
from ranking.precision import machine
from ranking.support import Machine, unsupported_reason

TABLE = Path(__file__).with_name("engine_table.json")
DEFAULT = "torch"


@dataclass(frozen=True)
class EngineChoice:
    engine: str
    why: str


def machine_class() -> str:
    """ "cuda", or the CPU's class: "cpu-amx", "cpu-avx512", "cpu-avx2", "cpu-other"."""
    here = Machine.here()
    if here.cuda:
        return "cuda"
    if "amx_tile" in machine()["flags"]:
        return "cpu-amx"
    return f"cpu-{here.cpu_isa}"


def load_table(path: Path = TABLE) -> list[dict]:
    if not path.is_file():
        return []
    return json.loads(path.read_text())["rows"]


def choose_engine(model: str | Path, table: Path = TABLE) -> EngineChoice:
    """The fastest measured engine that can run ``model`` here, and why. An unreadable
    checkpoint gets the default engine, whose loader names what is wrong with it."""
    try:
        info = inspect_checkpoint(model)
    except CheckpointError as exc:
        return EngineChoice(DEFAULT, str(exc))
    here, cls = Machine.here(), machine_class()
    runnable = [
        e
        for e in ("torch", "vllm")
        if not unsupported_reason(e, info.format, info.architecture, here)
    ]
    rows = [
        r for r in load_table(table) if r["machine_class"] == cls and r["format"] == info.format
    ]
    if not rows:
        return EngineChoice(
            DEFAULT,
            f"no {info.format} measurement for {cls} machines in {table.name}: {DEFAULT} "
            "(runs every format on every device)",
        )
    # engines measured on every row, ranked by the geometric mean of their items/s
    engines = [e for e in runnable if all(e in r["items_per_s"] for r in rows)]
    if not engines:
        return EngineChoice(DEFAULT, f"no measured engine runs {info.format} here")
    score = {e: math.prod(r["items_per_s"][e] for r in rows) ** (1 / len(rows)) for e in engines}
    best = max(score, key=score.get)
    measured = "; ".join(
        f"{r['model']}: " + ", ".join(f"{e} {r['items_per_s'][e]:.0f}" for e in engines)
        for r in rows
    )
    return EngineChoice(
        best,
        f"fastest for {info.format} on {cls} machines (items/s at concurrency 1, {measured}; "
        f"{rows[0]['cpu']}, {rows[0]['measured']})",
    )


def rows_from_compare(result: dict) -> list[dict]:
    """Table rows from a ``loadtest compare`` result: one per model, its server engines'
    items/s."""
    rows: dict[str, dict] = {}
    for r in result["results"]:
        if not r["engine"].startswith("server-") or not r.get("items_per_s"):
            continue  # the peer, baselines, and rows that failed (INT4 with vLLM on AVX2)
        fmt = inspect_checkpoint(r["model"]).format
        row = rows.setdefault(
            r["model"],
            {
                "machine_class": result["machine_class"],
                "format": fmt,
                "model": Path(r["model"]).name,
                "cpu": result["machine"]["cpu"],
                "measured": result["date"],
                "items_per_s": {},
            },
        )
        row["items_per_s"][r["engine"].removeprefix("server-")] = round(r["items_per_s"], 1)
    return list(rows.values())


def update_table(new_rows: list[dict], path: Path = TABLE) -> None:
    """Adds the rows of a run; one replaces an older row of the same (machine class, format,
    model)."""
    keep = {(r["machine_class"], r["format"], r["model"]): r for r in load_table(path)}
    keep.update({(r["machine_class"], r["format"], r["model"]): r for r in new_rows})
    rows = sorted(keep.values(), key=lambda r: (r["machine_class"], r["format"], r["model"]))
    text = {"about": __doc__.split("\n\n")[0].replace("\n", " "), "rows": rows}
    atomic_write_text(path, json.dumps(text, indent=1) + "\n")
