"""``python -m server.batch --model DIR (--input FILE | --data DIR --split NAME) --output DIR``

Scores every (query, item) pair of a JSONL / Parquet file in the data contract's shape with the
server's engine, template, limits and calibrator, into Parquet parts under ``--output``:
the input's columns except the texts, ``row`` (the pair's 0-based position in the input),
``score`` (calibrated where the checkpoint has a calibrator), ``score_raw`` (with a calibrator)
and ``error`` (why a row was not scored: over a length limit). Resumable: rerun the same
command after a crash and it scores only the missing parts. ``--shard I/N`` scores the I-th of
N disjoint sets of queries into ``--output/shard-I-of-N``; ``python -m server.batch check
--output DIR (--input FILE | --data DIR --split NAME)`` then checks that the shards cover every
input pair exactly once. Engine and limits: the server's flags (``--engine``, ``--dtype``,
``--max-batch-tokens``, ...; ``SLIMRANK_*`` environment variables too).
"""

from __future__ import annotations

from ranking.allocator import preload

if __name__ == "__main__":  # not when imported (tests import main)
    preload()  # first: this process may run again on tcmalloc, before torch is imported

import argparse
import asyncio
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np

from server.cli import add_settings_flags, settings_from

# the settings that decide how a checkpoint is scored (the rest are the HTTP server's)
SCORING_SETTINGS = (
    "model", "engine", "dtype", "torch_activation_quant", "torch_kernel", "torch_fp8",
    "max_query_tokens", "max_item_tokens", "max_batch_tokens", "vllm_kv_cache_gb",
    "vllm_block_size", "vllm_scoring", "vllm_max_model_len", "vllm_gpu_memory_utilization",
    "verify_checkpoint",
)  # fmt: skip
TEXT_COLUMNS = ("query", "item", "instruction")  # not copied to the output


def parse_shard(text: str) -> tuple[int, int]:
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shard must look like I/N, got {text!r}") from None
    if n < 1 or not 0 <= i < n:
        raise argparse.ArgumentTypeError(f"--shard {text}: need 0 <= I < N")
    return i, n


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m server.batch",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("command", nargs="?", choices=["score", "check"], default="score")
    src = p.add_argument_group("input (one of)")
    src.add_argument("--input", help="a JSONL or Parquet file of pairs")
    src.add_argument("--data", help="a data folder (with --split)")
    src.add_argument("--split", default="test", help="the data folder's split [test]")
    p.add_argument(
        "--output",
        required=True,
        help="folder of Parquet parts and the manifest (vLLM batch format: the results file)",
    )
    p.add_argument(
        "--format",
        choices=["auto", "pairs", "openai"],
        default="auto",
        help="input format: pairs in the data contract's shape, or vLLM's / OpenAI's batch "
        "JSONL ({custom_id, method, url, body} per line); auto: from the first line [auto]",
    )
    p.add_argument("--shard", type=parse_shard, default=(0, 1), help="I/N: the I-th of N [0/1]")
    p.add_argument("--rows-per-part", type=int, default=50_000, help="pairs per part [50000]")
    p.add_argument("--restart", action="store_true", help="discard another run's output there")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--json", help="also write the summary here (stdout may hold engine logs)")
    add_settings_flags(p, SCORING_SETTINGS)
    return p


def identity(settings, scorer_spec, path: Path, shard, rows_per_part: int) -> dict:
    """What makes a run's output: a rerun differing in any of it is refused (or restarts)."""
    from ranking.manifest import file_sha256, weight_hashes
    from ranking.score_calibration import CALIBRATOR_FILE
    from ranking.task import TASK_FILE
    from server.batch.source import content_hash

    model = Path(scorer_spec.path)
    cal = model / CALIBRATOR_FILE
    return {
        "model": {
            "weights": weight_hashes(model),
            "task": file_sha256(model / TASK_FILE),
            "calibrator": file_sha256(cal) if cal.is_file() else None,
        },
        "input": content_hash(path),
        "shard": list(shard),
        "rows_per_part": rows_per_part,
        "engine": {
            "engine": scorer_spec.engine,
            **{
                k: getattr(settings, k)
                for k in SCORING_SETTINGS
                if k not in ("model", "verify_checkpoint")
            },
        },
    }


def _table(scored: list, calibrated: bool):
    """One part's rows as a pyarrow table: passthrough columns, row, score(s), error."""
    import pyarrow as pa

    rows = [r for s in scored for r in s.group.rows]
    columns: dict[str, list] = {}
    for name in dict.fromkeys(k for r in rows for k in r):
        if name not in TEXT_COLUMNS:
            columns[name] = [r.get(name) for r in rows]
    columns["row"] = [p for s in scored for p in s.group.positions]
    score = np.concatenate([s.score for s in scored]) if scored else np.zeros(0)
    raw = np.concatenate([s.raw for s in scored]) if scored else np.zeros(0)
    arrays = {k: pa.array(v) for k, v in columns.items()}
    arrays["row"] = pa.array(columns["row"], type=pa.int64())
    arrays["score"] = pa.array(score, mask=np.isnan(score), type=pa.float64())
    if calibrated:
        arrays["score_raw"] = pa.array(raw, mask=np.isnan(raw), type=pa.float64())
    arrays["error"] = pa.array([e for s in scored for e in s.errors], type=pa.string())
    return pa.table(arrays)


def peak_rss_mb(engine_mb: float = 0.0) -> float:
    """Peak resident memory of this process (KiB on Linux) plus ``engine_mb``, what the
    engine's own processes (vLLM's engine core) held, measured by ``engine_rss_mb`` while
    they ran: a finished child's peak is counted only once it is reaped, which vLLM's
    shutdown does not wait for."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 + engine_mb


def engine_rss_mb() -> float:
    """Resident memory of this process's live child processes, now."""
    import psutil

    total = 0
    for child in psutil.Process().children(recursive=True):
        try:
            total += child.memory_info().rss
        except psutil.Error:  # exited meanwhile
            pass
    return total / 2**20


async def run_openai(args: argparse.Namespace, path: Path) -> dict:
    """vLLM's batch format through the server's own app, in this process."""
    from tqdm import tqdm

    from server.batch import source
    from server.batch.openai_batch import run_openai_batch

    settings = settings_from(args, SCORING_SETTINGS).model_copy(
        update={
            "api_keys": [],
            "api_key_file": None,
            "admin_api_key": None,
            # a file, not live traffic: nothing is refused for load or timed out
            "max_expected_latency_ms": 1e12,
            "request_timeout_s": 1e9,
            "max_queue_items": 10**9,
        }  # fmt: skip
    )
    t0 = time.perf_counter()
    with tqdm(total=source.count_rows(path), unit="line", disable=args.no_progress) as bar:
        counts = await run_openai_batch(settings, path, Path(args.output), bar)
    return {
        "output": args.output,
        **counts,
        "seconds": round(time.perf_counter() - t0, 1),
        "peak_rss_mb": round(peak_rss_mb(), 1),
    }


async def run(args: argparse.Namespace) -> dict:
    from tqdm import tqdm

    from ranking.manifest import ManifestMissing, verify_manifest
    from server.batch import source
    from server.batch.parts import Output, shard_folder
    from server.batch.scoring import BatchScorer

    settings = settings_from(args, SCORING_SETTINGS)
    path = source.resolve(args.input, args.data, args.split)
    from server.batch.openai_batch import is_openai_batch

    if args.format == "openai" or (args.format == "auto" and is_openai_batch(path)):
        return await run_openai(args, path)
    if settings.verify_checkpoint:
        try:
            verify_manifest(settings.model)
        except ManifestMissing as exc:
            print(f"warning: checkpoint not verified: {exc}", file=sys.stderr)
    scorer = BatchScorer(settings)
    folder = shard_folder(Path(args.output), args.shard)
    out = Output(
        folder, identity(settings, scorer.spec, path, args.shard, args.rows_per_part), args.restart
    )
    total = source.count_rows(path)
    expected = total if args.shard[1] == 1 else total // args.shard[1]
    t0 = time.perf_counter()
    await scorer.start()
    t_load = time.perf_counter() - t0
    calibrated = scorer.calibrator is not None
    bar = tqdm(total=expected, unit="pair", desc=f"scoring {path.name}", disable=args.no_progress,
               smoothing=0.1)  # fmt: skip
    k, buffer, in_buffer, n_rows, scored_rows, skipped = 0, [], 0, 0, 0, 0

    async def flush(groups: list, rows: int) -> None:
        nonlocal scored_rows, skipped
        if out.done(k):
            skipped += rows
        else:
            scored = await scorer.score(groups)
            bad = sum(e is not None for s in scored for e in s.errors)
            out.write(k, _table(scored, calibrated), bad)
            scored_rows += rows
        bar.update(rows)

    try:
        for g in source.groups(path, args.shard):
            buffer.append(g)
            in_buffer += len(g.rows)
            n_rows += len(g.rows)
            if in_buffer >= args.rows_per_part:
                await flush(buffer, in_buffer)
                buffer, in_buffer, k = [], 0, k + 1
        if buffer or k == 0:
            await flush(buffer, in_buffer)
            k += 1
        scoring_s = time.perf_counter() - t0 - t_load  # engine start and stop excluded
        engine_mb = engine_rss_mb()
    finally:
        bar.close()
        await scorer.stop()
    seconds = time.perf_counter() - t0
    errors = sum(out.body["parts"][str(i)]["errors"] for i in range(k))  # resumed parts too
    totals = {
        "rows": n_rows,
        "parts": k,
        "errors": errors,
        "scored_this_run": scored_rows,
        "resumed_rows": skipped,
        "seconds": round(seconds, 1),
        "load_seconds": round(t_load, 1),
        "scoring_seconds": round(scoring_s, 1),
        "pairs_per_s": round(scored_rows / scoring_s, 1) if scored_rows else None,
        "peak_rss_mb": round(peak_rss_mb(engine_mb), 1),
        "engine_process_mb": round(engine_mb, 1),
        "engine": scorer.spec.engine,
        "kernel": scorer.model.kernel if scorer.model else "",
        "calibrator": scorer.calibrator.method if calibrated else None,
    }
    out.finish(k, totals)
    return {"output": str(folder), **totals}


def check(args: argparse.Namespace) -> dict:
    from server.batch import source
    from server.batch.parts import check_union

    path = source.resolve(args.input, args.data, args.split)
    return check_union(Path(args.output), source.count_rows(path))


def main(argv: list[str] | None = None) -> int:
    from pydantic import ValidationError

    from ranking.datafolder import DataError
    from ranking.errors import CheckpointError
    from server.batch.parts import BatchError
    from server.engines import EngineUnavailable

    args = _parser().parse_args(argv)
    if args.rows_per_part < 1:
        print("error: --rows-per-part must be >= 1", file=sys.stderr)
        return 2
    try:
        result = check(args) if args.command == "check" else asyncio.run(run(args))
    except (DataError, BatchError, CheckpointError, EngineUnavailable, ValidationError,
            OSError, RuntimeError) as exc:  # fmt: skip
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2))
    if args.json:
        from ranking.atomic import atomic_write_text

        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(args.json, json.dumps(result, indent=2) + "\n")
    if args.command == "score" and "parts" in result:
        print(
            f"[batch] {result['rows']:,} pairs in {result['parts']} parts, {result['errors']} "
            f"with an error; {result['pairs_per_s'] or 0:,.0f} pairs/s this run; peak memory "
            f"{result['peak_rss_mb']:,.0f} MB",
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
