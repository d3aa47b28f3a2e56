"""Batch scoring's memory does not grow with the file: peak resident memory of ``python -m
server.batch`` on 10k, 100k and 1M pairs of the same model.

The files are a data split's rows repeated under new query ids (``<copy>-<query_id>``), written
as a stream; each size is scored in its own process, and the peak resident memory (ru_maxrss)
and pairs/s it reports are tabled with the machine's CPU flags, and written as JSON.

    .venv/bin/python benchmarks/batch_memory.py --model artifacts/demo/compressed/int8 \\
        --json artifacts/bench/batch-memory.json
"""

from __future__ import annotations

from ranking.allocator import preload

if __name__ == "__main__":  # not when imported (tests import main)
    preload()  # measured on the allocator the server runs on, before torch is imported

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from loadtest.stats import write_json  # noqa: E402
from ranking.datafolder import read_split  # noqa: E402
from ranking.precision import machine  # noqa: E402


def write_pairs(rows: list[dict], n: int, path: Path) -> Path:
    """``n`` pairs: ``rows`` cycled, each copy's queries under new ids (groups stay whole)."""
    with path.open("w") as f:
        written, copy = 0, 0
        while written < n:
            for r in rows:
                if written == n:
                    break
                f.write(json.dumps({**r, "query_id": f"{copy}-{r['query_id']}"}) + "\n")
                written += 1
            copy += 1
    return path


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--model", default="artifacts/demo/compressed/int8")
    ap.add_argument("--data", default="artifacts/demo/data")
    ap.add_argument("--split", default="test")
    ap.add_argument("--sizes", default="10000,100000,1000000")
    ap.add_argument("--json", help="write the result here")
    args = ap.parse_args()
    rows = read_split(args.data, args.split)
    result = {"machine": machine(), "model": args.model, "rows": []}
    with tempfile.TemporaryDirectory() as tmp:
        for n in (int(x) for x in args.sizes.split(",")):
            pairs = write_pairs(rows, n, Path(tmp) / f"pairs-{n}.jsonl")
            print(f"[bench] {n:,} pairs ({pairs.stat().st_size / 1e6:.0f} MB of JSONL)", flush=True)
            r = subprocess.run(
                [sys.executable, "-m", "server.batch", "--model", args.model, "--input",
                 str(pairs), "--output", str(Path(tmp) / f"out-{n}")],
                cwd=REPO, stdout=subprocess.PIPE, text=True, timeout=7200,
            )  # fmt: skip
            if r.returncode != 0:
                raise SystemExit(f"batch run of {n} pairs failed (exit {r.returncode})")
            totals = json.loads(r.stdout)
            result["rows"].append({"pairs": n, **{k: totals[k] for k in (
                "parts", "seconds", "pairs_per_s", "peak_rss_mb", "engine", "kernel")}})  # fmt: skip
            pairs.unlink()
    m = result["machine"]
    print(f"machine: {m['cpu']}, {m['cores']} cores, flags {' '.join(m['flags']) or '-'}")
    print(f"{'pairs':>10}{'parts':>7}{'seconds':>9}{'pairs/s':>9}{'peak MB':>9}  kernel")
    for x in result["rows"]:
        print(f"{x['pairs']:>10,}{x['parts']:>7}{x['seconds']:>9.0f}{x['pairs_per_s']:>9.0f}"
              f"{x['peak_rss_mb']:>9.0f}  {x['engine']} {x['kernel']}")  # fmt: skip
    if args.json:
        print(f"wrote {write_json(result, args.json)}")


if __name__ == "__main__":
    main()
