"""Serving check: every checkpoint a recipe wrote loads in the real server and scores alike.

For each checkpoint, ``python -m server`` is started with the torch engine and (where vLLM can
run the format on this machine: not FP8 on CPU) with the vllm engine; the same requests from the
held-out split go through ``/v1/rank`` over HTTP; the scores must agree with the torch engine
on the bf16 source within ``tolerance`` (bf16 kernels and INT8 activations differ slightly).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import numpy as np

from compression.layout import STAGE_FILE
from ranking.checkpoint import CheckpointInfo, inspect_checkpoint
from ranking.dataset import requests_from_split
from server.process import ServerProcess

TOLERANCE = 0.03  # the documented torch/vLLM score tolerance (probabilities)


def rank(url: str, requests: list[tuple[str, list[str]]]) -> tuple[np.ndarray, np.ndarray]:
    """(served scores, raw scores) of every item, in request order."""
    out, raw = [], []
    for query, items in requests:
        r = httpx.post(url + "/v1/rank", json={"query": query, "items": items}, timeout=120)
        r.raise_for_status()
        s, s_raw = np.zeros(len(items)), np.zeros(len(items))
        for x in r.json()["results"]:
            s[x["index"]], s_raw[x["index"]] = x["score"], x["score_raw"]
        out.append(s)
        raw.append(s_raw)
    return np.concatenate(out), np.concatenate(raw)


def vllm_skip_reason(info: CheckpointInfo) -> str | None:
    from server.engines import EngineUnavailable, check_supported

    try:
        check_supported(info.path, "vllm")
    except EngineUnavailable as exc:
        return str(exc).split(" (")[0]
    return None


def verify_serving(
    checkpoints: list[Path],
    data_dir: Path,
    log_dir: Path,
    n_queries: int = 4,
    tolerance: float = TOLERANCE,
    engines: tuple[str, ...] = ("torch", "vllm"),
) -> list[dict]:
    """One row per (checkpoint, engine): max |score - reference|, where the reference is the
    torch engine on that checkpoint, and max |score - calibrator(score_raw)| (the checkpoint's
    calibrator applied as served; the identity without one); rows say why an engine was
    skipped."""
    from ranking.score_calibration import load_calibrator

    requests = requests_from_split(data_dir, "test", n_queries)
    log_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for ckpt in checkpoints:
        info = inspect_checkpoint(ckpt)
        cal = load_calibrator(ckpt)
        reference = None
        for engine in engines:
            row = {"checkpoint": ckpt.name, "format": info.format, "engine": engine}
            reason = vllm_skip_reason(info) if engine == "vllm" else None
            if reason:
                rows.append({**row, "status": "skipped", "reason": reason})
                continue
            t0 = time.time()
            with ServerProcess(ckpt, engine, log_dir) as srv:
                scores, raw = rank(srv.url, requests)
            if reference is None:
                reference = scores
            diff = float(np.abs(scores - reference).max())
            expected = cal.apply(raw) if cal is not None else raw
            cal_diff = float(np.abs(scores - expected).max())
            ok = diff <= tolerance and cal_diff <= 1e-6
            rows.append(
                {
                    **row,
                    "status": "ok" if ok else "MISMATCH",
                    "max_abs_diff": diff,
                    "calibrator": cal.method if cal is not None else None,
                    "calibration_max_abs_diff": cal_diff,
                    "items": int(len(scores)),
                    "seconds": round(time.time() - t0, 1),
                }
            )
            print(
                f"[verify] {ckpt.name:>22} {engine:>5}: max |diff| {diff:.4f} "
                f"{'ok' if ok else 'MISMATCH'}"
            )
    return rows


def verify_recipe_output(
    output: Path, data_dir: Path, n_queries: int = 4, ablations: bool = False
) -> dict:
    """Checks every finished main stage (and the ablations if asked) under ``output``, in the
    order they were written; writes serving_check.json."""
    stages = []
    for p in output.iterdir():
        info_path = p / STAGE_FILE
        if info_path.is_file():
            info = json.loads(info_path.read_text())
            if ablations or not info.get("ablation"):
                stages.append(p)
    stages.sort(key=lambda p: (p / STAGE_FILE).stat().st_mtime)
    rows = verify_serving(stages, data_dir, output / "logs", n_queries)
    result = {
        "tolerance": TOLERANCE,
        "rows": rows,
        "all_ok": all(r["status"] != "MISMATCH" for r in rows),
    }
    (output / "serving_check.json").write_text(json.dumps(result, indent=2) + "\n")
    return result
