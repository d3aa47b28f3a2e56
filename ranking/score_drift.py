"""Score drift: a checkpoint's reference histogram of scores and the population stability index
(PSI) of live scores against it.

A ranker's score distribution moves when its traffic moves (a new item pool, a new client, one
topic flooding in) or when the model served is not the one evaluated, and either can leave the
AUC untested for days. At compression time the report stores each checkpoint's histogram of its
(served, i.e. calibrated where it has a calibrator) scores on the test split, in fixed bins over
[0, 1] (``score_reference.json``, bound to the weights' sha256); the server keeps the live
histogram in the same bins and exports

    PSI = sum over bins of (live_i - ref_i) * ln(live_i / ref_i)

over a sliding window. The usual reading: under 0.1 stable, 0.1-0.25 a shift worth a look, over
0.25 a different population. Shares are floored at ``PSI_FLOOR`` so an empty bin counts as
rare, not impossible (a PSI is otherwise infinite).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ranking.atomic import atomic_write_text
from ranking.errors import CheckpointError
from ranking.manifest import weight_hashes

REFERENCE_FILE = "score_reference.json"
SCORE_BINS = 20  # equal width over [0, 1]: bin i holds [i/20, (i+1)/20), the last also 1.0
PSI_FLOOR = 1e-4  # a bin's share never counts below this
PSI_WARN, PSI_PAGE = 0.1, 0.25


def bin_edges(bins: int = SCORE_BINS) -> list[float]:
    """Upper edges of the bins (Prometheus ``le`` values), 1.0 last."""
    return [round((i + 1) / bins, 6) for i in range(bins)]


def histogram(scores: np.ndarray, bins: int = SCORE_BINS) -> np.ndarray:
    """Counts per equal-width bin over [0, 1] (int64); scores outside are clipped into the end
    bins, NaN are dropped."""
    s = np.asarray(scores, dtype=np.float64).ravel()
    s = s[~np.isnan(s)]
    idx = np.clip((s * bins).astype(np.int64), 0, bins - 1)
    return np.bincount(idx, minlength=bins)


def psi(reference: np.ndarray, live: np.ndarray, floor: float = PSI_FLOOR) -> float:
    """Population stability index of ``live`` counts against ``reference`` counts (same bins);
    NaN when either has no counts."""
    ref, cur = np.asarray(reference, np.float64), np.asarray(live, np.float64)
    if ref.shape != cur.shape:
        raise ValueError(f"reference has {ref.shape} bins, live {cur.shape}")
    if ref.sum() <= 0 or cur.sum() <= 0:
        return float("nan")
    p = np.maximum(ref / ref.sum(), floor)
    q = np.maximum(cur / cur.sum(), floor)
    return float(np.sum((q - p) * np.log(q / p)))


def save_reference(checkpoint: str | Path, scores: np.ndarray, split: str) -> Path:
    """Writes the checkpoint's reference histogram of ``scores`` (on ``split``), bound to its
    weights."""
    counts = histogram(scores)
    body = {
        "version": 1,
        "bins": SCORE_BINS,
        "counts": counts.tolist(),
        "split": split,
        "pairs": int(counts.sum()),
        "weights": weight_hashes(checkpoint),
    }
    return atomic_write_text(Path(checkpoint) / REFERENCE_FILE, json.dumps(body, indent=2) + "\n")


def load_reference(checkpoint: str | Path) -> np.ndarray | None:
    """The checkpoint's reference counts; None where it has none. A reference of other weights
    (the checkpoint rebuilt, the file copied) is refused with a ``CheckpointError``: its PSI
    would measure the model change, not the traffic."""
    root = Path(checkpoint)
    path = root / REFERENCE_FILE
    if not path.is_file():
        return None
    try:
        body = json.loads(path.read_text())
        counts = np.asarray(body["counts"], dtype=np.int64)
        if body["bins"] != SCORE_BINS or counts.shape != (SCORE_BINS,) or (counts < 0).any():
            raise ValueError(f"expected {SCORE_BINS} non-negative counts")
        recorded = body["weights"]
    except (ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{path} is corrupt: {exc}") from exc
    if recorded != weight_hashes(root):
        raise CheckpointError(
            f"{path} was computed for other weights: rerun the recipe (python -m compression "
            "run RECIPE: its report rebuilds the reference of every stage), or remove it"
        )
    return counts
